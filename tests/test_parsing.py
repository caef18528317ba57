"""Pure parsing and policy logic: events, settings, the secret format, the password generator."""

from __future__ import annotations

import json
import string

import pytest

from rotation.config import Settings, StrategyName
from rotation.credentials import DatabaseCredentials, parse_secret_string
from rotation.events import PreflightEvent, RotationEvent, Step
from rotation.exceptions import ConfigurationError, InvalidEventError, SecretFormatError
from rotation.passwords import DEFAULT_EXCLUDE_CHARACTERS, PUNCTUATION, PasswordPolicy
from rotation.topology import Endpoint

SECRET_PASSWORD = "pw-that-must-never-leak-7Qz"
VALID_SECRET = {
    "engine": "postgres",
    "host": "db.example.internal",
    "port": 5432,
    "username": "reader_user",
    "password": SECRET_PASSWORD,
    "dbname": "appdb",
    "dbClusterIdentifier": "demo-cluster",
}
VALID_EVENT = {"Step": "createSecret", "SecretId": "arn:secret", "ClientRequestToken": "tok-1"}


# --- events ---------------------------------------------------------------------------------------------

def test_rotation_event_parses_all_four_steps():
    for step in Step:
        parsed = RotationEvent.parse({**VALID_EVENT, "Step": step.value, "RotationToken": "rt"})
        assert parsed.step is step
        assert parsed.rotation_token == "rt"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        pytest.param(["not", "a", "dict"], "must be a JSON object", id="not-an-object"),
        pytest.param({k: v for k, v in VALID_EVENT.items() if k != "Step"}, "missing the key 'Step'", id="no-step"),
        pytest.param({**VALID_EVENT, "Step": "rotateSecret"}, "unknown Step 'rotateSecret'", id="unknown-step"),
        pytest.param({**VALID_EVENT, "SecretId": ""}, "'SecretId' must be a non-empty string", id="empty-secret"),
        pytest.param({**VALID_EVENT, "SecretId": "A" * 100_000}, "'SecretId' is 100000 characters long",
                     id="huge-secret-id-not-echoed"),
        pytest.param({**VALID_EVENT, "ClientRequestToken": 7}, "'ClientRequestToken' must be", id="token-number"),
        pytest.param({"Step": "setSecret", "SecretId": "x"}, "missing the key 'ClientRequestToken'", id="no-token"),
    ],
)
def test_bad_rotation_events_name_the_problem(event, message):
    with pytest.raises(InvalidEventError, match=message) as caught:
        RotationEvent.parse(event)
    assert len(str(caught.value)) < 300, "the message never echoes an oversized value"


@pytest.mark.parametrize(
    ("event", "dimension"),
    [
        pytest.param(VALID_EVENT, "createSecret", id="valid"),
        pytest.param({"Step": ""}, "invalid", id="empty"),
        pytest.param({"Step": "x" * 500}, "invalid", id="arbitrary-text"),
        pytest.param({"Step": ["createSecret"]}, "invalid", id="unhashable"),
        pytest.param("not-a-dict", "invalid", id="not-an-object"),
    ],
)
def test_metric_dimension_never_carries_arbitrary_input(event, dimension):
    assert Step.metric_dimension(event) == dimension


def test_preflight_event_is_recognised_only_when_asked_for():
    assert PreflightEvent.matches({"Preflight": True, "SecretId": "s"})
    assert not PreflightEvent.matches({"Preflight": "yes", "SecretId": "s"})
    assert not PreflightEvent.matches(VALID_EVENT)
    assert PreflightEvent.parse({"Preflight": True, "SecretId": "s"}).secret_id == "s"


# --- secret format --------------------------------------------------------------------------------------

