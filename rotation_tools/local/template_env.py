"""A function's configuration as template.yaml declares it, for running the handler in-process.

``sam local invoke`` reads a function's Environment, Timeout and MemorySize from the template and resolves the
intrinsic functions it can (a parameter's Default, pseudo parameters); we do the same without Docker or the
SAM CLI. Values that only exist once the stack is deployed (a resource's ARN, an attribute) or that resolve to
``AWS::NoValue`` are dropped, and each drop comes with a note saying why, so nothing is silently different.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotation.exceptions import ConfigurationError, LocalToolError
from rotation_tools.local.lambda_context import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_SECONDS, PLACEHOLDER_ACCOUNT_ID

FUNCTION_TYPES = frozenset({"AWS::Serverless::Function", "AWS::Lambda::Function"})
#: Variables through which the user points boto3 at an endpoint (a moto server, a VPC endpoint). boto3 gives
#: an explicit ``endpoint_url`` precedence over them, so a template's SECRETS_MANAGER_ENDPOINT would win.
USER_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL")
_SUB_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


class Unresolvable(Exception):
    """An intrinsic function whose value only exists in a deployed stack."""


# --------------------------------------------------------------------------------------------- loading


class CloudFormationLoader:
    """Built lazily: PyYAML is a `local` extra, and the Lambda artifact must import without it."""

    _class: type | None = None

    @classmethod
    def get(cls) -> type:
        if cls._class is None:
            try:
                import yaml
            except ImportError as exc:
                raise LocalToolError(
                    "reading template.yaml needs PyYAML: pip install 'aurora-postgres-rotation[local]'"
                ) from exc

            class Loader(yaml.SafeLoader):
                """SafeLoader that reads CloudFormation short tags (``!Ref X``) as their long form (``Ref: X``)."""

            def construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
                if isinstance(node, yaml.ScalarNode):
                    value: Any = loader.construct_scalar(node)
                elif isinstance(node, yaml.SequenceNode):
                    value = loader.construct_sequence(node, deep=True)
                else:
                    value = loader.construct_mapping(node, deep=True)
                if suffix in ("Ref", "Condition"):
                    return {suffix: value}
                if suffix == "GetAtt" and isinstance(value, str):
                    value = value.split(".", 1)
                return {f"Fn::{suffix}": value}

            Loader.add_multi_constructor("!", construct_intrinsic)
            cls._class = Loader
        return cls._class


def load_template(path: str | Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template; a missing or malformed file is a ConfigurationError."""
    loader = CloudFormationLoader.get()
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read template {path}: {exc.strerror or exc}") from exc
    try:
        template = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"template {path} is not valid YAML: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise ConfigurationError(f"template {path} has no Resources section: is it a CloudFormation template?")
    return template


# --------------------------------------------------------------------------------------------- resolving


@dataclass(frozen=True, slots=True)
class PseudoParameters:
    """The values SAM CLI gives pseudo parameters when it runs a function locally."""

    region: str
    account_id: str = PLACEHOLDER_ACCOUNT_ID
    stack_name: str = "local"
    partition: str = "aws"

    def as_mapping(self) -> dict[str, str]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::StackName": self.stack_name,
            "AWS::Partition": self.partition,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:{self.partition}:cloudformation:{self.region}:{self.account_id}:stack/"
            f"{self.stack_name}/00000000-0000-0000-0000-000000000000",
        }


def _is_list_type(parameter_type: Any) -> bool:
    return isinstance(parameter_type, str) and (
        parameter_type == "CommaDelimitedList" or parameter_type.startswith("List<")
    )


