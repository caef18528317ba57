"""Where a password change goes when the secret's host may be a reader: rotation.protocol.writer_endpoint.

Pure decisions on in-memory ports (tests/fakes.py). The same behaviour on real servers, a writer and its hot
standby behind Aurora-style names, is in tests/test_aurora_topology.py.
"""

from __future__ import annotations

import pytest
from fakes import FakeDatabase, FakeDirectory, FakeStore

from rotation.config import Settings
from rotation.credentials import DatabaseCredentials
from rotation.events import RotationEvent, Step
from rotation.exceptions import WriterUnknown
from rotation.ports import AWSCURRENT
from rotation.protocol import REPLICA_WAIT_S, Rotation, writer_endpoint
from rotation.topology import ClusterTopology, Endpoint

ID, REGION = "c7abcdefghij", "eu-west-1"
WRITER = f"orders.cluster-{ID}.{REGION}.rds.amazonaws.com"
READER = f"orders.cluster-ro-{ID}.{REGION}.rds.amazonaws.com"
CUSTOM = f"reports.cluster-custom-{ID}.{REGION}.rds.amazonaws.com"
INSTANCE = f"orders-instance-2.{ID}.{REGION}.rds.amazonaws.com"
ELSEWHERE = f"billing-instance-1.{ID}.{REGION}.rds.amazonaws.com"
ORDERS = ClusterTopology(
    "orders",
    writer=Endpoint(WRITER, 5432),
    reader=Endpoint(READER, 5432),
    instances=(Endpoint(f"orders-instance-1.{ID}.{REGION}.rds.amazonaws.com", 5432), Endpoint(INSTANCE, 5432)),
    custom=(Endpoint(CUSTOM, 5432),),
)


def creds(host: str, port: int = 5432, **document: object) -> DatabaseCredentials:
    return DatabaseCredentials.from_secret(
        {"engine": "postgres", "host": host, "port": port, "username": "app", "password": "pw", **document}, "test")


@pytest.mark.parametrize(
    ("host", "port", "document", "expected", "api_calls"),
    [
        (WRITER, 5432, {}, Endpoint(WRITER, 5432), []),
        (READER, 5432, {}, Endpoint(WRITER, 5432), []),
        (READER, 6543, {}, Endpoint(WRITER, 6543), []),
        (READER.upper() + ".", 5432, {}, Endpoint(WRITER, 5432), []),
        (CUSTOM, 5432, {"dbClusterIdentifier": "orders"}, Endpoint(WRITER, 5432), ["cluster:orders"]),
        (INSTANCE, 5432, {"dbClusterIdentifier": "orders"}, Endpoint(WRITER, 5432), ["cluster:orders"]),
        (INSTANCE, 5432, {"dbInstanceIdentifier": "orders-instance-2"}, Endpoint(INSTANCE, 5432), []),
        ("db.internal.example", 5432, {"dbClusterIdentifier": "orders"}, Endpoint("db.internal.example", 5432), []),
        ("10.0.3.7", 5432, {}, Endpoint("10.0.3.7", 5432), []),
    ],
    ids=[
        "cluster-endpoint-is-the-writer", "reader-endpoint-names-its-writer", "reader-keeps-its-port",
        "names-compare-like-dns", "custom-endpoint-via-the-rds-api", "reader-instance-via-the-rds-api",
        "standalone-rds-instance-is-its-own-writer", "self-managed-host-is-the-server", "ip-address-is-the-server",
    ],
)
def test_the_writer_of_a_secrets_host(host, port, document, expected, api_calls) -> None:
    directory = FakeDirectory({"orders": ORDERS})
    assert writer_endpoint(creds(host, port, **document), lambda: directory, "secret s") == expected
    assert directory.calls == api_calls