def parse(document: dict) -> DatabaseCredentials:
    return DatabaseCredentials.from_secret(document, "AWSCURRENT of arn:test")


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        pytest.param({}, "port", 5432, id="port-number"),
        pytest.param({"port": "6543"}, "port", 6543, id="port-numeric-string"),
        pytest.param({"port": None}, "port", 5432, id="port-null-defaults"),
        pytest.param({"dbname": None}, "dbname", "postgres", id="dbname-default"),
        pytest.param({"engine": "aurora-postgresql"}, "host", "db.example.internal", id="aurora-engine"),
        pytest.param({}, "sslmode", "verify-full", id="no-ssl-key-means-verify-full"),
        pytest.param({"ssl": True}, "sslmode", "verify-full", id="ssl-true"),
        pytest.param({"ssl": False}, "sslmode", "disable", id="ssl-false"),
        pytest.param({"ssl": "true"}, "sslmode", "verify-full", id="ssl-string-true"),
        pytest.param({"ssl": "require"}, "sslmode", "require", id="ssl-require"),
        pytest.param({"ssl": "verify-ca"}, "sslmode", "verify-ca", id="ssl-verify-ca"),
        pytest.param({"masterarn": "arn:admin"}, "masterarn", "arn:admin", id="masterarn"),
    ],
)
def test_secret_fields(change, field, expected):
    document = {**VALID_SECRET, **change}
    document = {k: v for k, v in document.items() if v is not None}
    assert getattr(parse(document), field) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"engine": None}, "missing the key 'engine'", id="no-engine"),
        pytest.param({"engine": "mysql"}, "engine 'mysql'", id="wrong-engine"),
        pytest.param({"host": None}, "missing the key 'host'", id="no-host"),
        pytest.param({"username": None}, "missing the key 'username'", id="no-username"),
        pytest.param({"password": None}, "missing the key 'password'", id="no-password"),
        pytest.param({"password": 12345}, "'password' must be a non-empty string", id="password-number"),
        pytest.param({"port": "54x2"}, "'port' must be a TCP port", id="port-garbage"),
        pytest.param({"port": 70000}, "'port' must be a TCP port", id="port-out-of-range"),
        pytest.param({"port": True}, "'port' must be a number", id="port-boolean"),
        pytest.param({"ssl": "prefer"}, "'ssl' must be one of", id="ssl-prefer-silently-downgrades"),
        pytest.param({"username": "u" * 64}, "63-byte limit", id="username-too-long"),
        pytest.param({"password": SECRET_PASSWORD + "\x00sslmode=disable"}, "contains a NUL", id="password-nul"),
        pytest.param({"host": "db\x00.evil"}, "contains a NUL", id="host-nul"),
    ],
)
def test_malformed_secrets_name_the_problem_and_never_the_password(change, message):
    document = {k: v for k, v in {**VALID_SECRET, **change}.items() if v is not None}
    with pytest.raises(SecretFormatError, match=message) as raised:
        parse(document)
    assert "AWSCURRENT of arn:test" in str(raised.value)
    assert SECRET_PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(None, "no SecretString", id="binary-secret"),
        pytest.param('{"password": "' + SECRET_PASSWORD, "not valid JSON", id="truncated-json"),
        pytest.param('["a"]', "must be a JSON object", id="json-array"),
    ],
)
def test_secret_string_decoding(raw, message):
    with pytest.raises(SecretFormatError, match=message) as raised:
        parse_secret_string(raw, "src")
    assert SECRET_PASSWORD not in str(raised.value)
    assert raised.value.__cause__ is None  # the JSON decoder's message would quote the document


def test_unknown_keys_survive_a_password_change():
    document = {**VALID_SECRET, "team": "analytics", "nested": {"a": [1, 2]}}
    replaced = parse(document).replaced(password="new")
    assert replaced == {**document, "password": "new"}


def test_repr_and_str_never_show_the_password():
    creds = parse(VALID_SECRET)
    assert SECRET_PASSWORD not in repr(creds)
    assert SECRET_PASSWORD not in str(creds)
    assert SECRET_PASSWORD not in f"{creds!r} {[creds]}"


@pytest.mark.parametrize(
    ("admin_document", "location"),
    [
        pytest.param({"username": "m", "password": "x"}, (None, "verify-full"), id="rds-managed-names-no-server"),
        pytest.param({"username": "m", "password": "x", "host": "Admin.Example."}, (Endpoint("admin.example", 5432),
                     "verify-full"), id="console-format-without-ssl-is-verify-full"),
        pytest.param({"username": "m", "password": "x", "host": "a", "port": "6432", "ssl": "require"},
                     (Endpoint("a", 6432), "require"), id="own-port-and-ssl"),
    ],
)
def test_an_admin_secret_names_its_own_server_or_none(admin_document, location):
    assert DatabaseCredentials.admin_location(admin_document, "admin") == location


def test_the_admin_login_never_takes_the_user_secrets_server_or_tls():
    user = parse({**VALID_SECRET, "ssl": False, "host": "decoy.example", "port": 6543})
    admin = DatabaseCredentials.admin_from_secret({"username": "master", "password": "x"}, "admin",
                                                  endpoint=Endpoint("db.example", 5432), sslmode="verify-full",
                                                  dbname=user.dbname)
    assert (admin.host, admin.port, admin.dbname, admin.sslmode) == ("db.example", 5432, "appdb", "verify-full")


@pytest.mark.parametrize("host", ["db1,db2", "db1, db2", "db 1"])
def test_a_host_list_is_refused(host):
    with pytest.raises(SecretFormatError, match="one host name or address, not a list"):
        parse({**VALID_SECRET, "host": host})