class Resolver:
    """Evaluates the intrinsic functions whose value is known before deployment, with parameter Defaults."""

    def __init__(self, template: Mapping[str, Any], pseudo: PseudoParameters) -> None:
        self._parameters = template.get("Parameters") or {}
        self._conditions = template.get("Conditions") or {}
        self._mappings = template.get("Mappings") or {}
        self._resources = template.get("Resources") or {}
        self._pseudo = pseudo.as_mapping()

    def value(self, node: Any) -> Any:
        """A plain value, NO_VALUE, or Unresolvable raised with the reason."""
        if isinstance(node, dict) and len(node) == 1:
            (key, argument), = node.items()
            if key == "Ref":
                return self._ref(argument)
            if key == "Condition":
                return self.condition(argument)
            if key.startswith("Fn::"):
                return self._function(key, argument)
        if isinstance(node, dict):
            return {key: self.value(item) for key, item in node.items()}
        if isinstance(node, list):
            return [item for item in (self.value(each) for each in node) if item is not NO_VALUE]
        return node

    def text(self, node: Any) -> Any:
        """As :meth:`value`, rendered the way CloudFormation renders an environment variable: a string."""
        value = self.value(node)
        if value is NO_VALUE:
            return NO_VALUE
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str):
            return str(value)
        if value is None:
            raise Unresolvable("is null")
        raise Unresolvable(f"is a {type(value).__name__}, not a string")

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            raise Unresolvable(f"uses condition {name!r}, which the template does not define")
        return self._truth(self._conditions[name])

    def _truth(self, node: Any) -> bool:
        value = self.value(node)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise Unresolvable(f"has a condition that is not true or false: {value!r}")

    def _ref(self, name: Any) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self._pseudo:
            return self._pseudo[name]
        if name in self._parameters:
            parameter = self._parameters[name] or {}
            if "Default" not in parameter:
                raise Unresolvable(f"refers to parameter {name}, which has no Default")
            default = parameter["Default"]
            if _is_list_type(parameter.get("Type")) and isinstance(default, str):
                return default.split(",")  # Ref of a list parameter is a list, as in CloudFormation
            return default
        if name in self._resources:
            raise Unresolvable(f"refers to resource {name}, which exists only once the stack is deployed")
        raise Unresolvable(f"refers to {name!r}, which the template does not define")

    def _function(self, key: str, argument: Any) -> Any:
        name = key.removeprefix("Fn::")
        if name == "If":
            condition, when_true, when_false = argument
            return self.value(when_true if self.condition(condition) else when_false)
        if name == "Equals":
            left, right = (self.text(item) for item in argument)
            return left == right
        if name == "Not":
            return not self._truth(argument[0])
        if name == "And":
            return all(self._truth(item) for item in argument)
        if name == "Or":
            return any(self._truth(item) for item in argument)
        if name == "Sub":
            return self._sub(argument)
        if name == "Join":
            delimiter, items = argument
            return str(delimiter).join(self.text(item) for item in self.value(items))
        if name == "Select":
            index, items = argument
            return self.value(items)[int(self.value(index))]
        if name == "FindInMap":
            mapping, first, second = (self.text(item) for item in argument)
            try:
                return self._mappings[mapping][first][second]
            except (KeyError, TypeError):
                raise Unresolvable(f"looks up {mapping}/{first}/{second}, which the Mappings lack") from None
        if name == "GetAtt":
            target = ".".join(map(str, argument)) if isinstance(argument, list) else argument
            raise Unresolvable(f"reads {target}, an attribute that exists only once the stack is deployed")
        raise Unresolvable(f"uses Fn::{name}, which only CloudFormation can evaluate")

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            pattern, variables = argument[0], argument[1] if len(argument) > 1 else {}
        else:
            pattern, variables = argument, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"  # ${!Literal} is CloudFormation's escape for a literal ${Literal}
            if name in variables:
                return self.text(variables[name])
            if "." in name and name.split(".", 1)[0] in self._resources:
                raise Unresolvable(f"substitutes {name}, an attribute that exists only once the stack is deployed")
            return self.text({"Ref": name})

        return _SUB_PLACEHOLDER.sub(replace, str(pattern))


# --------------------------------------------------------------------------------------------- functions


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    logical_id: str
    handler: str
    function_name: str
    timeout_seconds: float
    memory_mb: int
    #: Globals' variables overlaid with the function's own, resolved to strings.
    environment: dict[str, str] = field(default_factory=dict)
    #: One line per variable that was dropped, and why.
    notes: tuple[str, ...] = ()


