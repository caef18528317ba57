"""rotation.aws: clients from botocore's own session, routed the way boto3 routes them, against moto over HTTP.

The function does not import boto3 (docs/performance.md), so these prove that botocore alone still honours the variables
users set: AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL, an explicit endpoint (SECRETS_MANAGER_ENDPOINT), and
that a missing region is still the clear configuration error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from rotation import aws
from rotation.exceptions import ConfigurationError
from rotation.secrets_store import SecretsManagerStore, secrets_manager_client

UNUSED_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing answers there


def _new_secret(sm, value: str) -> str:
    return sm.client().create_secret(Name=f"aws-clients-{uuid.uuid4().hex[:8]}", SecretString=value)["ARN"]


@pytest.mark.parametrize(
    ("variables", "explicit_endpoint"),
    [
        pytest.param({"AWS_ENDPOINT_URL_SECRETS_MANAGER": "{moto}"}, None, id="service-specific-variable"),
        pytest.param({"AWS_ENDPOINT_URL": "{moto}"}, None, id="global-variable"),
        pytest.param({"AWS_ENDPOINT_URL_SECRETS_MANAGER": "{moto}", "AWS_ENDPOINT_URL": UNUSED_ENDPOINT}, None,
                     id="service-variable-wins-over-global"),
        pytest.param({"AWS_ENDPOINT_URL_SECRETS_MANAGER": UNUSED_ENDPOINT}, "{moto}",
                     id="explicit-endpoint-wins-over-variables"),
    ],
)
def test_secrets_manager_client_reaches_the_endpoint_the_environment_names(sm, monkeypatch, variables,
                                                                           explicit_endpoint):
    monkeypatch.delenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(moto=sm.endpoint_url))
    arn = _new_secret(sm, '{"username": "reader_user"}')
    endpoint = explicit_endpoint.format(moto=sm.endpoint_url) if explicit_endpoint else None

    store = SecretsManagerStore(secrets_manager_client(endpoint))

    assert store.endpoint == sm.endpoint_url
    assert json.loads(store.get_secret_string(arn)) == {"username": "reader_user"}


def test_an_rds_client_honours_its_own_endpoint_variable(sm, monkeypatch):
    """The lead's RDS topology lookup builds an ``rds`` client here; moto serves that API too."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_RDS", sm.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    rds = aws.client("rds")

    assert rds.meta.endpoint_url == sm.endpoint_url
    assert rds.describe_db_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_one_client_per_container_until_the_endpoint_changes(sm, monkeypatch):
    first = secrets_manager_client()
    assert secrets_manager_client() is first, "a second invocation must reuse the container's client"

    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", UNUSED_ENDPOINT)
    moved = secrets_manager_client()

    assert moved is not first
    assert moved.meta.endpoint_url == UNUSED_ENDPOINT


@pytest.mark.parametrize("service", ["secretsmanager", "rds"])
def test_a_missing_region_is_a_configuration_error_naming_the_fix(monkeypatch, tmp_path, service):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", UNUSED_ENDPOINT)  # a key no earlier test used: no cached client

    with pytest.raises(ConfigurationError, match=r"no AWS region configured.*set AWS_REGION"):
        aws.client(service)


def test_an_unknown_service_is_refused_not_guessed():
    with pytest.raises(ConfigurationError, match="secretmanager"):
        aws.client("secretmanager")


def test_the_handler_and_its_client_never_import_boto3_or_s3transfer(sm):
    code = (
        "import sys, rotation.handler, rotation.secrets_store as s\n"
        "s.secrets_manager_client()\n"
        "print(sorted(m for m in ('boto3', 's3transfer', 'psycopg') if m in sys.modules))\n"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"
