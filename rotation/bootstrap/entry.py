"""The bootstrap function's entry point: a direct invocation or a CloudFormation custom resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rotation import cfn
from rotation.bootstrap.request import BootstrapRequest
from rotation.bootstrap.service import Bootstrapper
from rotation.exceptions import InvalidEventError
from rotation.observability import annotate, logged_failure, step_metrics

Factory = Callable[[], Bootstrapper]


def _custom_resource(request: cfn.CustomResourceRequest, factory: Factory) -> cfn.Outcome:
    annotate(request_type=request.request_type, logical_resource_id=request.logical_resource_id)
    with step_metrics("Bootstrap", request.request_type), logged_failure():
        if request.request_type == cfn.DELETE:
            return _delete(request, factory)
        bootstrap = BootstrapRequest.parse(request.properties, "ResourceProperties")
        result = factory().apply(bootstrap)
        reason = "; ".join(result.changes) or "everything already in place"
        return cfn.Outcome(result.secret_name, reason, result.response())


def _delete(request: cfn.CustomResourceRequest, factory: Factory) -> cfn.Outcome:
    physical_id = request.physical_resource_id or ""
    if physical_id.startswith(cfn.NOT_CREATED_PREFIX):
        return cfn.Outcome(physical_id, "the Create had failed: nothing to remove")
    try:
        bootstrap = BootstrapRequest.parse(request.properties, "ResourceProperties")
    except InvalidEventError:
        # Properties that do not parse could never have created anything; failing would block the stack.
        return cfn.Outcome(physical_id, "invalid properties: nothing was created, nothing to remove")
    if not bootstrap.remove_on_delete:
        return cfn.Outcome(physical_id, "kept the roles and the secret (RemoveOnDelete is not true)")
    changes = factory().remove(bootstrap, physical_id)
    return cfn.Outcome(physical_id, "; ".join(changes) or "nothing left to remove")


def handle(event: Any, context: Any, factory: Factory) -> dict[str, Any]:
    """Direct invocation (returns SecretArn, Username, GroupRole) or CloudFormation custom resource.

    ``factory`` builds the Bootstrapper on its adapters (rotation.wiring.bootstrapper in Lambda): only after the
    event has parsed, so a malformed event costs no client or connection.
    """
    if cfn.CustomResourceRequest.matches(event):
        return cfn.serve(event, context, lambda request: _custom_resource(request, factory))
    with step_metrics("Bootstrap", "Direct"), logged_failure():
        request = BootstrapRequest.parse(event)
        return factory().apply(request).response()
