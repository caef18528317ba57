"""Invoke a Lambda handler in-process with an event file: `sam local invoke` without Docker.

Runs rotation.handler.rotate (or .bootstrap) in this process with a Lambda-like context. The handler's JSON
log lines go to stderr, as `sam local invoke` shows them, and stdout holds only the response: the handler's
result as JSON, or {"errorType", "errorMessage"} when it failed.

Secrets Manager and AWS credentials are found the way any boto3 program finds them: AWS_PROFILE,
AWS_ENDPOINT_URL_SECRETS_MANAGER (a local moto server, say), AWS_REGION... nothing is special-cased.

--env-from-template gives the handler the environment template.yaml declares for that function (Globals plus
its own Variables, parameters at their Default values) and the context its Timeout and MemorySize. Variables
already set in your environment win over the template's, so `PASSWORD_LENGTH=16 rotation invoke ...` tries
a value without editing the template, and your AWS_* credential and endpoint variables are never replaced.
Values only a deployed stack has (a resource's ARN, AWS::NoValue) are left unset, each with a note.

The sample events in events/ name a secret that exists nowhere: point one at yours with --secret-id, and
for the four steps stage a rotation first, as RotateSecret does, with `rotation events --secret-id ID --out
DIR`, which writes the four events with the staged version's token (usable with `sam local invoke -e` too).

examples:
  rotation events --secret-id NAME --out /tmp/ev && rotation invoke /tmp/ev/createSecret.json
  rotation invoke events/preflight.json --secret-id NAME
  rotation invoke events/createSecret.json --env-from-template
  AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:5000 rotation invoke events/testSecret.json
  rotation invoke events/bootstrap.json --function bootstrap

exit status: 0 the handler returned, 1 the handler raised, 2 usage error (event or template unreadable).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

HELP = "run a handler in-process with an event file (sam local invoke without Docker)"

#: --function -> (handler, the logical id it has when no template is read).
FUNCTIONS = {
    "rotate": ("rotation.handler.rotate", "RotationFunction"),
    "bootstrap": ("rotation.handler.bootstrap", "BootstrapFunction"),
}
#: The context's timeout when no template is read: template.yaml's defaults, not Lambda's 3 s, which the
#: rotation function's time-budget check (rotation/config.py) would rightly refuse.
UNTEMPLATED_TIMEOUT_S = {"RotationFunction": 30, "BootstrapFunction": 60}
DEFAULT_TEMPLATE = "template.yaml"
EXIT_OK, EXIT_FUNCTION_ERROR, EXIT_USAGE = 0, 1, 2


class UsageProblem(Exception):
    """The command line points at something unusable; reported with exit status 2, never a traceback."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("event", metavar="EVENT.json", help="the event to invoke with ('-' reads standard input)")
    parser.add_argument("--function", choices=FUNCTIONS, default="rotate",
                        help="which handler: rotate (the rotation function, default) or bootstrap")
    parser.add_argument("--env-from-template", action="store_true",
                        help="set the function's environment, Timeout and MemorySize from the SAM template")
    parser.add_argument("--template", metavar="PATH",
                        help=f"the SAM template to read (default: {DEFAULT_TEMPLATE}; implies --env-from-template)")
    parser.add_argument("--secret-id", metavar="ID",
                        help="point a rotation step or preflight event at this secret (name or ARN) instead of the "
                        "file's SecretId")
    parser.add_argument("--token", metavar="TOKEN",
                        help="use this ClientRequestToken (the staged AWSPENDING version) instead of the file's; "
                        "`rotation events` writes events that carry one already")


def run(args: argparse.Namespace) -> int:
    handler_path, default_name = FUNCTIONS[args.function]
    try:
        event = _pointed(_load_event(args.event), args)
        _check_shape(event, args.function)
        if args.env_from_template or args.template:
            context, environment = _from_template(args.template or DEFAULT_TEMPLATE, handler_path)
        else:
            timeout = UNTEMPLATED_TIMEOUT_S[default_name]
            context, environment = _lambda_context(default_name, timeout_seconds=timeout), {}
    except UsageProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with _environment(environment):
        return _invoke(handler_path, event, context)


def _load_event(path: str) -> Any:
    source = "standard input" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot read the event file {source}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"the event in {source} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                           f"{exc.colno}") from exc


def _pointed(event: Any, args: argparse.Namespace) -> Any:
    """The event with --secret-id / --token applied; only rotation step and preflight events carry them."""
    if args.secret_id is None and args.token is None:
        return event
    if not isinstance(event, dict) or not ({"Step", "Preflight"} & event.keys()):
        raise UsageProblem("--secret-id and --token apply to a rotation step or preflight event (one with a Step "
                           "or Preflight key); this event has neither")
    event = dict(event)
    if args.secret_id is not None:
        event["SecretId"] = args.secret_id
    if args.token is not None:
        if "Preflight" in event:
            raise UsageProblem("a preflight event has no token: drop --token")
        event["ClientRequestToken"] = args.token
        event.pop("RotationToken", None)  # belongs to the file's rotation, not to this token's
    return event


