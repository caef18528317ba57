"""Property-based tests: whatever event or secret arrives, the function rotates or says what is wrong.

Every input either rotates successfully or raises a :class:`~rotation.exceptions.RotationError` whose message
names the problem; never a bare KeyError/TypeError/ValueError, never a password in the message, and AWSCURRENT is
untouched when it fails. The parsers and the protocol run on in-memory ports (fast, many examples); a smaller run
goes end to end through ``rotation.handler.rotate``, the moto server and the real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from fakes import FakeDatabase, FakeStore
from helpers import can_login, closed_port
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from service import ALL_STEPS, invoke, resume

from rotation import handler
from rotation.config import Settings
from rotation.credentials import MAX_IDENTIFIER_BYTES, SSL_MODES, DatabaseCredentials, parse_secret_string
from rotation.events import RotationEvent, Step
from rotation.exceptions import (
    ConfigurationError,
    DatabaseError,
    InvalidEventError,
    RotationError,
    RotationStateError,
    SecretFormatError,
    SecretsManagerError,
)
from rotation.ports import AWSCURRENT, AWSPREVIOUS
from rotation.protocol import Rotation
from rotation.topology import Endpoint

# PROPERTY_EXAMPLES raises the count for a deeper run (e.g. 5000 before a release); CI keeps the default.
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "100"))
FAST = settings(max_examples=EXAMPLES, deadline=None)
END_TO_END = settings(max_examples=max(25, EXAMPLES // 4), deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])

USER_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf"
ADMIN_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:admin-AbCdEf"
MISSING_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:gone-AbCdEf"
ADMIN_PASSWORD = "admin-pw-⟦never-shown⟧"
ENDPOINT = Endpoint("db.example", 5432)
TOKEN = "t-0123456789abcdef0123456789abcdef"
BINARY = "<a SecretBinary instead of a SecretString>"
SOURCE = f"AWSCURRENT version of secret {USER_ARN}"
SECRET_KEYS = ("engine", "host", "port", "username", "password", "dbname", "ssl", "masterarn")
EVENT_KEYS = ("Step", "SecretId", "ClientRequestToken", "RotationToken")

# --- strategies -----------------------------------------------------------------------------------------

# Lone surrogates are valid in JSON ("\ud800") but not in UTF-8: a classic source of bare UnicodeEncodeErrors.
awkward_text = st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "é", "x" * (MAX_IDENTIFIER_BYTES + 1), "%s"])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | awkward_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
# Passwords carry a marker no other generated value has, so "the password is not in the message" means something.
passwords = st.text(max_size=16).map(lambda text: f"pw⟦{text}⟧") | st.just("pw⟦\ud800⟧")


DROPPED = object()


def mutations(good: st.SearchStrategy[dict[str, Any]], awkward: dict[str, st.SearchStrategy],
              reserved: tuple[str, ...], max_changes: int) -> st.SearchStrategy[dict[str, Any]]:
    """A good document with up to ``max_changes`` keys dropped or given an awkward value, and maybe an extra key."""
    changes = st.lists(st.sampled_from(sorted(awkward)), max_size=max_changes, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({key: st.just(DROPPED) | awkward[key] for key in keys}))
    extras = st.dictionaries(st.text(max_size=8).filter(lambda key: key not in reserved), json_values, max_size=1)
    return st.tuples(good, changes, extras).map(lambda parts: {
        key: value for key, value in {**parts[2], **parts[0], **parts[1]}.items() if value is not DROPPED})


def one_in_ten(rare: st.SearchStrategy, usual: st.SearchStrategy) -> st.SearchStrategy:
    # one_of weighs its branches by their own structure, not equally: draw the branch explicitly.
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else usual)


good_secrets = st.fixed_dictionaries(
    {
        "engine": st.sampled_from(["postgres", "aurora-postgresql"]),
        "host": st.sampled_from(["db.example", "127.0.0.1"]),
        "username": st.sampled_from(["app", "Mixed Case", "rôle"]),
        "password": passwords,
    },
    optional={
        "port": st.integers(1, 65535) | st.just("5432"),
        "dbname": st.just("appdb"),
        "ssl": st.sampled_from([True, False, "true", *sorted(SSL_MODES)]),
        "masterarn": st.just(ADMIN_ARN),
    },
)
awkward_secret_values = {
    "engine": st.sampled_from(["mysql", "Postgres", "", ["postgres"]]) | json_values,
    "host": st.sampled_from(["", "\ud800"]) | json_values,
    "port": st.sampled_from([0, 65536, -1, " 5432 ", "five", "²", "٥٤٣٢", "5432.0", 5432.0, True]) | json_values,
    "username": st.sampled_from(["", "a\x00b", "x" * 64, "\ud800", "app_clone"]) | json_values,
    "password": passwords | st.just("") | json_values,
    "dbname": st.sampled_from(["", "\ud800"]) | json_values,
    "ssl": st.sampled_from(["FALSE", "prefer", "allow", "", 1]) | json_values,
    "masterarn": st.sampled_from([MISSING_ARN, ""]) | json_values,
}
secret_documents = mutations(good_secrets, awkward_secret_values, SECRET_KEYS, max_changes=2)
secret_strings = one_in_ten(
    st.one_of(json_values.map(json.dumps), st.text(max_size=20),
              st.sampled_from(["{", '{"engine": "postgres",', "NaN", ""]), st.none()),
    secret_documents.map(json.dumps),
)

steps = st.sampled_from([step.value for step in Step])


def events_for(arn: str, token: str) -> st.SearchStrategy[Any]:
    """Invocation events: a good one for ``arn``/``token`` with up to two keys dropped or replaced by a
    mistyped, unknown or empty value, sometimes an extra key, sometimes not an object at all.
    """
    awkward = {
        "Step": st.one_of(steps, st.sampled_from(["rotateSecret", "CreateSecret", " setSecret", ""]), json_values),
        "SecretId": st.one_of(st.sampled_from([MISSING_ARN, ""]), json_values),
        "ClientRequestToken": st.one_of(st.sampled_from(["", "not-a-version"]), json_values),
        "RotationToken": st.one_of(st.just("rt-0123456789abcdef0123456789abcdef"), json_values),
    }
    good = st.fixed_dictionaries({"Step": steps, "SecretId": st.just(arn), "ClientRequestToken": st.just(token)})
    # An extra key is never "Preflight": that event is the doctor's, with a report for an answer.
    return one_in_ten(json_scalars | st.lists(json_values, max_size=3),
                      mutations(good, awkward, (*EVENT_KEYS, "Preflight"), max_changes=2))


# --- what a good error looks like -----------------------------------------------------------------------

#: The words that say what is wrong, by error type: a key, the JSON shape, the token, the call that failed.
PROBLEM_WORDS: dict[type[RotationError], tuple[str, ...]] = {
    InvalidEventError: (*EVENT_KEYS, "JSON object"),
    SecretFormatError: (*SECRET_KEYS, "JSON", "SecretString"),
    RotationStateError: ("token", "version", "rotation is not enabled", "AWSPENDING", "points at"),
    ConfigurationError: ("ADMIN_ENDPOINT", "region"),
    SecretsManagerError: ("Secret", "secret", "version"),
    DatabaseError: ("user", "login", "role", "TLS", "cannot reach"),
}


def assert_names_the_problem(error: RotationError, *secrets: object) -> None:
    message = str(error)
    words = next(words for kind, words in PROBLEM_WORDS.items() if isinstance(error, kind))
    assert any(word in message for word in words), f"{type(error).__name__} does not name the problem: {message}"
    for secret in secrets:
        # Only real passwords: ours carry the marker, the servers' are long and random. A drawn "password" of 0
        # or "a" would be found in any message.
        if isinstance(secret, str) and ("⟦" in secret or len(secret) >= 16):
            assert secret not in message, f"a password in the message of {type(error).__name__}"


def password_of(raw: str | None) -> object:
    try:
        document = json.loads(raw) if raw else None
    except ValueError:
        return None
    return document.get("password") if isinstance(document, dict) else None


# --- parsers --------------------------------------------------------------------------------------------

@FAST
@given(raw=secret_strings)
def test_secret_parsing_accepts_or_names_the_problem(raw):
    try:
        creds = DatabaseCredentials.from_secret(parse_secret_string(raw, SOURCE), SOURCE)
    except SecretFormatError as error:
        assert SOURCE in str(error), "the message names the secret"
        assert_names_the_problem(error, password_of(raw))
    else:
        assert 1 <= creds.port <= 65535
        assert creds.sslmode in SSL_MODES
        assert len(creds.username.encode()) <= MAX_IDENTIFIER_BYTES
        assert creds.password not in repr(creds)


@FAST
@given(document=secret_documents)
def test_admin_secret_parsing_accepts_or_names_the_problem(document):
    try:
        endpoint, sslmode = DatabaseCredentials.admin_location(document, SOURCE)
        admin = DatabaseCredentials.admin_from_secret(document, SOURCE, endpoint=endpoint or ENDPOINT,
                                                      sslmode=sslmode, dbname="appdb")
    except SecretFormatError as error:
        assert_names_the_problem(error, document.get("password"))
    else:
        assert admin.dbname == "appdb", "the admin logs into the user's database"
        assert sslmode in SSL_MODES
        if "ssl" not in document:
            assert sslmode == "verify-full", "an admin secret without 'ssl' is verify-full, whatever the user says"


@FAST
@given(event=events_for(USER_ARN, TOKEN))
def test_event_parsing_accepts_or_names_the_problem(event):
    try:
        parsed = RotationEvent.parse(event)
    except InvalidEventError as error:
        assert_names_the_problem(error)
    else:
        assert parsed.step in Step
        assert parsed.secret_id.strip() and parsed.token.strip()


# --- the protocol on in-memory ports --------------------------------------------------------------------

class Store(FakeStore):
    """The fake store, answering for an unknown secret the way the adapter does (ResourceNotFound)."""

    def describe(self, secret_id: str):
        self._exists(secret_id)
        return super().describe(secret_id)

    def get_secret_string(self, secret_id: str, stage: str, version_id: str | None = None) -> str:
        self._exists(secret_id)
        return super().get_secret_string(secret_id, stage, version_id)

    def _exists(self, secret_id: str) -> None:
        if secret_id not in self.stages:
            raise SecretsManagerError(f"DescribeSecret on secret {secret_id} failed: ResourceNotFoundException")


def staged(raw: str | None) -> tuple[Store, FakeDatabase, Rotation]:
    """A secret holding ``raw`` as AWSCURRENT, a database where its user (if it has one) logs in, and a rotation
    staged under TOKEN."""
    store = Store()
    store.create(USER_ARN, {})
    store.values[USER_ARN]["v0"] = raw
    store.stage_pending(USER_ARN, TOKEN)
    roles = {"master": ADMIN_PASSWORD}
    try:
        document = json.loads(raw) if raw else {}
    except ValueError:
        document = {}
    endpoint = Endpoint("db.example", 5432)
    if isinstance(document, dict):
        if isinstance(document.get("username"), str):
            roles[document["username"]] = document.get("password")
        try:  # the server the secret names, when it names one: the admin secret names the same (console format)
            endpoint = DatabaseCredentials.from_secret(document, SOURCE).endpoint
        except SecretFormatError:
            pass
    store.create(ADMIN_ARN, {"username": "master", "password": ADMIN_PASSWORD, "host": endpoint.host,
                             "port": endpoint.port})
    db = FakeDatabase(roles, endpoint=endpoint)
    return store, db, Rotation(store, lambda: db, Settings())


@FAST
@given(raw=secret_strings)
def test_any_secret_rotates_or_fails_cleanly_on_in_memory_ports(raw):
    assume(raw is not None)  # the fake store reads None as "no value yet"; binary secrets run end to end below
    store, db, rotation = staged(raw)
    before = dict(db.passwords)
    try:
        for step in Step:
            rotation.run(RotationEvent(step, USER_ARN, TOKEN))
    except RotationError as error:
        event(f"failed: {type(error).__name__}")
        assert_names_the_problem(error, password_of(raw), ADMIN_PASSWORD)
        assert store.values[USER_ARN]["v0"] == raw and AWSCURRENT in store.stages[USER_ARN]["v0"], \
            "AWSCURRENT untouched"
        assert db.passwords == before or isinstance(error, DatabaseError), "no role changed before the failure"
    else:
        event("rotated")
        new = store.value(USER_ARN, AWSCURRENT)
        assert db.passwords[new["username"]] == new["password"], "the new AWSCURRENT logs in"
        assert store.values[USER_ARN]["v0"] == raw and AWSPREVIOUS in store.stages[USER_ARN]["v0"]


@FAST
@given(event=events_for(USER_ARN, TOKEN))
def test_any_event_runs_its_step_or_fails_cleanly_on_in_memory_ports(event):
    valid = {"engine": "postgres", "host": "db", "username": "app", "password": "pw⟦app⟧", "dbname": "appdb"}
    store, db, rotation = staged(json.dumps(valid))
    try:
        rotation.run(RotationEvent.parse(event))
    except RotationError as error:
        assert_names_the_problem(error, "pw⟦app⟧", ADMIN_PASSWORD)
    assert store.value(USER_ARN, AWSCURRENT) == valid, "one step on its own never moves AWSCURRENT"
    assert db.passwords["app"] == "pw⟦app⟧", "a step before its turn changes no password"
    for step in Step:  # the service's rotation with the real token still completes afterwards
        rotation.run(RotationEvent(step, USER_ARN, TOKEN))
    new = store.value(USER_ARN, AWSCURRENT)
    assert db.passwords["app"] == new["password"]


# --- end to end: the handler, the moto server, the real server ------------------------------------------

@pytest.fixture
def awkward_secret(sm, make_app_user, cluster, store_secret):
    """Factory: a fresh role and its valid secret, plus a stored variant of it with the drawn changes."""
    master_arn = store_secret(cluster, name=f"rds!cluster-{uuid.uuid4().hex[:8]}")

    def factory(changes: dict[str, Any], drop: set[str], raw: str | None) -> tuple[str, dict[str, Any], str]:
        valid = make_app_user()
        if raw is None:
            variant = {k: v for k, v in valid.items() if k not in drop}
            variant.update({k: (master_arn if v == ADMIN_ARN else v) for k, v in changes.items()})
            raw = json.dumps(variant)
        value = {"SecretBinary": raw.encode()} if raw == BINARY else {"SecretString": raw}
        arn = sm.client().create_secret(Name=f"prop/{uuid.uuid4().hex}", **value)["ARN"]
        return arn, valid, raw

    return factory


def end_to_end_changes(port: int, refused_port: int) -> st.SearchStrategy[dict[str, Any]]:
    """Up to two changed keys, valid or not, that stay on this machine: no DNS lookups, only known ports."""
    candidates = {
        "engine": st.sampled_from(["aurora-postgresql", "postgres", "mysql", "", 3]),
        "host": st.sampled_from(["localhost", "127.0.0.1", "", 5]),
        "port": st.sampled_from([str(port), f" {port} ", refused_port, 0, 70000, "five", 5432.5, True]),
        "username": st.sampled_from(["nobody_here", "", 5, "x" * 64]),
        "password": st.sampled_from(["pw⟦wrong⟧", "", 5]),
        "dbname": st.sampled_from(["postgres", "no_such_db", "", 5]),
        "ssl": st.sampled_from([False, "false", "disable", True, "require", "verify-ca", "prefer", "", 1]),
        "masterarn": st.sampled_from([ADMIN_ARN, ADMIN_ARN, MISSING_ARN, "", 5]),
        "team": json_values,
    }
    return st.lists(st.sampled_from(sorted(candidates)), max_size=2, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({key: candidates[key] for key in keys}))


@END_TO_END
@given(data=st.data())
def test_any_secret_rotates_or_fails_cleanly_end_to_end(sm, pg, cluster, awkward_secret, data):
    with closed_port() as refused:
        changes = data.draw(end_to_end_changes(pg.port, refused), label="changes")
        drop = data.draw(st.sets(st.sampled_from(["engine", "host", "port", "username", "password", "dbname",
                                                  "ssl"]), max_size=1), label="drop")
        not_an_object = st.sampled_from(["[]", '"text"', "5", "null", "{", "{}", BINARY])
        raw = data.draw(st.one_of(st.none(), st.none(), st.none(), not_an_object), label="raw")
        arn, valid, stored = awkward_secret(changes, drop, raw)
        token = sm.stage_pending(arn)
        try:
            for step in ALL_STEPS:
                invoke(step, arn, token)
        except RotationError as error:
            event(f"failed: {type(error).__name__}")
            assert_names_the_problem(error, valid["password"], cluster["password"], password_of(stored))
            current = sm.client().get_secret_value(SecretId=arn, VersionStage=AWSCURRENT)
            assert current.get("SecretString", BINARY) == stored, "AWSCURRENT untouched"
            assert can_login(valid), "the database still accepts the original password"
        else:
            event("rotated")
            new = sm.value(arn, AWSCURRENT)
            assert can_login(new), "the new AWSCURRENT logs in"
            assert new["password"] != valid["password"]


@END_TO_END
@given(data=st.data())
def test_any_event_runs_its_step_or_fails_cleanly_end_to_end(sm, make_app_user, store_secret, data):
    secret = make_app_user()
    arn = store_secret(secret)
    token = sm.stage_pending(arn)
    request = data.draw(events_for(arn, token), label="event")
    try:
        handler.rotate(request, None)
    except RotationError as error:
        event(f"failed: {type(error).__name__}")
        assert_names_the_problem(error, secret["password"])
    else:
        event(f"ran {request['Step']}")
    assert sm.value(arn, AWSCURRENT) == secret, "one step on its own never moves AWSCURRENT"
    assert can_login(secret)
    resume(arn, token)  # the service's rotation with the real token still completes afterwards
    assert can_login(sm.value(arn, AWSCURRENT))
    assert sm.value(arn, AWSPREVIOUS) == secret


# --- finishSecret invoked alone (console Test button, `rotation invoke`) -------------------------------

def test_finish_secret_alone_keeps_awscurrent_readable(sm, make_app_user, store_secret):
    secret = make_app_user()
    arn = store_secret(secret)
    token = sm.stage_pending(arn)
    with pytest.raises(RotationStateError, match="holds no value yet"):
        invoke(Step.FINISH, arn, token)
    assert sm.value(arn, AWSCURRENT) == secret
    resume(arn, token)
