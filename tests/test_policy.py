"""rotation.policy as a table: where the admin acts, and which user endpoints it accepts. Pure logic on an
in-memory RDS directory; the same rules run end to end in test_security.py."""

from __future__ import annotations

import pytest
from fakes import FakeDirectory

from rotation.config import Settings
from rotation.credentials import DatabaseCredentials
from rotation.exceptions import AdminEndpointUnknown, ForeignEndpoint
from rotation.policy import (
    CLUSTER_TAG,
    INSTANCE_TAG,
    AdminServer,
    locate_admin_server,
    pending_mismatch,
    require_same_cluster,
)
from rotation.topology import AuroraName, ClusterTopology, Endpoint

WRITER = "demo.cluster-abc123.us-east-1.rds.amazonaws.com"
READER = "demo.cluster-ro-abc123.us-east-1.rds.amazonaws.com"
INSTANCE = "demo-1.abc123.us-east-1.rds.amazonaws.com"
CUSTOM = "analytics.cluster-custom-abc123.us-east-1.rds.amazonaws.com"
OTHER_CLUSTER = "other.cluster-abc123.us-east-1.rds.amazonaws.com"
TOPOLOGY = ClusterTopology("demo", Endpoint(WRITER, 5432), Endpoint(READER, 5432), (Endpoint(INSTANCE, 5432),),
                           (Endpoint(CUSTOM, 5432),))
CLUSTER_ARN = "arn:aws:rds:us-east-1:123456789012:cluster:demo"
SOLO, SOLO_ARN = "solo.abc123.us-east-1.rds.amazonaws.com", "arn:aws:rds:us-east-1:123456789012:db:solo"


def directory() -> FakeDirectory:
    return FakeDirectory({"demo": TOPOLOGY, CLUSTER_ARN: TOPOLOGY}, {SOLO_ARN: Endpoint(SOLO, 5432)})


@pytest.mark.parametrize(
    ("admin_document", "tags", "settings", "expected"),
    [
        pytest.param({"host": WRITER, "ssl": "require"}, {}, Settings(), (Endpoint(WRITER, 5432), "require"),
                     id="the-admin-secrets-own-host-and-tls"),
        pytest.param({"host": WRITER}, {}, Settings(admin_sslmode="disable"), (Endpoint(WRITER, 5432), "verify-full"),
                     id="absent-ssl-is-verify-full-whatever-the-settings"),
        pytest.param({}, {}, Settings(admin_endpoint=Endpoint("pinned", 6432), admin_sslmode="verify-ca"),
                     (Endpoint("pinned", 6432), "verify-ca"), id="the-function-pins-it"),
        pytest.param({}, {CLUSTER_TAG: CLUSTER_ARN}, Settings(), (Endpoint(WRITER, 5432), "verify-full"),
                     id="rds-managed-cluster-secret-via-the-rds-api"),
        pytest.param({}, {INSTANCE_TAG: SOLO_ARN}, Settings(), (Endpoint(SOLO, 5432), "verify-full"),
                     id="rds-managed-instance-secret-via-the-rds-api"),
        pytest.param({"dbClusterIdentifier": "demo"}, {}, Settings(), (Endpoint(WRITER, 5432), "verify-full"),
                     id="an-admin-secret-naming-its-cluster"),
    ],
)
def test_the_admins_server_comes_from_the_admin_side(admin_document, tags, settings, expected):
    document = {"username": "master", "password": "pw", **admin_document}
    server = locate_admin_server(document, "admin", settings=settings, tags=lambda: tags, directory=directory)
    assert (server.endpoint, server.sslmode) == expected


def test_no_server_named_anywhere_names_the_fixes():
    with pytest.raises(AdminEndpointUnknown, match="ADMIN_ENDPOINT"):
        locate_admin_server({"username": "m", "password": "p"}, "admin", settings=Settings(), tags=dict,
                            directory=directory)


