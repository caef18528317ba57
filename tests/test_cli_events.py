"""Sample events that run: `rotation events` stages a rotation as RotateSecret does and writes its four step
events; `rotation invoke` runs them (and points any step or preflight event at a secret with --secret-id).

Real parts: moto over HTTP (the staging goes through its RotateSecret), PostgreSQL with SCRAM over TCP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import can_login, closed_port

from rotation_tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
STEP_FILES = ("createSecret.json", "setSecret.json", "testSecret.json", "finishSecret.json")


def _invoke(capsys, *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["invoke", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if out.strip() else {}, err


@pytest.mark.parametrize("with_masterarn", [False, True], ids=["single-user", "alternating-users"])
def test_generated_events_run_one_rotation_with_rotation_invoke(with_masterarn, sm, make_app_user, cluster,
                                                                 store_secret, tmp_path, capsys):
    user = make_app_user()
    if with_masterarn:
        user["masterarn"] = store_secret(cluster)
    arn = store_secret(user)
    sm.enable_rotation(arn)
    current_before = sm.stages(arn)

    code = main(["events", "--secret-id", arn, "--out", str(tmp_path), "--json"])

    written = json.loads(capsys.readouterr().out)
    token = written["token"]
    assert code == 0 and written["staged_now"] is True
    assert sorted(Path(path).name for path in written["files"]) == sorted(STEP_FILES)
    # Exactly what RotateSecret leaves before createSecret: the token is AWSPENDING, empty; AWSCURRENT unmoved.
    assert sm.stages(arn) == {**current_before, token: ["AWSPENDING"]}
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        sm.value(arn, "AWSPENDING", token)

    for name in STEP_FILES:
        event = json.loads((tmp_path / name).read_text())
        assert (event["SecretId"], event["ClientRequestToken"]) == (arn, token)
        code, response, err = _invoke(capsys, str(tmp_path / name))
        assert code == 0, err
        assert response["step"] == name.removesuffix(".json")

    new = sm.value(arn, "AWSCURRENT")
    assert "AWSCURRENT" in sm.stages(arn)[token]
    assert can_login(new) and new["password"] != user["password"]


def test_events_for_a_pending_token_change_nothing_and_a_second_rotation_is_refused(sm, make_app_user,
                                                                                     store_secret, tmp_path, capsys):
    arn = store_secret(make_app_user())
    token = sm.stage_pending(arn)
    stages = sm.stages(arn)

    refused = main(["events", "--secret-id", arn, "--out", str(tmp_path / "new")])
    refusal = capsys.readouterr().err
    replayed = main(["events", "--secret-id", arn, "--out", str(tmp_path / "same"), "--token", token])

    assert refused == 1 and f"--token {token}" in refusal and "rotation repair" in refusal
    assert replayed == 0 and "nothing changed" in capsys.readouterr().out
    assert json.loads((tmp_path / "same" / "createSecret.json").read_text())["ClientRequestToken"] == token
    assert sm.stages(arn) == stages


@pytest.mark.parametrize(
    ("setup", "endpoint", "expected"),
    [
        pytest.param("rotation-off", None, "rotation is not enabled", id="rotation-not-enabled"),
        pytest.param("enabled", "https://secretsmanager.us-east-1.amazonaws.com", "RotateSecret invokes the deployed",
                     id="aws-endpoint-is-not-staged"),
    ],
)
def test_events_refuse_what_rotate_secret_would_not_do_here(setup, endpoint, expected, sm, make_app_user,
                                                            store_secret, tmp_path, capsys, monkeypatch):
    arn = store_secret(make_app_user())
    if setup == "enabled":
        sm.enable_rotation(arn)
    stages = sm.stages(arn)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint)
        monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", endpoint)

    code = main(["events", "--secret-id", arn, "--out", str(tmp_path)])

    assert code == 1 and expected in capsys.readouterr().err
    assert sm.stages(arn) == stages and not list(tmp_path.iterdir())


def test_invoke_points_the_sample_preflight_event_at_a_secret(make_app_user, store_secret, capsys):
    arn = store_secret(make_app_user())

    code, response, _ = _invoke(capsys, str(EVENTS / "preflight.json"), "--secret-id", arn)

    assert code == 0 and response["secret_arn"] == arn and response["status"] in {"ok", "warn"}


def test_invoke_with_secret_id_and_token_runs_the_sample_step_files(sm, make_app_user, store_secret, capsys):
    user = make_app_user()
    arn = store_secret(user)
    token = sm.stage_pending(arn)

    for name in STEP_FILES:
        code, _response, err = _invoke(capsys, str(EVENTS / name), "--secret-id", arn, "--token", token)
        assert code == 0, err

    assert can_login(sm.value(arn, "AWSCURRENT")) and not can_login(user)


@pytest.mark.parametrize(
    ("event_file", "argv", "expected"),
    [
        pytest.param("bootstrap.json", [], "a bootstrap event (it has MasterSecretId, no Step), for the bootstrap "
                     "function: run it with --function bootstrap", id="bootstrap-event-to-rotate"),
        pytest.param("bootstrap-cfn-create.json", [], "a CloudFormation custom-resource event", id="cfn-to-rotate"),
        pytest.param("createSecret.json", ["--function", "bootstrap"], "run it without --function bootstrap",
                     id="rotation-event-to-bootstrap"),
        pytest.param("bootstrap.json", ["--function", "bootstrap", "--secret-id", "x"], "--secret-id and --token "
                     "apply to a rotation step or preflight event", id="secret-id-on-a-bootstrap-event"),
    ],
)
def test_an_event_for_the_other_function_says_which_one(event_file, argv, expected, capsys):
    code = main(["invoke", str(EVENTS / event_file), *argv])

    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert expected in err


def test_an_unreachable_response_url_explains_the_null_status(cluster, store_secret, tmp_path, capsys):
    event = json.loads((EVENTS / "bootstrap-cfn-create.json").read_text())
    with closed_port() as port:
        event["ResponseURL"] = f"https://127.0.0.1:{port}/cloudformation-response"
        event["ResourceProperties"]["MasterSecretId"] = "no-such-master-secret"
        path = tmp_path / "cfn.json"
        path.write_text(json.dumps(event))

        code, response, err = _invoke(capsys, str(path), "--function", "bootstrap")

    assert code == 1 and response["Status"] is None
    assert "CloudFormation was not answered, because its ResponseURL at 127.0.0.1 could not be reached" in err
    assert "the work failed" in err and "no-such-master-secret" in err


def test_a_sample_step_event_with_an_unstaged_token_says_how_to_get_one(sm, make_app_user, store_secret, capsys):
    arn = store_secret(make_app_user())
    sm.enable_rotation(arn)

    code, response, err = _invoke(capsys, str(EVENTS / "createSecret.json"), "--secret-id", arn)

    assert code == 1 and response["errorType"] == "RotationStateError"
    assert "is not a version of secret" in response["errorMessage"]
    assert f"rotation events --secret-id {arn} --out DIR" in err
