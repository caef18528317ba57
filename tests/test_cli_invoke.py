"""`rotation invoke`: the handlers run in-process with the sample events, as `sam local invoke` would run them.

The event files are driven through the real command line (``python -m rotation_tools invoke`` in a subprocess, so the
environment handling is the one a user gets) against real PostgreSQL and the moto server; only the SecretId
and token are rewritten, to point at a secret made for the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_refused_insert, can_login, select_titles

from rotation.secrets_store import SecretsManagerStore, secrets_manager_client
from rotation_tools.cli import main
from rotation_tools.local.lambda_context import LambdaContext
from rotation_tools.local.template_env import (
    CloudFormationLoader,
    FunctionConfig,
    function_config,
    load_template,
    plan_environment,
)

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
TEMPLATE = ROOT / "template.yaml"
ROTATION_EVENT_FILES = ("createSecret.json", "setSecret.json", "testSecret.json", "finishSecret.json")
SINGLE, ALTERNATING = "single-user", "alternating-users"


def invoke_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotation_tools", "invoke", *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def event_for(tmp_path: Path, name: str, secret_id: str, token: str) -> Path:
    """A copy of ``events/<name>`` aimed at our secret and token; every other key is kept as shipped."""
    event = json.loads((EVENTS / name).read_text())
    event.update(SecretId=secret_id, ClientRequestToken=token)
    copy = tmp_path / name
    copy.write_text(json.dumps(event))
    return copy


def response(stdout: str) -> dict[str, Any]:
    """The invocation's response: the last line, after the handler's log lines."""
    lines = stdout.strip().splitlines()
    for line in lines:
        json.loads(line)  # every line is JSON, as in CloudWatch Logs
    return json.loads(lines[-1])


# --- the sample events, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "previous_logs_in"),
    [
        pytest.param(SINGLE, False, id="single-user: new password logs in, old one refused"),
        pytest.param(ALTERNATING, True, id="alternating-users: clone logs in, original keeps working"),
    ],
)
def test_the_four_event_files_rotate_a_secret(sm, make_app_user, store_secret, master_arn, tmp_path, strategy,
                                              previous_logs_in):
    original = make_app_user()
    if strategy == ALTERNATING:
        original["masterarn"] = master_arn
    arn = store_secret(original)
    token = sm.stage_pending(arn)

    for name in ROTATION_EVENT_FILES:
        result = invoke_cli(str(event_for(tmp_path, name, arn, token)))

        assert result.returncode == 0, result.stdout + result.stderr
        assert response(result.stdout)["step"] == name.removesuffix(".json")
        assert '"level":"INFO"' in result.stderr, "the JSON log lines are on stderr, as sam local invoke's"

    new = sm.value(arn, "AWSCURRENT")
    assert "AWSCURRENT" in sm.stages(arn)[token]
    assert all("AWSPENDING" not in labels for version, labels in sm.stages(arn).items() if version != token)
    assert can_login(new)
    assert can_login(original) is previous_logs_in
    assert new["password"] not in result.stdout + result.stderr


def test_the_bootstrap_event_file_creates_a_read_only_login(pg, cluster, master_arn, tmp_path):
    event = json.loads((EVENTS / "bootstrap.json").read_text())
    event.update(MasterSecretId=master_arn, Host=pg.host, Port=pg.port, Username=f"reader_{uuid.uuid4().hex[:8]}")
    copy = tmp_path / "bootstrap.json"
    copy.write_text(json.dumps(event))

    result = invoke_cli(str(copy), "--function", "bootstrap")

    assert result.returncode == 0, result.stdout + result.stderr
    created = response(result.stdout)
    login = json.loads(SecretsManagerStore(secrets_manager_client()).get_secret_string(created["SecretArn"],
                                                                                        "AWSCURRENT"))
    assert login["username"] == event["Username"]
    assert select_titles(login) == ["Bananas"]
    # A plain session, as the Query Editor's: the privileges refuse the write (no read-only default by default).
    assert_refused_insert(login)
    assert login["password"] not in result.stdout + result.stderr


# --- the function's environment from template.yaml ------------------------------------------------------


def template_with(tmp_path: Path, **defaults: str) -> Path:
    """A copy of template.yaml with some parameters' Default changed (text edit: the tags must stay as written)."""
    text = TEMPLATE.read_text()
    for parameter, value in defaults.items():
        text, count = re.subn(rf"(\n  {parameter}:\n(?:    .*\n)*?    Default: ).*\n", rf"\g<1>{value}\n", text)
        assert count == 1, f"parameter {parameter} with a Default not found in template.yaml"
    copy = tmp_path / "template.yaml"
    copy.write_text(text)
    return copy


