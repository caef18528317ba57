"""The composition root: the one place that turns settings into adapters.

The Lambda handlers, the bootstrap, the preflight and the command-line tools (rotation_tools) all get their
Secrets Manager store, PostgreSQL database and RDS directory here, configured the same way, so a change of
timeouts, retries or TLS defaults is made once. Tests inject clients through the same functions.

Adapters are imported on first use: psycopg only when a step needs the database (createSecret and finishSecret
never do), the RDS API client only when an admin secret names no host. Stores are kept per client for the
container's life: each remembers the secret versions it has seen with a value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.config import Config

from rotation.config import Settings, time_budget_ms
from rotation.protocol import Rotation
from rotation.secrets_store import ROTATION_CLIENT_CONFIG, SecretsManagerStore, secrets_manager_client

if TYPE_CHECKING:
    from rotation.bootstrap.service import Bootstrapper
    from rotation.database import PostgresDatabase
    from rotation.rds_directory import RdsClusterDirectory

_stores: dict[tuple[int, type[SecretsManagerStore]], SecretsManagerStore] = {}
_lock = threading.Lock()


def store(settings: Settings, config: Config = ROTATION_CLIENT_CONFIG,
          kind: type[SecretsManagerStore] = SecretsManagerStore) -> Any:
    """The container's Secrets Manager store (of ``kind``: the bootstrap's and repair's extend it) for the
    client these settings resolve to; one per client, so its memory of versions with a value lasts."""
    client = secrets_manager_client(settings.secrets_manager_endpoint, config)
    key = (id(client), kind)
    with _lock:
        found = _stores.get(key)
        if found is None or found.client is not client:
            found = _stores[key] = kind(client)
        return found


def database(settings: Settings, *, connect_timeout: int | None = None, retries: bool = True,
             remaining_ms: Callable[[], int] | None = None) -> PostgresDatabase:
    """PostgreSQL with the settings' timeout and CA bundle.

    With ``retries``, transient failures (a failover, a connection storm) are retried in the time the function's
    timeout leaves over beyond a step's worst case (``remaining_ms``, Lambda's clock; without it the default
    budget), so the function reports "failover in progress" itself rather than being killed mid-step. Without,
    one attempt: diagnosis reports what it sees.
    """
    from rotation.database import PostgresDatabase
    from rotation.transient import budget_within

    timeout = connect_timeout or settings.connect_timeout
    retry_budget_s = 0.0
    if retries:
        retry_budget_s = budget_within(remaining_ms() if remaining_ms else None, time_budget_ms(timeout))
    return PostgresDatabase(connect_timeout=timeout, ssl_root_cert=settings.ssl_root_cert,
                            retry_budget_s=retry_budget_s)


def directory() -> RdsClusterDirectory:
    """The RDS API, for admin secrets that name no host and for endpoints that do not name their cluster."""
    from rotation.rds_directory import default_directory

    return default_directory()


def rotation(settings: Settings, *, annotate: Callable[..., None] = lambda **_: None,
             remaining_ms: Callable[[], int] | None = None) -> Rotation:
    """The rotation protocol on the real adapters, as the Lambda handler runs it."""
    return Rotation(
        store=store(settings),
        database=lambda: database(settings, remaining_ms=remaining_ms),
        settings=settings,
        annotate=annotate,
        directory=directory,
    )


def bootstrapper(settings: Settings | None = None) -> Bootstrapper:
    """The bootstrap on the real adapters, configured as the rotation function's."""
    from rotation.bootstrap.secrets import BootstrapSecrets
    from rotation.bootstrap.service import Bootstrapper

    settings = settings or Settings.from_env()
    return Bootstrapper(store(settings, kind=BootstrapSecrets), database(settings), settings, directory)
