"""Lambda entry points. Thin on purpose: parse the event, build the adapters, dispatch, log.

Imports are kept light: psycopg is only imported when a step needs the database (createSecret and
finishSecret never do), the preflight and the bootstrap only on their own paths, and AWS clients come from
botocore without boto3 (rotation.aws). What remains is what every step needs; docs/performance.md has the
figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rotation import IMPORT_STARTED
from rotation.config import Settings, check_time_budget, time_budget_ms
from rotation.events import PreflightEvent, RotationEvent, Step
from rotation.observability import annotate, cold_start, logged_failure, logger, start_invocation, step_metrics
from rotation.protocol import Rotation
from rotation.secrets_store import SecretsManagerStore, secrets_manager_client


def build_database(settings: Settings, remaining_ms: Callable[[], int] | None = None):
    # Deferred: psycopg costs ~70-100 ms to import and createSecret/finishSecret never need it.
    from rotation.database import PostgresDatabase
    from rotation.transient import budget_within

    # Transient failures (a failover, a connection storm) are retried only in the time the function's timeout
    # leaves over beyond a step's worst case, so the function reports "failover in progress" itself rather than
    # being killed mid-step (10 s at most; about 7.8 s of a 30 s timeout with PGCONNECT_TIMEOUT 5).
    retry_budget_s = budget_within(remaining_ms() if remaining_ms else None, time_budget_ms(settings.connect_timeout))
    return PostgresDatabase(connect_timeout=settings.connect_timeout, ssl_root_cert=settings.ssl_root_cert,
                            retry_budget_s=retry_budget_s)


def build_directory():
    # Deferred: only an admin secret without a host (RDS-managed) or an endpoint outside the admin's needs it.
    from rotation.rds_directory import default_directory

    return default_directory()


def rotate(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Secrets Manager's rotation entry point; also answers ``{"Preflight": true, "SecretId": ...}``."""
    start_invocation(context)
    if PreflightEvent.matches(event):
        from rotation.preflight import run_preflight  # only the diagnostic path pays for it

        return run_preflight(PreflightEvent.parse(event))
    with step_metrics("RotationStep", Step.metric_dimension(event)), logged_failure():
        request = RotationEvent.parse(event)
        annotate(step=request.step.value, secret_id=request.secret_id, token=request.token)
        settings = Settings.from_env()
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        if remaining_ms is not None:
            check_time_budget(settings, remaining_ms())
        rotation = Rotation(
            store=SecretsManagerStore(secrets_manager_client(settings.secrets_manager_endpoint)),
            database=lambda: build_database(settings, remaining_ms),
            settings=settings,
            annotate=annotate,
            directory=build_directory,
        )
        outcome = rotation.run(request)
        logger.info(outcome.action, extra={"changed": outcome.changed})
        return {"step": outcome.step.value, "action": outcome.action, "changed": outcome.changed}


def bootstrap(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Create the read-only role, its login user and its secret (direct or CloudFormation custom resource)."""
    start_invocation(context)
    from rotation.bootstrap import handle  # keeps the rotation function's cold start lean

    return handle(event, context)


cold_start.initialized(IMPORT_STARTED)