def _check_shape(event: Any, function: str) -> None:
    """An event meant for the other function fails there with a puzzling message; say what it is instead."""
    if not isinstance(event, dict):
        return
    bootstrap_shaped = "MasterSecretId" in event or {"RequestType", "ResponseURL"} <= event.keys()
    rotation_shaped = "Step" in event or "Preflight" in event
    if function == "rotate" and bootstrap_shaped and not rotation_shaped:
        kind = "a CloudFormation custom-resource event" if "RequestType" in event else "a bootstrap event"
        raise UsageProblem(f"this is {kind} (it has "
                           f"{'RequestType and ResponseURL' if 'RequestType' in event else 'MasterSecretId'}, no "
                           "Step), for the bootstrap function: run it with --function bootstrap")
    if function == "bootstrap" and rotation_shaped and not bootstrap_shaped:
        raise UsageProblem("this is a rotation event (it has a Step or Preflight key), for the rotation function: "
                           "run it without --function bootstrap")


def _lambda_context(function_name: str, **config: Any):
    from rotation_tools.local.lambda_context import LambdaContext

    return LambdaContext(function_name=function_name, **config)


def _from_template(path: str, handler_path: str):
    from rotation.exceptions import ConfigurationError, LocalToolError
    from rotation_tools.local.lambda_context import local_region
    from rotation_tools.local.template_env import function_config, load_template, plan_environment

    try:
        config = function_config(load_template(path), handler_path, local_region())
    except (ConfigurationError, LocalToolError) as exc:
        hint = "" if os.path.exists(path) else " (run from the project folder, or pass --template PATH)"
        raise UsageProblem(f"{exc}{hint}") from exc
    plan = plan_environment(config, os.environ)
    lines = [f"environment from {path}, function {config.logical_id} (Timeout {config.timeout_seconds:g} s, "
             f"MemorySize {config.memory_mb} MB):"]
    if plan.apply:
        lines.append("  set: " + " ".join(f"{name}={shlex.quote(value)}" for name, value in plan.apply.items()))
    if plan.kept:
        lines.append("  kept from your environment: " + ", ".join(plan.kept))
    lines += [f"  note: {note}" for note in plan.notes]
    print("\n".join(lines), file=sys.stderr)
    context = _lambda_context(config.function_name, memory_limit_in_mb=config.memory_mb,
                              timeout_seconds=config.timeout_seconds)
    return context, plan.apply


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` for the invocation and put the environment back afterwards (callers may be in-process)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


def _invoke(handler_path: str, event: Any, context: Any) -> int:
    from rotation.exceptions import RotationError
    from rotation_tools.logs import function_logs

    # Imported only now, after the environment is set: the logger reads its service name and level at import,
    # as it does in a Lambda container.
    module_name, _, function_name = handler_path.rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        # Everything the function prints (log lines, EMF metrics) goes where `sam local invoke` puts it.
        with function_logs(human=False), contextlib.redirect_stdout(sys.stderr):
            result = handler(event, context)
    except Exception as exc:
        # The response Lambda returns for a function error; the handler has already logged the details. Our own
        # errors' messages never quote a secret; an unexpected exception's message is not ours to vet, so only
        # its type is printed, and its traceback goes to stderr for whoever debugs it (as rotation.cfn does).
        if isinstance(exc, RotationError):
            message = str(exc)
            summary = f"{type(exc).__name__}: {message}"
        else:
            traceback.print_exc(file=sys.stderr)
            message = summary = f"unexpected {type(exc).__name__}; its traceback is on stderr"
        print(json.dumps({"errorType": type(exc).__name__, "errorMessage": message}), flush=True)
        print(f"{handler_path} failed: {summary}", file=sys.stderr)
        hint = _unstaged_token_hint(event, exc)
        if hint:
            print(hint, file=sys.stderr)
        return EXIT_FUNCTION_ERROR
    print(json.dumps(result, default=str), flush=True)
    if _unanswered_custom_resource(event, result):
        return EXIT_FUNCTION_ERROR
    return EXIT_OK


def _unstaged_token_hint(event: Any, exc: Exception) -> str | None:
    """A step event whose token RotateSecret never staged (a sample file's, say): how to get one that runs."""
    from rotation.exceptions import RotationStateError

    if not (isinstance(exc, RotationStateError) and isinstance(event, dict) and "Step" in event):
        return None
    message = str(exc)
    if str(event.get("ClientRequestToken")) not in message or not (
            "is not a version" in message or "is not staged AWSPENDING" in message):
        return None
    secret = shlex.quote(str(event.get("SecretId")))
    return (f"hint: a step runs only for the version RotateSecret staged AWSPENDING; `rotation events --secret-id "
            f"{secret} --out DIR` stages one (on a local endpoint) and writes the four events for it, and "
            f"`rotation status` shows a pending rotation's token for --token")


def _unanswered_custom_resource(event: Any, result: Any) -> bool:
    """``{"Status": null}`` means CloudFormation was never answered; say so, and what the work itself did."""
    if not (isinstance(event, dict) and "ResponseURL" in event and isinstance(result, dict)):
        return False
    if result.get("Status") is not None:
        return False
    from urllib.parse import urlsplit

    host = urlsplit(str(event["ResponseURL"])).hostname or str(event["ResponseURL"])
    work = (f"the work succeeded ({result.get('Reason')})" if result.get("PhysicalResourceId")
            else f"the work failed ({result.get('Reason')})")
    print(f'"Status": null: CloudFormation was not answered, because its ResponseURL at {host} could not be '
          f"reached (the log line above says why); {work}. A sample event's pre-signed URL is not a real one: "
          "in a stack, CloudFormation waits for this answer until its own timeout. To try the bootstrap without a "
          "stack, invoke events/bootstrap.json (the direct form) with --function bootstrap", file=sys.stderr)
    return True
