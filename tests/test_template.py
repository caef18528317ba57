"""template.yaml as CloudFormation would deploy it, for named sets of parameters.

The template is parsed with the repository's CloudFormation YAML loader and evaluated here by a small
evaluator (:class:`Stack`): parameters are checked against their constraints, conditions decided, ``Fn::If``
branches chosen, ``AWS::NoValue`` dropped, and the Rules' assertions evaluated. References to resources stay
as ``<Name>`` / ``<Name.Attribute>`` placeholders, since those only exist once a stack is deployed. The tests
then read what a deployment in a given network would get: who may reach the endpoints, which secrets and
keys each role may touch, the function names at the stack-name limit, and the timeout rule.
"""

from __future__ import annotations

import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rotation.config import (
    SECRETS_MANAGER_WORST_CASE_MS,
    STEP_ALLOWANCE_MS,
    Settings,
    check_time_budget,
    time_budget_ms,
)
from rotation.exceptions import ConfigurationError
from rotation_tools.local.template_env import load_template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = load_template(ROOT / "template.yaml")
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()

ACCOUNT = "123456789012"
REGION = "eu-west-1"
#: The documented limit for derived function names (docs/deploy.md): "<stack>-bootstrap" must fit in 64.
STACK_NAME_LIMIT = 54
LAMBDA_NAME_LIMIT = 64
MARK = "aurora-postgres-rotation:created-by"

IN_VPC = {"SubnetIds": "subnet-0a1b2c3d,subnet-4e5f6a7b", "SecurityGroupIds": "sg-0f00d,sg-0beef",
          "VpcId": "vpc-0123abcd"}
MASTER_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!cluster-0a1b2c-AbCdEf"
USER_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/11111111-2222-3333-4444-555555555555"
ADMIN_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/99999999-8888-7777-6666-555555555555"


class InvalidParameter(Exception):
    """CloudFormation would refuse the parameter value before creating anything."""