# --- settings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"ROTATION_STRATEGY": "multi"}, "ROTATION_STRATEGY must be one of", id="strategy"),
        pytest.param({"PASSWORD_LENGTH": "long"}, "PASSWORD_LENGTH must be a whole number", id="length-text"),
        pytest.param({"PASSWORD_LENGTH": "0"}, "between 1 and 4096", id="length-zero"),
        pytest.param({"EXCLUDE_NUMBERS": "maybe"}, "EXCLUDE_NUMBERS must be true or false", id="bool"),
        pytest.param({"PGCONNECT_TIMEOUT": "1"}, "at least 2 seconds", id="timeout-too-short"),
        pytest.param({"PASSWORD_LENGTH": "3"}, "shorter than the 4 character types", id="length-below-types"),
        pytest.param({"PASSWORD_LENGTH": "12"}, "fewer than 96", id="too-little-entropy"),
        pytest.param({"PASSWORD_LENGTH": "28", "EXCLUDE_PUNCTUATION": "true", "EXCLUDE_UPPERCASE": "true",
                      "EXCLUDE_LOWERCASE": "true"}, "93 bits", id="28-digits-are-too-few"),
        pytest.param({"ADMIN_ENDPOINT": "a,b:5432"}, "ADMIN_ENDPOINT must be one host", id="admin-endpoint-list"),
        pytest.param({"ADMIN_ENDPOINT": "db:99999"}, "port 1-65535", id="admin-endpoint-port"),
        pytest.param({"ADMIN_SSLMODE": "prefer"}, "ADMIN_SSLMODE must be one of", id="admin-sslmode-prefer"),
        pytest.param({"EXCLUDE_CHARACTERS": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                      "EXCLUDE_PUNCTUATION": "true"}, "excludes every character", id="nothing-left"),
        pytest.param(
            {"EXCLUDE_NUMBERS": "true", "EXCLUDE_PUNCTUATION": "true", "EXCLUDE_UPPERCASE": "true",
             "EXCLUDE_LOWERCASE": "true"},
            "excludes every character",
            id="everything-excluded",
        ),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("raw", "endpoint"),
    [("db.example", Endpoint("db.example", 5432)), ("DB.example:6432", Endpoint("db.example", 6432)),
     ("[::1]:5433", Endpoint("::1", 5433))],
)
def test_admin_endpoint_pin(raw, endpoint):
    assert Settings.from_env({"ADMIN_ENDPOINT": raw}).admin_endpoint == endpoint


def test_a_long_digits_only_password_is_strong_enough():
    policy = Settings.from_env({"PASSWORD_LENGTH": "32", "EXCLUDE_PUNCTUATION": "true", "EXCLUDE_UPPERCASE": "true",
                                "EXCLUDE_LOWERCASE": "true"}).password_policy
    assert policy.generate().isdigit()


def test_default_settings_match_aws_functions():
    settings = Settings.from_env({})
    assert settings.strategy is StrategyName.AUTO
    assert settings.connect_timeout == 5
    assert settings.password_policy == PasswordPolicy(length=32, exclude_characters=":/@\"'\\")


# --- passwords ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("policy", "must_contain", "must_not_contain"),
    [
        pytest.param(PasswordPolicy(), [string.ascii_lowercase, string.ascii_uppercase, string.digits],
                     DEFAULT_EXCLUDE_CHARACTERS, id="default"),
        pytest.param(PasswordPolicy(exclude_punctuation=True, length=20), [string.digits], PUNCTUATION,
                     id="no-punctuation"),
        pytest.param(PasswordPolicy(exclude_numbers=True, exclude_uppercase=True, length=8),
                     [string.ascii_lowercase], string.digits + string.ascii_uppercase, id="lower-and-punct"),
        pytest.param(PasswordPolicy(exclude_characters="abcdefghijklmnopqrstuvwxyz", length=64), [string.digits],
                     string.ascii_lowercase, id="custom-exclusions"),
    ],
)
def test_generated_passwords_follow_the_policy(policy, must_contain, must_not_contain):
    for _ in range(200):
        password = policy.generate()
        assert len(password) == policy.length
        assert not set(password) & set(must_not_contain)
        for chars in must_contain:
            assert set(password) & set(chars), f"missing one of {chars!r}"
        assert not any(c.isspace() for c in password)


def test_every_included_type_appears_even_in_the_shortest_password():
    policy = PasswordPolicy(length=4)
    for _ in range(500):
        password = policy.generate()
        classes = [string.ascii_lowercase, string.ascii_uppercase, string.digits, PUNCTUATION]
        assert all(set(password) & set(c) for c in classes)


def test_passwords_do_not_repeat():
    policy = PasswordPolicy()
    assert len({policy.generate() for _ in range(1000)}) == 1000


def test_secret_document_round_trips_through_json():
    creds = parse(VALID_SECRET)
    assert json.loads(json.dumps(creds.replaced(username="x"))) == {**VALID_SECRET, "username": "x"}


@pytest.mark.parametrize(
    ("env", "bundled", "expected"),
    [
        pytest.param({"PGSSLROOTCERT": "/etc/ca.pem"}, True, "/etc/ca.pem", id="explicit-wins"),
        pytest.param({}, True, "BUNDLE", id="bundled-rds-ca"),
        pytest.param({}, False, None, id="system-trust-store"),
    ],
)
def test_ca_bundle_resolution(tmp_path, monkeypatch, env, bundled, expected):
    from rotation import config

    bundle = tmp_path / "certs" / "global-bundle.pem"
    if bundled:
        bundle.parent.mkdir()
        bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(config, "BUNDLED_CA", bundle)
    assert Settings.from_env(env).ssl_root_cert == (str(bundle) if expected == "BUNDLE" else expected)
