"""Every sample event in events/ parses with the model of the handler it is meant for.

The files are what users feed to `sam local invoke -e` and `rotation invoke`; a file that drifted from the
handler's event model would fail there with an InvalidEventError, so it fails here first. A new file needs a
row in EVENT_MODELS: an unchecked sample is a sample nobody knows works.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rotation import cfn
from rotation.bootstrap import BootstrapRequest
from rotation.events import PreflightEvent, RotationEvent, Step

EVENTS = Path(__file__).resolve().parent.parent / "events"


def rotation_step(step: Step) -> Callable[[dict[str, Any]], None]:
    def check(event: dict[str, Any]) -> None:
        parsed = RotationEvent.parse(event)
        assert parsed.step is step
        assert not PreflightEvent.matches(event), "the rotate handler would take it for a preflight"

    return check


def preflight(event: dict[str, Any]) -> None:
    assert PreflightEvent.matches(event), "the rotate handler dispatches preflights on {'Preflight': true}"
    assert PreflightEvent.parse(event).secret_id == event["SecretId"]


def bootstrap_direct(event: dict[str, Any]) -> None:
    BootstrapRequest.parse(event)
    assert not cfn.CustomResourceRequest.matches(event), "the handler would answer it as a custom resource"


def bootstrap_cloudformation(event: dict[str, Any]) -> None:
    assert cfn.CustomResourceRequest.matches(event), "the handler would take it for a direct invocation"
    request = cfn.CustomResourceRequest.parse(event)
    assert request.request_type == "Create"
    BootstrapRequest.parse(request.properties)


EVENT_MODELS: dict[str, Callable[[dict[str, Any]], None]] = {
    "createSecret.json": rotation_step(Step.CREATE),
    "setSecret.json": rotation_step(Step.SET),
    "testSecret.json": rotation_step(Step.TEST),
    "finishSecret.json": rotation_step(Step.FINISH),
    "preflight.json": preflight,
    "bootstrap.json": bootstrap_direct,
    "bootstrap-cfn-create.json": bootstrap_cloudformation,
}


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def test_every_event_file_has_a_model():
    assert sorted(path.name for path in EVENTS.glob("*.json")) == sorted(EVENT_MODELS)


@pytest.mark.parametrize("name", list(EVENT_MODELS))
def test_event_file_parses_with_its_handler_model(name):
    EVENT_MODELS[name](load(name))


def test_the_four_step_files_are_one_rotation():
    """`sam local invoke` with each file in turn plays one rotation: same secret, same token."""
    parsed = [RotationEvent.parse(load(f"{step.value}.json")) for step in Step]

    assert len({(event.secret_id, event.token) for event in parsed}) == 1