class Stack:
    """template.yaml evaluated for one set of parameters and a stack name."""

    def __init__(self, template: Mapping[str, Any], stack_name: str = "app", **parameters: str) -> None:
        self.template = template
        self.pseudo = {"AWS::StackName": stack_name, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                       "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
        declared = template["Parameters"]
        unknown = set(parameters) - set(declared)
        assert not unknown, f"the template has no parameters {unknown}"
        self.parameters = {name: self._parameter(name, spec, parameters.get(name, spec.get("Default")))
                           for name, spec in declared.items()}
        self._conditions: dict[str, bool] = {}

    # ----------------------------------------------------------------------------------- parameters

    @staticmethod
    def _parameter(name: str, spec: Mapping[str, Any], raw: Any) -> Any:
        assert raw is not None, f"parameter {name} has no Default and no value was given"
        text = str(raw)
        is_list = spec["Type"] == "CommaDelimitedList"
        for item in text.split(",") if is_list else [text]:
            if "AllowedValues" in spec and item not in [str(v) for v in spec["AllowedValues"]]:
                raise InvalidParameter(f"{name}={item!r} is not one of {spec['AllowedValues']}")
            if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], item):
                raise InvalidParameter(f"{name}={item!r} does not match {spec['AllowedPattern']}")
            if spec["Type"] == "Number" and not spec.get("MinValue", float("-inf")) <= float(item) \
                    <= spec.get("MaxValue", float("inf")):
                raise InvalidParameter(f"{name}={item} is out of range")
        return text.split(",") if is_list else text

    # ----------------------------------------------------------------------------------- evaluation

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.value(self.template["Conditions"][name]))
        return self._conditions[name]

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, argument), = node.items()
            if key == "Ref":
                return self._ref(argument)
            if key == "Condition":
                return self.condition(argument)
            if key.startswith("Fn::"):
                return self._function(key[4:], argument)
        resolved = {key: self.value(item) for key, item in node.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        assert name in self.template["Resources"], f"Ref to undefined {name}"
        return f"<{name}>"

    def _function(self, name: str, argument: Any) -> Any:
        if name == "If":
            condition, when_true, when_false = argument
            return self.value(when_true if self.condition(condition) else when_false)
        if name == "GetAtt":
            target = argument if isinstance(argument, str) else ".".join(argument)
            return f"<{target}>"
        if name == "Sub":
            pattern, variables = (argument, {}) if isinstance(argument, str) else argument
            values = {key: self.value(item) for key, item in variables.items()}
            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                return str(values[name] if name in values else self._ref(name))

            return re.sub(r"\$\{([^}!]+)\}", substitute, pattern)
        evaluated = self.value(argument)
        if name == "Join":
            return evaluated[0].join(evaluated[1])
        if name == "Split":
            return evaluated[1].split(evaluated[0])
        if name == "Select":
            return evaluated[1][int(evaluated[0])]
        if name == "Equals":
            return str(evaluated[0]) == str(evaluated[1])
        if name == "Not":
            return not evaluated[0]
        if name == "And":
            return all(evaluated)
        if name == "Or":
            return any(evaluated)
        if name == "Contains":
            return str(evaluated[1]) in [str(v) for v in evaluated[0]]
        if name == "EachMemberEquals":
            return all(str(member) == str(evaluated[1]) for member in evaluated[0])
        raise AssertionError(f"the test's evaluator does not know Fn::{name}")

    # ----------------------------------------------------------------------------------- reading

    def rule_violations(self) -> list[str]:
        """The AssertDescription of every failing assertion, as CloudFormation would report them."""
        failures = []
        for rule in self.template["Rules"].values():
            if "RuleCondition" in rule and not self.value(rule["RuleCondition"]):
                continue
            failures += [" ".join(a["AssertDescription"].split())
                         for a in rule["Assertions"] if not self.value(a["Assert"])]
        return failures

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return {name: {"Type": resource["Type"], "Properties": self.value(resource.get("Properties", {}))}
                for name, resource in self.template["Resources"].items()
                if "Condition" not in resource or self.condition(resource["Condition"])}

    def properties(self, logical_id: str) -> dict[str, Any]:
        return self.resources[logical_id]["Properties"]

    def statements(self, role: str) -> list[dict[str, Any]]:
        return [statement for policy in self.properties(role)["Policies"]
                for statement in policy["PolicyDocument"]["Statement"]]

    def statement(self, role: str, sid: str) -> dict[str, Any]:
        (found,) = [s for s in self.statements(role) if s.get("Sid") == sid]
        return found

    def granted(self, role: str, action: str) -> list[dict[str, Any]]:
        """The statements of ``role`` that allow ``action``."""
        return [s for s in self.statements(role) if action in as_list(s["Action"])]


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
ROLES = ("RotationFunctionRole", "BootstrapFunctionRole")
ENI_ACTIONS = sorted(["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
                      "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def deploy(stack_name: str = "app", **parameters: str) -> Stack:
    stack = Stack(TEMPLATE, stack_name, **parameters)
    assert stack.rule_violations() == [], "the scenario itself must be a valid deployment"
    return stack


def endpoint_ingress(stack: Stack) -> list[dict[str, Any]]:
    return stack.properties("InterfaceEndpointSecurityGroup")["SecurityGroupIngress"]


# --------------------------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("parameters", "cidrs", "groups"),
    [
        pytest.param({"VpcCidr": "10.20.0.0/16"}, {"10.20.0.0/16"}, {"sg-0f00d"},
                     id="the VPC's CIDR: every client that private DNS sends to the endpoint"),
        pytest.param({"EndpointClientCidrs": "10.20.1.0/24,10.20.2.0/24"}, {"10.20.1.0/24", "10.20.2.0/24"},
                     {"sg-0f00d"}, id="listed CIDRs instead of the whole VPC"),
        pytest.param({"EndpointClientSecurityGroupIds": "sg-0a11,sg-0b22,sg-0c33,sg-0d44"}, set(),
                     {"sg-0f00d", "sg-0a11", "sg-0b22", "sg-0c33", "sg-0d44"},
                     id="four application security groups, the most a deployment may list"),
        pytest.param({"VpcCidr": "10.20.0.0/16", "EndpointClientCidrs": "192.168.0.0/24",
                      "EndpointClientSecurityGroupIds": "sg-0a11"}, {"10.20.0.0/16", "192.168.0.0/24"},
                     {"sg-0f00d", "sg-0a11"}, id="all of them together"),
    ],
)
def test_the_interface_endpoint_admits_its_clients_not_only_the_function(parameters, cidrs, groups):
    stack = deploy(**IN_VPC, CreateSecretsManagerEndpoint="true", **parameters)

    ingress = endpoint_ingress(stack)

    assert {rule["CidrIp"] for rule in ingress if "CidrIp" in rule} == cidrs
    assert {rule["SourceSecurityGroupId"] for rule in ingress if "SourceSecurityGroupId" in rule} == groups
    assert all((rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443) for rule in ingress)
    # checkov's CKV_AWS_23 cannot see rules inside Fn::If (its suppression says so): check it here.
    assert all(rule.get("Description") for rule in ingress)
    egress = stack.properties("InterfaceEndpointSecurityGroup")["SecurityGroupEgress"]
    assert [rule["CidrIp"] for rule in egress] == ["255.255.255.255/32"], "an endpoint opens no connection"
    endpoint = stack.properties("SecretsManagerVpcEndpoint")
    assert endpoint["PrivateDnsEnabled"] is True
    assert endpoint["SecurityGroupIds"] == ["<InterfaceEndpointSecurityGroup>"]


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        pytest.param({"CreateSecretsManagerEndpoint": "true", **IN_VPC}, "Say who may reach the endpoints",
                     id="endpoint with nobody named: the original defect, refused"),
        pytest.param({"CreateRdsEndpoint": "true", "VpcCidr": "10.0.0.0/16"}, "needs VpcId, SubnetIds",
                     id="RDS endpoint outside a VPC"),
        pytest.param({"CreateS3GatewayEndpoint": "true", **IN_VPC}, "needs VpcId and RouteTableIds",
                     id="S3 gateway without route tables"),
        pytest.param({"RotationStrategy": "alternating-users"}, "needs MasterSecretArn",
                     id="alternating users without the admin secret"),
        pytest.param({"SubnetIds": "subnet-0a1b2c3d"}, "Give both SubnetIds and SecurityGroupIds",
                     id="subnets without security groups"),
    ],
)
def test_rules_refuse_an_incomplete_deployment(parameters, problem):
    violations = Stack(TEMPLATE, **parameters).rule_violations()

    assert any(problem in violation for violation in violations), violations


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        pytest.param("EndpointClientCidrs", "10.0.1.0/24,10.0.2.0/24,10.0.3.0/24,10.0.4.0/24,10.0.5.0/24",
                     id="a fifth CIDR would be silently ignored: refused"),
        pytest.param("EndpointClientSecurityGroupIds", "sg-1,sg-2,sg-3,sg-4,sg-5", id="a fifth security group"),
        pytest.param("EndpointClientCidrs", "10.0.1.0/24, 10.0.2.0/24", id="a space after the comma"),
        pytest.param("VpcCidr", "vpc-0123abcd", id="a VPC id where its CIDR belongs"),
    ],
)
def test_endpoint_client_lists_are_validated_before_anything_is_created(parameter, value):
    with pytest.raises(InvalidParameter):
        Stack(TEMPLATE, **IN_VPC, CreateSecretsManagerEndpoint="true", **{parameter: value})


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        pytest.param({}, set(), id="defaults: no endpoint at all"),
        pytest.param({**IN_VPC, "CreateSecretsManagerEndpoint": "true", "VpcCidr": "10.0.0.0/16"},
                     {"InterfaceEndpointSecurityGroup", "SecretsManagerVpcEndpoint"}, id="Secrets Manager only"),
        pytest.param({**IN_VPC, "CreateRdsEndpoint": "true", "VpcCidr": "10.0.0.0/16"},
                     {"InterfaceEndpointSecurityGroup", "RdsVpcEndpoint"}, id="RDS API only"),
        pytest.param({**IN_VPC, "CreateS3GatewayEndpoint": "true", "RouteTableIds": "rtb-0aa,rtb-0bb"},
                     {"S3GatewayEndpoint"}, id="S3 gateway only: no security group"),
        pytest.param({**IN_VPC, "CreateSecretsManagerEndpoint": "true", "CreateRdsEndpoint": "true",
                      "CreateS3GatewayEndpoint": "true", "RouteTableIds": "rtb-0aa", "VpcCidr": "10.0.0.0/16"},
                     {"InterfaceEndpointSecurityGroup", "SecretsManagerVpcEndpoint", "RdsVpcEndpoint",
                      "S3GatewayEndpoint"}, id="all three share one security group"),
    ],
)
def test_each_endpoint_is_an_option(parameters, expected):
    stack = deploy(**parameters)
    network = {name for name, r in stack.resources.items() if r["Type"].startswith("AWS::EC2::")}

    assert network == expected
    services = {stack.properties(name)["ServiceName"]: stack.properties(name)["VpcEndpointType"]
                for name in network if name != "InterfaceEndpointSecurityGroup"}
    expected_services = {"SecretsManagerVpcEndpoint": f"com.amazonaws.{REGION}.secretsmanager",
                         "RdsVpcEndpoint": f"com.amazonaws.{REGION}.rds",
                         "S3GatewayEndpoint": f"com.amazonaws.{REGION}.s3"}
    assert set(services) == {expected_services[name] for name in network if name in expected_services}
    # The rotation function refers to the interface endpoints it created, so it (and a schedule that rotates
    # immediately) waits for them.
    references = set(stack.properties("RotationFunction")["Environment"]["Variables"].values())
    for endpoint in ("SecretsManagerVpcEndpoint", "RdsVpcEndpoint"):
        assert (f"<{endpoint}>" in references) is (endpoint in network), endpoint
    if "S3GatewayEndpoint" in network:
        gateway = stack.properties("S3GatewayEndpoint")
        assert services[f"com.amazonaws.{REGION}.s3"] == "Gateway"
        assert gateway["RouteTableIds"] == parameters["RouteTableIds"].split(",")


