"""Lambda entry points. Thin on purpose: parse the event, build the adapters, dispatch, log.

Imports are kept light: psycopg is only imported when a step needs the database (createSecret and
finishSecret never do), the preflight and the bootstrap only on their own paths, and AWS clients come from
botocore without boto3 (rotation.aws). What remains is what every step needs; docs/performance.md has the
figures.
"""

from __future__ import annotations

from typing import Any

from rotation import IMPORT_STARTED, wiring
from rotation.config import Settings, check_time_budget
from rotation.events import PreflightEvent, RotationEvent, Step
from rotation.observability import annotate, cold_start, logged_failure, logger, start_invocation, step_metrics


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
        outcome = wiring.rotation(settings, annotate=annotate, remaining_ms=remaining_ms).run(request)
        logger.info(outcome.action, extra={"changed": outcome.changed})
        return {"step": outcome.step.value, "action": outcome.action, "changed": outcome.changed}


def bootstrap(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Create the read-only role, its login user and its secret (direct or CloudFormation custom resource)."""
    start_invocation(context)
    from rotation.bootstrap import handle  # keeps the rotation function's cold start lean

    return handle(event, context, wiring.bootstrapper)


cold_start.initialized(IMPORT_STARTED)