def shipped_password_length() -> int:
    return int(load_template(TEMPLATE)["Parameters"]["PasswordLength"]["Default"])


@pytest.mark.parametrize(
    ("template_defaults", "user_env", "expected_length", "digits_allowed"),
    [
        pytest.param({}, {}, shipped_password_length(), True, id="template.yaml as shipped"),
        pytest.param({"PasswordLength": "47", "ExcludeNumbers": '"true"'}, {}, 47, False,
                     id="template with its own policy: 47 characters, no digits"),
        pytest.param({"PasswordLength": "47"}, {"PASSWORD_LENGTH": "20"}, 20, True,
                     id="a variable set in the environment wins over the template"),
    ],
)
def test_env_from_template_sets_the_password_policy(sm, make_app_user, store_secret, tmp_path, template_defaults,
                                                    user_env, expected_length, digits_allowed, monkeypatch):
    for name in ("PASSWORD_LENGTH", "EXCLUDE_NUMBERS", "POWERTOOLS_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    arn = store_secret(make_app_user())
    token = sm.stage_pending(arn)
    template = template_with(tmp_path, **template_defaults) if template_defaults else TEMPLATE

    result = invoke_cli(str(event_for(tmp_path, "createSecret.json", arn, token)), "--template", str(template),
                        env=user_env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"environment from {template}, function RotationFunction" in result.stderr
    if user_env:
        assert "kept from your environment: " in result.stderr and "PASSWORD_LENGTH" in result.stderr
    assert '"service":"local-rotation"' in result.stderr, "the logger was built after the template's env was set"
    password = sm.value(arn, "AWSPENDING", token)["password"]
    assert len(password) == expected_length
    assert any(ch.isdigit() for ch in password) is digits_allowed


# --- exit codes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_text", "extra_argv", "expected_code", "expected_message"),
    [
        pytest.param(None, [], 2, "cannot read the event file", id="missing event file: usage error"),
        pytest.param('{"Step": ', [], 2, "is not valid JSON", id="malformed JSON: usage error"),
        pytest.param("{}", ["--template", "no-such-template.yaml"], 2, "cannot read template",
                     id="missing template: usage error"),
        pytest.param('{"Step": "createSecret", "SecretId": "no-such-secret", "ClientRequestToken": "t"}', [], 1,
                     '"errorType": "SecretsManagerError"', id="unknown secret: function error"),
        pytest.param('{"Step": "rotate"}', [], 1, '"errorType": "InvalidEventError"',
                     id="not a rotation event: function error"),
    ],
)
def test_exit_codes(tmp_path, capsys, event_text, extra_argv, expected_code, expected_message):
    event = tmp_path / "event.json"
    if event_text is not None:
        event.write_text(event_text)

    code = main(["invoke", str(event), *extra_argv])

    out, err = capsys.readouterr()
    assert code == expected_code
    assert expected_message in out + err


def test_an_unexpected_error_is_reported_by_its_type_with_the_traceback_on_stderr(tmp_path, capsys, monkeypatch):
    """A bug in the function: its message is not ours to vet for secrets, so the response names the type only."""
    import rotation.handler

    leaked = f"postgresql://app:{uuid.uuid4().hex}@db"

    def crash(event: Any, context: Any) -> Any:
        raise RuntimeError(f"driver gave up on {leaked}")

    monkeypatch.setattr(rotation.handler, "rotate", crash)
    event = tmp_path / "event.json"
    event.write_text('{"Step": "createSecret", "SecretId": "s", "ClientRequestToken": "t"}')

    code = main(["invoke", str(event)])

    out, err = capsys.readouterr()
    assert code == 1
    assert response(out) == {"errorType": "RuntimeError",
                             "errorMessage": "unexpected RuntimeError; its traceback is on stderr"}
    assert leaked not in out
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("rotation.handler.rotate failed: unexpected RuntimeError; its traceback is on stderr")


# --- the pieces: template resolution and the context -------------------------------------------------------

RESOLUTION_TEMPLATE = """
Parameters:
  Length: {Type: Number, Default: 24}
  NoDefault: {Type: String}
  Endpoint: {Type: String, Default: ""}
  Subnets: {Type: CommaDelimitedList, Default: "subnet-a,subnet-b"}
Conditions:
  HasEndpoint: !Not [!Equals [!Ref Endpoint, ""]]
Resources:
  Queue: {Type: AWS::SQS::Queue}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Handler: rotation.handler.rotate
      Timeout: 12
      Environment:
        Variables:
          PLAIN: text
          FLAG: true
          LENGTH: !Ref Length
          NAMED: !Sub "${AWS::StackName}-rotation"
          JOINED: !Join ["+", !Ref Subnets]
          CHOSEN: !If [HasEndpoint, yes-endpoint, no-endpoint]
          OPTIONAL: !If [HasEndpoint, !Ref Endpoint, !Ref AWS::NoValue]
          MISSING: !Ref NoDefault
          QUEUE_URL: !Ref Queue
          QUEUE_ARN: !GetAtt Queue.Arn
          ENCODED: !Base64 text
Globals:
  Function:
    MemorySize: 512
    Environment:
      Variables:
        PLAIN: overridden by the function
        FROM_GLOBALS: global
"""


@pytest.fixture(scope="module")
def resolved():
    import yaml

    template = yaml.load(RESOLUTION_TEMPLATE, Loader=CloudFormationLoader.get())  # noqa: S506 - SafeLoader subclass
    return function_config(template, "rotation.handler.rotate", region="eu-west-1")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("PLAIN", "text", id="function variables override Globals"),
        pytest.param("FROM_GLOBALS", "global", id="Globals variables are inherited"),
        pytest.param("FLAG", "true", id="YAML booleans become the strings CloudFormation passes"),
        pytest.param("LENGTH", "24", id="Ref to a parameter gives its Default"),
        pytest.param("NAMED", "local-rotation", id="Sub with a pseudo parameter, as SAM local resolves it"),
        pytest.param("JOINED", "subnet-a+subnet-b", id="Ref to a list parameter is a list"),
        pytest.param("CHOSEN", "no-endpoint", id="If evaluates its condition with the defaults"),
    ],
)
def test_template_values_resolve(resolved, variable, value):
    assert resolved.environment[variable] == value