ADMIN_AT_WRITER = AdminServer(Endpoint(WRITER, 5432), "verify-full", "test", cluster="demo")


@pytest.mark.parametrize(
    ("admin", "user_endpoint", "accepted"),
    [
        pytest.param(ADMIN_AT_WRITER, Endpoint(WRITER, 5432), True, id="same-endpoint"),
        pytest.param(ADMIN_AT_WRITER, Endpoint(WRITER.upper() + ".", 5432), True, id="dns-case-and-dot"),
        pytest.param(ADMIN_AT_WRITER, Endpoint(READER, 5432), True, id="reader-of-the-cluster"),
        pytest.param(ADMIN_AT_WRITER, Endpoint(INSTANCE, 5432), True, id="instance-listed-by-rds"),
        pytest.param(ADMIN_AT_WRITER, Endpoint(CUSTOM, 5432), True, id="custom-endpoint-listed-by-rds"),
        pytest.param(ADMIN_AT_WRITER, Endpoint(WRITER, 6543), False, id="same-name-other-port"),
        pytest.param(ADMIN_AT_WRITER, Endpoint(OTHER_CLUSTER, 5432), False, id="another-cluster"),
        pytest.param(ADMIN_AT_WRITER, Endpoint("demo-9.abc123.us-east-1.rds.amazonaws.com", 5432), False,
                     id="an-instance-of-the-same-account-not-in-the-cluster"),
        pytest.param(ADMIN_AT_WRITER, Endpoint("127.0.0.1", 5432), False, id="a-decoy-address"),
        pytest.param(AdminServer(Endpoint("10.1.2.3", 5432), "verify-full", "test"), Endpoint("10.1.2.4", 5432),
                     False, id="standalone-admin-names-no-cluster"),
    ],
)
def test_which_user_endpoints_the_admin_accepts(admin, user_endpoint, accepted):
    if accepted:
        require_same_cluster(user_endpoint, admin, directory, "secret x")
    else:
        with pytest.raises(ForeignEndpoint):
            require_same_cluster(user_endpoint, admin, directory, "secret x")


def test_a_reader_name_needs_no_rds_api_call():
    rds = FakeDirectory()
    require_same_cluster(Endpoint(READER, 5432), AdminServer(Endpoint(WRITER, 5432), "verify-full", "test"),
                         lambda: rds, "secret x")
    assert rds.calls == []


@pytest.mark.parametrize(
    ("host", "writer"),
    [(READER, WRITER), (WRITER, WRITER), (CUSTOM, None), ("db.example.com", "-")],
)
def test_aurora_names(host, writer):
    parsed = AuroraName.parse(host)
    if writer == "-":
        assert parsed is None
    else:
        assert parsed is not None and parsed.writer_host() == writer


CURRENT = DatabaseCredentials("db", 5432, "app", "pw", "appdb", "verify-full", "arn:admin")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param({}, None, id="what-createSecret-writes"),
        pytest.param({"host": "elsewhere"}, "points at elsewhere:5432/appdb", id="host"),
        pytest.param({"port": 6543}, "points at db:6543/appdb", id="port"),
        pytest.param({"dbname": "postgres"}, "/postgres", id="database"),
        pytest.param({"sslmode": "disable"}, "sslmode=disable", id="tls"),
        pytest.param({"masterarn": "arn:other"}, "another admin secret", id="admin-secret"),
        pytest.param({"username": "someone"}, "it is for user 'someone'", id="user"),
    ],
)
def test_a_pending_version_must_be_what_create_secret_writes(change, problem):
    fields = {"host": "db", "port": 5432, "username": "app", "password": "new", "dbname": "appdb",
              "sslmode": "verify-full", "masterarn": "arn:admin", **change}
    pending = DatabaseCredentials(**fields)
    found = pending_mismatch(CURRENT, pending, {"app"})
    assert (found is None) if problem is None else (problem in found)