def _find_function(template: Mapping[str, Any], handler: str, globals_: Mapping[str, Any]) -> tuple[str, dict]:
    functions = {
        logical_id: resource.get("Properties") or {}
        for logical_id, resource in template["Resources"].items()
        if isinstance(resource, dict) and resource.get("Type") in FUNCTION_TYPES
    }
    matches = [logical_id for logical_id, props in functions.items()
               if props.get("Handler", globals_.get("Handler")) == handler]
    if len(matches) == 1:
        return matches[0], functions[matches[0]]
    if not matches:
        found = ", ".join(f"{logical_id} ({props.get('Handler', globals_.get('Handler'))})"
                          for logical_id, props in functions.items()) or "none"
        raise ConfigurationError(f"no function in the template has Handler {handler}; functions found: {found}")
    raise ConfigurationError(f"several functions have Handler {handler} ({', '.join(matches)}); "
                             "the local invoke cannot tell which one you mean")


def _number(resolver: Resolver, node: Any, default: float, what: str, logical_id: str) -> float:
    if node is None:
        return default
    try:
        return float(resolver.text(node))
    except (Unresolvable, ValueError, TypeError):
        raise ConfigurationError(f"{what} of {logical_id} is not a number the template resolves to") from None


def function_config(template: Mapping[str, Any], handler: str, region: str) -> FunctionConfig:
    """The configuration of the one function whose Handler is ``handler``, as it would run when deployed."""
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    logical_id, props = _find_function(template, handler, globals_)
    resolver = Resolver(template, PseudoParameters(region=region))

    declared: dict[str, Any] = {}
    for source in (globals_, props):
        variables = ((source.get("Environment") or {}).get("Variables")) or {}
        declared.update(variables)
    environment: dict[str, str] = {}
    notes: list[str] = []
    for name, node in declared.items():
        try:
            value = resolver.text(node)
        except Unresolvable as reason:
            notes.append(f"{name} not set from the template: its value {reason}")
            continue
        except (ValueError, TypeError, IndexError):
            notes.append(f"{name} not set from the template: its intrinsic function is malformed")
            continue
        if value is NO_VALUE:
            notes.append(f"{name} not set from the template: it resolves to AWS::NoValue with the parameter defaults")
            continue
        environment[name] = value

    try:
        function_name = resolver.text(props["FunctionName"]) if "FunctionName" in props else logical_id
    except Unresolvable:
        function_name = logical_id
    return FunctionConfig(
        logical_id=logical_id,
        handler=handler,
        function_name=function_name if isinstance(function_name, str) else logical_id,
        timeout_seconds=_number(resolver, props.get("Timeout", globals_.get("Timeout")),
                                DEFAULT_TIMEOUT_SECONDS, "Timeout", logical_id),
        memory_mb=int(_number(resolver, props.get("MemorySize", globals_.get("MemorySize")),
                              DEFAULT_MEMORY_MB, "MemorySize", logical_id)),
        environment=environment,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------- environment


@dataclass(frozen=True, slots=True)
class EnvironmentPlan:
    """What to set in the process environment, and what the user's environment keeps."""

    apply: dict[str, str]
    #: Template variables that the process environment already sets: the environment's value wins.
    kept: tuple[str, ...]
    notes: tuple[str, ...]


def plan_environment(config: FunctionConfig, current: Mapping[str, str]) -> EnvironmentPlan:
    """Overlay the function's environment on ``current`` without overriding anything the user set.

    The user's explicit environment wins over the template, for every variable: that is how one tries a
    different PASSWORD_LENGTH without editing the template, and it guarantees that AWS_* credentials,
    profiles and endpoint variables pointing boto3 at a local or VPC endpoint are never replaced.
    """
    apply: dict[str, str] = {}
    kept: list[str] = []
    notes = list(config.notes)
    user_endpoint = next((name for name in USER_ENDPOINT_VARIABLES if current.get(name)), None)
    for name, value in config.environment.items():
        if name in current:
            kept.append(name)
            continue
        if name == "SECRETS_MANAGER_ENDPOINT" and value and user_endpoint:
            notes.append(f"{name} not set: {user_endpoint} is set in your environment, and the template's "
                         "endpoint would take precedence over it")
            continue
        apply[name] = value
    return EnvironmentPlan(apply=apply, kept=tuple(kept), notes=tuple(notes))