@pytest.mark.parametrize(
    ("variable", "reason"),
    [
        pytest.param("OPTIONAL", "AWS::NoValue", id="AWS::NoValue leaves the variable unset"),
        pytest.param("MISSING", "parameter NoDefault, which has no Default", id="parameter without a Default"),
        pytest.param("QUEUE_URL", "resource Queue", id="Ref to a resource"),
        pytest.param("QUEUE_ARN", "exists only once the stack is deployed", id="GetAtt"),
        pytest.param("ENCODED", "Fn::Base64", id="a function only CloudFormation evaluates"),
    ],
)
def test_unresolvable_values_are_dropped_with_a_note(resolved, variable, reason):
    assert variable not in resolved.environment
    assert any(note.startswith(f"{variable} not set") and reason in note for note in resolved.notes)


def test_function_settings_come_from_the_template(resolved):
    assert (resolved.logical_id, resolved.timeout_seconds, resolved.memory_mb) == ("Fn", 12, 512)


@pytest.mark.parametrize(
    ("user_env", "applied", "kept"),
    [
        pytest.param({}, {"SECRETS_MANAGER_ENDPOINT": "https://vpce.example"}, (), id="nothing set: template applies"),
        pytest.param({"SECRETS_MANAGER_ENDPOINT": "http://127.0.0.1:5000"}, {}, ("SECRETS_MANAGER_ENDPOINT",),
                     id="the user's value wins"),
        pytest.param({"AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:5000"}, {}, (),
                     id="a boto3 endpoint variable keeps the template's endpoint out"),
    ],
)
def test_the_user_environment_is_never_overridden(user_env, applied, kept):
    config = FunctionConfig(logical_id="Fn", handler="h", function_name="Fn", timeout_seconds=3, memory_mb=128,
                            environment={"SECRETS_MANAGER_ENDPOINT": "https://vpce.example"})

    plan = plan_environment(config, user_env)

    assert (plan.apply, plan.kept) == (applied, kept)


def test_shipped_template_resolves_for_both_functions():
    template = load_template(TEMPLATE)
    for handler in ("rotation.handler.rotate", "rotation.handler.bootstrap"):
        config = function_config(template, handler, region="us-east-1")
        assert config.environment["PASSWORD_LENGTH"] == str(shipped_password_length())
        assert config.timeout_seconds > 0


def test_context_counts_down_from_the_timeout():
    now = [100.0]
    context = LambdaContext(function_name="local-rotation", timeout_seconds=30, memory_limit_in_mb=256,
                            region="eu-west-1", clock=lambda: now[0])
    now[0] += 12.5

    assert context.get_remaining_time_in_millis() == 17500
    assert context.invoked_function_arn == "arn:aws:lambda:eu-west-1:123456789012:function:local-rotation"
    assert context.log_group_name == "/aws/lambda/local-rotation"
    assert uuid.UUID(context.aws_request_id)
    now[0] += 60
    assert context.get_remaining_time_in_millis() == 0