@pytest.mark.parametrize(
    ("host", "document", "words"),
    [
        (CUSTOM, {}, "no dbClusterIdentifier"),
        (CUSTOM, {"dbClusterIdentifier": "nope"}, "RDS API could not name the writer"),
        (ELSEWHERE, {"dbClusterIdentifier": "orders"}, "not an endpoint of cluster orders"),
        (CUSTOM, {"dbClusterIdentifier": "   "}, "no dbClusterIdentifier"),
    ],
    ids=["custom-endpoint-without-a-cluster", "cluster-unknown-to-the-rds-api",
         "host-outside-the-named-cluster", "blank-cluster-identifier"],
)
def test_an_unknowable_writer_is_a_clear_error(host, document, words) -> None:
    directory = FakeDirectory({"orders": ORDERS})
    with pytest.raises(WriterUnknown, match=words) as caught:
        writer_endpoint(creds(host, **document), lambda: directory, "secret s")
    assert "nothing was changed" in str(caught.value)


USER_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:reader"


@pytest.mark.parametrize("host", [READER, CUSTOM], ids=["reader-endpoint", "custom-endpoint"])
def test_single_user_on_a_reader_changes_the_password_on_the_writer_and_tests_on_the_reader(host: str) -> None:
    secret = {"engine": "aurora-postgresql", "host": host, "port": 5432, "username": "app", "password": "old-pw",
              "dbname": "appdb", "dbClusterIdentifier": "orders"}
    store = FakeStore()
    store.create(USER_ARN, secret)
    db = FakeDatabase({"app": "old-pw"}, endpoint=Endpoint(WRITER, 5432))
    db.decoys[Endpoint(host, 5432)] = db.passwords  # the replica answers with the writer's roles
    rotation = Rotation(store, lambda: db, Settings(), directory=lambda: FakeDirectory({"orders": ORDERS}))
    store.stage_pending(USER_ARN, "t1")
    for step in (Step.CREATE, Step.SET):
        rotation.run(RotationEvent(step, USER_ARN, "t1"))
    assert db.logins == [(Endpoint(WRITER, 5432), "app")], "setSecret acted on the writer only"
    rotation.run(RotationEvent(Step.TEST, USER_ARN, "t1"))
    assert db.logins[-1] == (Endpoint(host, 5432), "app"), "testSecret proved the login on the secret's host"
    assert db.replica_waits == [REPLICA_WAIT_S]
    rotation.run(RotationEvent(Step.FINISH, USER_ARN, "t1"))
    current = store.value(USER_ARN, AWSCURRENT)
    assert current["host"] == host, "the secret's host is never rewritten"
    assert db.passwords["app"] == current["password"] != "old-pw"


def test_single_user_on_a_custom_endpoint_without_a_cluster_changes_nothing() -> None:
    secret = {"engine": "postgres", "host": CUSTOM, "port": 5432, "username": "app", "password": "old-pw"}
    store = FakeStore()
    store.create(USER_ARN, secret)
    db = FakeDatabase({"app": "old-pw"}, endpoint=Endpoint(CUSTOM, 5432))
    rotation = Rotation(store, lambda: db, Settings(), directory=lambda: FakeDirectory({"orders": ORDERS}))
    store.stage_pending(USER_ARN, "t1")
    rotation.run(RotationEvent(Step.CREATE, USER_ARN, "t1"))
    with pytest.raises(WriterUnknown):
        rotation.run(RotationEvent(Step.SET, USER_ARN, "t1"))
    assert db.logins == [] and db.passwords == {"app": "old-pw"}


def test_the_cluster_endpoint_is_tested_without_waiting() -> None:
    secret = {"engine": "postgres", "host": WRITER, "port": 5432, "username": "app", "password": "old-pw"}
    store = FakeStore()
    store.create(USER_ARN, secret)
    db = FakeDatabase({"app": "old-pw"}, endpoint=Endpoint(WRITER, 5432))
    rotation = Rotation(store, lambda: db, Settings())
    store.stage_pending(USER_ARN, "t1")
    for step in Step:
        rotation.run(RotationEvent(step, USER_ARN, "t1"))
    assert db.replica_waits == [0.0]