# --------------------------------------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    ("parameters", "decrypt_and_encrypt", "decrypt_only"),
    [
        pytest.param({}, None, None, id="AWS managed key: no KMS permission at all"),
        pytest.param({"KmsKeyArn": USER_KEY}, USER_KEY, None, id="user secrets under a customer key"),
        pytest.param({"KmsKeyArn": USER_KEY, "AdminKmsKeyArn": ADMIN_KEY}, USER_KEY, ADMIN_KEY,
                     id="RDS-managed master secret under its own key"),
        pytest.param({"AdminKmsKeyArn": ADMIN_KEY}, None, ADMIN_KEY, id="only the admin secret's key"),
    ],
)
@pytest.mark.parametrize("role", ROLES)
def test_kms_keys_are_granted_separately_and_only_through_secrets_manager(role, parameters, decrypt_and_encrypt,
                                                                         decrypt_only):
    stack = deploy(MasterSecretArn=MASTER_SECRET, **parameters)

    kms = [s for s in stack.statements(role) if any(a.startswith("kms:") for a in as_list(s["Action"]))]

    by_key = {s["Resource"]: sorted(as_list(s["Action"])) for s in kms}
    expected = {}
    if decrypt_and_encrypt:
        expected[decrypt_and_encrypt] = ["kms:Decrypt", "kms:GenerateDataKey"]
    if decrypt_only:
        expected[decrypt_only] = ["kms:Decrypt"]
    assert by_key == expected
    assert all(s["Condition"] == {"StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}}
               for s in kms)


def test_bootstrap_role_touches_only_the_secrets_it_marked():
    stack = deploy(MasterSecretArn=MASTER_SECRET)
    prefix = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds-db-credentials/*"
    role = "BootstrapFunctionRole"

    secret_statements = [s for s in stack.statements(role)
                         if any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))
                         and s["Resource"] != MASTER_SECRET]

    assert all(s["Resource"] == prefix for s in secret_statements)
    conditions = {action: s.get("Condition") for s in secret_statements for action in as_list(s["Action"])}
    request_mark = {"StringEquals": {f"aws:RequestTag/{MARK}": "bootstrap"}}
    resource_mark = {"StringEquals": {f"secretsmanager:ResourceTag/{MARK}": "bootstrap"}}
    assert conditions["secretsmanager:CreateSecret"] == request_mark
    for action in ("GetSecretValue", "PutSecretValue", "DeleteSecret"):
        assert conditions[f"secretsmanager:{action}"] == resource_mark, action
    # TagResource twice: the mark itself on a new secret, and further tags on a secret that has it.
    assert [s.get("Condition") for s in stack.granted(role, "secretsmanager:TagResource")] == [request_mark,
                                                                                                resource_mark]
    # Metadata only (never the value), to tell a missing secret from someone else's.
    assert stack.statement(role, "FindLoginSecrets")["Action"] == "secretsmanager:DescribeSecret"
    assert "Condition" not in stack.statement(role, "FindLoginSecrets")
    # The value of any other secret is out of reach: only the marked prefix and the admin secret.
    readable = {s["Resource"] for s in stack.granted(role, "secretsmanager:GetSecretValue")}
    assert readable == {prefix, MASTER_SECRET}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("network", [pytest.param({}, id="outside a VPC"), pytest.param(IN_VPC, id="in a VPC")])
def test_logs_only_to_the_own_log_group_even_in_a_vpc(role, network):
    stack = deploy(**network)
    log_group = "<RotationLogGroup.Arn>" if role == "RotationFunctionRole" else "<BootstrapLogGroup.Arn>"

    properties = stack.properties(role)
    log_statements = [s for s in stack.statements(role) if any(a.startswith("logs:") for a in as_list(s["Action"]))]

    assert "ManagedPolicyArns" not in properties, "AWSLambdaVPCAccessExecutionRole grants logs:* on *"
    assert "AWSLambdaVPCAccessExecutionRole" not in str(stack.resources)
    assert [(sorted(s["Action"]), s["Resource"]) for s in log_statements] == [
        (["logs:CreateLogStream", "logs:PutLogEvents"], log_group)]
    star = [s for s in stack.statements(role) if s["Resource"] == "*"]
    if network:
        (eni,) = star
        assert sorted(eni["Action"]) == ENI_ACTIONS, "AWSLambdaVPCAccessExecutionRole's EC2 part, nothing more"
    else:
        assert star == [], "no ENI permissions outside a VPC"


@pytest.mark.parametrize("function", ["RotationFunction", "BootstrapFunction"])
def test_sam_adds_no_managed_policy_to_the_functions(function):
    """SAM attaches AWSLambdaVPCAccessExecutionRole only to roles it creates; these functions bring their own."""
    properties = TEMPLATE["Resources"][function]["Properties"]

    assert "Role" in properties and "Policies" not in properties


@pytest.mark.parametrize("role", ROLES)
def test_database_endpoints_and_admin_secret_tags_are_readable_least_privilege(role):
    stack = deploy(MasterSecretArn=MASTER_SECRET)

    lookup = stack.statement(role, "ReadDatabaseEndpoints")
    admin = stack.statement(role, "ReadAdminSecret")

    assert sorted(lookup["Action"]) == ["rds:DescribeDBClusters", "rds:DescribeDBInstances"]
    assert sorted(lookup["Resource"]) == [f"arn:aws:rds:{REGION}:{ACCOUNT}:cluster:*",
                                          f"arn:aws:rds:{REGION}:{ACCOUNT}:db:*"]
    assert sorted(admin["Action"]) == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
    assert admin["Resource"] == MASTER_SECRET
    assert not [s for s in stack.statements(role) if any(a.startswith("rds:") and a != "rds:DescribeDBClusters"
                                                         and a != "rds:DescribeDBInstances"
                                                         for a in as_list(s["Action"]))]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [pytest.param({}, {"ADMIN_SSLMODE": "verify-full"}, id="not given: unset, verify-full"),
     pytest.param({"AdminEndpoint": "writer.cluster-c1a2b3.eu-west-1.rds.amazonaws.com:5432",
                   "AdminSslMode": "verify-ca"},
                  {"ADMIN_ENDPOINT": "writer.cluster-c1a2b3.eu-west-1.rds.amazonaws.com:5432",
                   "ADMIN_SSLMODE": "verify-ca"}, id="pinned host:port")],
)
def test_the_admin_endpoint_pin_reaches_both_functions(parameters, expected):
    """Globals: the rotation and the bootstrap function locate the admin's server the same way."""
    stack = deploy(**parameters)

    shared = stack.value(stack.template["Globals"]["Function"]["Environment"]["Variables"])

    assert {name: value for name, value in shared.items() if name.startswith("ADMIN_")} == expected
    for function in ("RotationFunction", "BootstrapFunction"):
        own = stack.properties(function)["Environment"]["Variables"]
        assert not [name for name in own if name.startswith("ADMIN_")], "no function overrides the shared pin"


# --------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("stack_name", "parameters", "fits"),
    [
        pytest.param("s" * STACK_NAME_LIMIT, {}, True, id="derived names at the documented stack-name limit"),
        pytest.param("s" * (STACK_NAME_LIMIT + 1), {}, False, id="one character more: -bootstrap is 65"),
        pytest.param("s" * 128, {"RotationFunctionName": "r" * 64, "BootstrapFunctionName": "b" * 64}, True,
                     id="CloudFormation's longest stack name with both names given"),
    ],
)
def test_function_names_fit_lambdas_limit(stack_name, parameters, fits):
    stack = deploy(stack_name, **parameters)
    names = {fn: stack.properties(fn)["FunctionName"] for fn in ("RotationFunction", "BootstrapFunction")}

    assert all(len(name) <= LAMBDA_NAME_LIMIT for name in names.values()) is fits, names
    # The rotation role's condition and the log groups follow the name, whichever way it was chosen.
    condition = stack.statement("RotationFunctionRole", "RotateSecretsThatUseThisFunction")["Condition"]
    allowed = condition["StringEquals"]["secretsmanager:resource/AllowRotationLambdaArn"]
    assert allowed == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{names['RotationFunction']}"
    assert stack.properties("RotationLogGroup")["LogGroupName"] == f"/aws/lambda/{names['RotationFunction']}"
    assert stack.properties("BootstrapLogGroup")["LogGroupName"] == f"/aws/lambda/{names['BootstrapFunction']}"


def test_the_documented_stack_name_limit_is_the_real_one():
    assert len("-bootstrap") + STACK_NAME_LIMIT == LAMBDA_NAME_LIMIT
    assert f"{STACK_NAME_LIMIT} characters" in DEPLOY_DOC
    assert "55 characters or" not in DEPLOY_DOC, "the old, off-by-one limit"


# --------------------------------------------------------------------------------------------- timeouts


ROTATION_TIMEOUTS = [int(v) for v in TEMPLATE["Parameters"]["RotationTimeout"]["AllowedValues"]]
CONNECT = TEMPLATE["Parameters"]["PgConnectTimeout"]
CONNECT_TIMEOUTS = range(CONNECT["MinValue"], CONNECT["MaxValue"] + 1)


@pytest.mark.parametrize("rotation_timeout", ROTATION_TIMEOUTS)
def test_the_timeout_rule_allows_exactly_what_fits_the_time_budget(rotation_timeout):
    """The template's rule and rotation/config.py's budget agree for every allowed combination."""
    for connect_timeout in CONNECT_TIMEOUTS:
        stack = Stack(TEMPLATE, RotationTimeout=str(rotation_timeout), PgConnectTimeout=str(connect_timeout))
        allowed = not any("PgConnectTimeout may be at most" in v for v in stack.rule_violations())

        assert allowed is (time_budget_ms(connect_timeout) < rotation_timeout * 1000), (rotation_timeout,
                                                                                         connect_timeout)


def test_the_defaults_fit_and_the_issue_example_is_refused():
    assert Stack(TEMPLATE).rule_violations() == []
    assert Stack(TEMPLATE, PgConnectTimeout="20").rule_violations() != [], "20 s connect + Secrets Manager > 30 s"
    assert Stack(TEMPLATE, PgConnectTimeout="20", RotationTimeout="45").rule_violations() == []
    assert deploy().properties("RotationFunction")["Timeout"] == "30"


def test_the_secrets_manager_figure_is_the_clients_worst_case():
    from rotation.secrets_store import ROTATION_CLIENT_CONFIG as config

    attempts = config.retries["total_max_attempts"]
    # Each attempt ends at the connect timeout (no route) or the read timeout (no answer); between attempts
    # standard mode waits at most 50 ms x 2^(n-1) after a timeout.
    per_attempt_ms = max(config.connect_timeout, config.read_timeout) * 1000
    backoff_ms = sum(50 * 2**n for n in range(attempts - 1))

    assert per_attempt_ms * attempts + backoff_ms == SECRETS_MANAGER_WORST_CASE_MS


@pytest.mark.parametrize(
    ("connect_timeout", "remaining_ms", "refusal"),
    [
        pytest.param(5, 29_950, None, id="defaults, at the start of a 30 s invocation"),
        pytest.param(12, 29_950, None, id="the longest connect timeout a 30 s function allows"),
        pytest.param(13, 29_950, "lower PGCONNECT_TIMEOUT to at most 12 s", id="one second too long"),
        pytest.param(20, 29_950, "lower PGCONNECT_TIMEOUT to at most 12 s", id="the issue's 20 s"),
        pytest.param(5, 3_000, "raise the function's Timeout", id="Lambda's default 3 s timeout"),
        pytest.param(5, time_budget_ms(5), None, id="exactly the budget"),
    ],
)
def test_a_step_refuses_to_start_when_the_timeouts_cannot_fit(connect_timeout, remaining_ms, refusal):
    settings = Settings(connect_timeout=connect_timeout)

    if refusal is None:
        check_time_budget(settings, remaining_ms)
        return
    with pytest.raises(ConfigurationError) as raised:
        check_time_budget(settings, remaining_ms)
    message = str(raised.value)
    assert refusal in message
    assert f"PGCONNECT_TIMEOUT={connect_timeout} s" in message
    assert f"{remaining_ms / 1000:g} s remain" in message
    assert str(STEP_ALLOWANCE_MS // 1000) in message


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_handler_checks_the_budget_before_calling_anything(monkeypatch):
    """A misconfigured function fails at once with the reason, not after Secrets Manager's retries or a timeout."""
    from rotation.handler import rotate
    from rotation_tools.local.lambda_context import LambdaContext

    # Were the check missing, the step would call this closed port and fail with SecretsManagerUnreachable.
    nowhere = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", nowhere)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", nowhere)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "20")
    event = {"Step": "createSecret", "SecretId": MASTER_SECRET, "ClientRequestToken": "0" * 32}

    with pytest.raises(ConfigurationError, match=r"PGCONNECT_TIMEOUT=20 s does not fit"):
        rotate(event, LambdaContext("rotation-budget-test", timeout_seconds=30))


# --------------------------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize(
    ("value", "expected"),
    [pytest.param("", None, id="empty: unreserved"), pytest.param("4", "4", id="reserved")],
)
def test_reserved_concurrency_is_optional(value, expected):
    properties = deploy(ReservedConcurrency=value).properties("RotationFunction")

    assert properties.get("ReservedConcurrentExecutions") == expected


# --------------------------------------------------------------------------------------------- SAR


def test_serverless_application_repository_metadata():
    application = TEMPLATE["Metadata"]["AWS::ServerlessRepo::Application"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    assert {"Name", "Description", "Author", "SpdxLicenseId", "ReadmeUrl", "SemanticVersion",
            "SourceCodeUrl", "HomePageUrl"} <= set(application)
    assert application["SemanticVersion"] == project["version"]
    assert application["SpdxLicenseId"] == project["license"]
    assert (ROOT / application["ReadmeUrl"]).is_file(), "sam package uploads the readme from this path"
    # The Serverless Application Repository's own constraints, checked before `sam publish` would.
    assert re.fullmatch(r"[a-zA-Z0-9-]{1,140}", application["Name"])
    assert re.fullmatch(r"[a-z0-9](([a-z0-9]|-(?!-))*[a-z0-9])?", application["Author"])
    assert 1 <= len(application["Description"]) <= 256
    assert len(application["Labels"]) <= 10
    assert all(re.fullmatch(r"[a-zA-Z0-9+\-_:/@]{1,127}", label) for label in application["Labels"])
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", application["SemanticVersion"])
    assert application["SourceCodeUrl"].startswith("https://")
