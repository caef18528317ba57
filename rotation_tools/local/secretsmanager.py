"""The Secrets Manager API on localhost: moto's server, in this process, spoken to over real HTTP by boto3.

HTTP rather than moto's in-process patching, so the code under test builds its own boto3 client from the
environment (``AWS_ENDPOINT_URL_SECRETS_MANAGER``), exactly as it does in Lambda, and a separate process such as
``rotation demo``'s subprocesses could share the same endpoint.

What moto cannot do is play the service's part in a rotation: its ``rotate_secret`` without a Lambda function
makes the new, empty version AWSCURRENT at once. :meth:`LocalSecretsManager.stage_pending` does what the real
service does before it invokes ``createSecret``, by editing moto's in-memory model, which the server thread
shares with us.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from rotation_tools.local import LocalToolError

REGION = "us-east-1"
DUMMY_CREDENTIAL = "testing"
PREVIOUS_ROTATION_INCOMPLETE = "A previous rotation isn't complete. That rotation will be reattempted."
_DEFAULT_LAMBDA_ARN = "arn:aws:lambda:{region}:{account}:function:local-rotation"


def _client_error(code: str, message: str, operation: str) -> Exception:
    # The same exception type and shape boto3 raises for a service error, so callers' handling is exercised.
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message}}, operation)



def routing_variables(environ: Mapping[str, str]) -> list[str]:
    """The variables to clear before pointing boto3 at a local endpoint.

    Every ``AWS_*`` one (profiles, role ARNs, endpoints, container credentials) could route a call to a real
    account; ``ROTATION_STRATEGY`` would change what the local story shows.
    """
    return [name for name in environ if name.startswith("AWS_") or name == "ROTATION_STRATEGY"]


class LocalSecretsManager:
    """A moto server on 127.0.0.1 (a free port unless ``port`` is given), started on construction.

    ``quiet`` keeps werkzeug's per-request access log off stderr.

    moto keeps its state in process-wide globals, so every instance in one process sees the same secrets;
    use distinct secret names (the test fixtures add a random suffix).
    """

    def __init__(self, *, port: int = 0, region: str = REGION, quiet: bool = True) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise LocalToolError(
                "the local Secrets Manager needs moto and Flask for its server: `pip install "
                "'aurora-postgres-rotation[local]'` (moto's Secrets Manager, Logs and RDS services, Flask)"
            ) from exc
        if port:
            # moto's server thread dies silently on a bind error and start() then waits forever; check first.
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as exc:
                    raise LocalToolError(
                        f"port {port} on 127.0.0.1 is already in use: choose another port or pass port=0"
                    ) from exc
        if quiet:
            # werkzeug prints one line per request to stderr unless its logger is configured; that drowns
            # the demo's output and the test logs. An application that configured it keeps its choice.
            werkzeug_logger = logging.getLogger("werkzeug")
            if werkzeug_logger.level == logging.NOTSET:
                werkzeug_logger.setLevel(logging.WARNING)
        self.region = region
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        host, bound_port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{bound_port}"
        self._client: Any = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"LocalSecretsManager(endpoint_url={self.endpoint_url!r}, region={self.region!r})"

    # ---- clients and environment

    def client(self) -> Any:
        """A new boto3 ``secretsmanager`` client for this endpoint, with dummy credentials."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "secretsmanager",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=DUMMY_CREDENTIAL,
            aws_secret_access_key=DUMMY_CREDENTIAL,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )

    def rds_client(self) -> Any:
        """A client of this server's RDS API (moto serves every service on one endpoint)."""
        import boto3

        return boto3.session.Session().client(
            "rds", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=DUMMY_CREDENTIAL, aws_secret_access_key=DUMMY_CREDENTIAL,
        )

    def create_aurora_cluster(self, identifier: str, port: int, master: Mapping[str, Any]) -> dict[str, Any]:
        """An Aurora PostgreSQL cluster in the RDS API whose master password RDS keeps in Secrets Manager, as
        ManageMasterUserPassword does: the secret holds only ``username`` and ``password`` (``master``'s) and is
        tagged with the cluster's ARN. Returns DescribeDBClusters' entry; the secret's ARN is under
        ``MasterUserSecret.SecretArn``. The endpoints are names only: map them to a local server (libpq's
        PGHOSTADDR) and give ``port`` the local server's port."""
        rds = self.rds_client()
        cluster = rds.create_db_cluster(DBClusterIdentifier=identifier, Engine="aurora-postgresql", Port=port,
                                        MasterUsername=master["username"], ManageMasterUserPassword=True,
                                        DatabaseName=master.get("dbname", "postgres"))["DBCluster"]
        rds.create_db_instance(DBInstanceIdentifier=f"{identifier}-1", DBClusterIdentifier=identifier,
                               Engine="aurora-postgresql", DBInstanceClass="db.r6g.large")
        self._api.put_secret_value(
            SecretId=cluster["MasterUserSecret"]["SecretArn"],
            SecretString=json.dumps({"username": master["username"], "password": master["password"]}))
        return cluster

    @property
    def _api(self) -> Any:
        if self._client is None:
            self._client = self.client()
        return self._client

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and the function's drop-in settings) at this server.

        The shared config and credentials files are masked so a developer's real profile can neither leak
        into a test nor redirect it to a real account.
        """
        return {
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint_url,
            # moto serves the RDS API too: the lookup of an RDS-managed master secret's cluster.
            "AWS_ENDPOINT_URL_RDS": self.endpoint_url,
            # The variable AWS's own rotation functions read; ours keeps it for drop-in migration.
            "SECRETS_MANAGER_ENDPOINT": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL,
            "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL,
            "AWS_SESSION_TOKEN": DUMMY_CREDENTIAL,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @contextmanager
    def isolated_environment(self, environ: MutableMapping[str, str] | None = None,
                             **extra: str) -> Iterator[None]:
        """Clear :func:`routing_variables`, point the SDK at this server, and restore everything afterwards."""
        environ = os.environ if environ is None else environ
        saved = dict(environ)
        for name in routing_variables(environ):
            del environ[name]
        environ.update(self.env(), **extra)
        try:
            yield
        finally:
            environ.clear()
            environ.update(saved)

    # ---- convenience API calls

    def create_secret(self, name: str, value: Mapping[str, Any], **kwargs: Any) -> str:
        """Store ``value`` as JSON under ``name`` (AWSCURRENT); returns the ARN."""
        return self._api.create_secret(Name=name, SecretString=json.dumps(dict(value)), **kwargs)["ARN"]

    def put_current(self, secret_id: str, value: Mapping[str, Any]) -> str:
        """Store ``value`` as a new AWSCURRENT version, as editing the secret in the console does; returns its id.

        moto's PutSecretValue relabels the version it last made current itself, not the one a rotation's
        UpdateSecretVersionStage moved AWSCURRENT to, and would leave two AWSCURRENT versions after a rotation;
        its model is pointed at the real AWSCURRENT version first.
        """
        secret = self._model(secret_id, "PutSecretValue")
        for version_id, version in secret.versions.items():
            if "AWSCURRENT" in version["version_stages"]:
                secret.default_version_id = version_id
        return self._api.put_secret_value(
            SecretId=secret_id, SecretString=json.dumps(dict(value)), VersionStages=["AWSCURRENT"]
        )["VersionId"]

    def value(self, secret_id: str, stage: str = "AWSCURRENT", version_id: str | None = None) -> dict[str, Any]:
        """The JSON value at ``stage`` (always passing the stage: moto can return a stale version without it)."""
        kwargs: dict[str, str] = {"SecretId": secret_id, "VersionStage": stage}
        if version_id:
            kwargs["VersionId"] = version_id
        return json.loads(self._api.get_secret_value(**kwargs)["SecretString"])

    def stages(self, secret_id: str) -> dict[str, list[str]]:
        """``{version_id: [labels]}`` for every version that carries a label, as ``describe_secret`` shows."""
        described = self._api.describe_secret(SecretId=secret_id)
        return {vid: list(labels) for vid, labels in described.get("VersionIdsToStages", {}).items()}

    # ---- playing the service's part

    def _model(self, secret_id: str, operation: str) -> Any:
        # Resolve through the API first: it raises the service's own ResourceNotFoundException for an unknown
        # id, and the ARN tells us which account's backend moto filed the secret under.
        arn = self._api.describe_secret(SecretId=secret_id)["ARN"]
        _, _, _, region, account, *_ = arn.split(":")
        from moto.secretsmanager.models import secretsmanager_backends

        secret = secretsmanager_backends[account][region].secrets.get(arn)
        if secret is None or not hasattr(secret, "versions") or not hasattr(secret, "rotation_enabled"):
            raise _client_error("InvalidRequestException", f"{operation} is not possible on {arn}", operation)
        if secret.is_deleted():
            raise _client_error(
                "InvalidRequestException",
                "You tried to perform the operation on a secret that's currently marked deleted.",
                operation,
            )
        return secret

    def enable_rotation(
        self, secret_id: str, *, lambda_arn: str | None = None, automatically_after_days: int | None = None
    ) -> None:
        """Turn rotation on (``RotationEnabled: true``) without moto trying to rotate or invoke anything."""
        self._enable(self._model(secret_id, "RotateSecret"), lambda_arn, automatically_after_days)

    @staticmethod
    def _enable(secret: Any, lambda_arn: str | None = None, automatically_after_days: int | None = None) -> None:
        secret.rotation_requested = True
        secret.rotation_enabled = True
        if lambda_arn or not secret.rotation_lambda_arn:
            secret.rotation_lambda_arn = lambda_arn or _DEFAULT_LAMBDA_ARN.format(
                region=secret.region, account=secret.account_id
            )
        if automatically_after_days or not secret.auto_rotate_after_days:
            secret.auto_rotate_after_days = automatically_after_days or 30

    def set_rotation_dates(self, secret_id: str, *, last_rotated: float | None = None,
                           next_rotation: float | None = None) -> None:
        """Backdate LastRotatedDate / set NextRotationDate (epoch seconds): a fleet with history, for tests."""
        secret = self._model(secret_id, "RotateSecret")
        if last_rotated is not None:
            secret.last_rotation_date = int(last_rotated)
        if next_rotation is not None:
            secret.next_rotation_date = int(next_rotation)

    def stage_pending(self, secret_id: str, token: str | None = None) -> str:
        """Start a rotation the way ``RotateSecret`` does, up to the point where it invokes ``createSecret``.

        Adds a version whose id is ``token`` (a new UUID by default) labelled AWSPENDING and holding no value,
        and turns rotation on. Like the service it refuses while AWSPENDING sits on a version other than
        AWSCURRENT ("A previous rotation isn't complete"), except for that same token, which is how the
        service retries a failed rotation. Returns the token, for the ``ClientRequestToken`` of the events.
        """
        token = token or str(uuid.uuid4())
        if not 32 <= len(token) <= 64:
            raise _client_error(
                "InvalidParameterException", "ClientRequestToken must be 32-64 characters long.", "RotateSecret"
            )
        secret = self._model(secret_id, "RotateSecret")
        for version_id, version in secret.versions.items():
            labels = version["version_stages"]
            if "AWSPENDING" in labels and "AWSCURRENT" not in labels:
                if version_id == token:
                    self._enable(secret)
                    return token
                raise _client_error("InvalidRequestException", PREVIOUS_ROTATION_INCOMPLETE, "RotateSecret")
        if token in secret.versions:
            raise _client_error(
                "InvalidRequestException",
                f"You can't use ClientRequestToken {token} because that value is already in use for a version "
                f"of secret {secret.arn}.",
                "RotateSecret",
            )
        self._enable(secret)
        secret.remove_version_stages_from_old_versions(["AWSPENDING"])
        secret.versions[token] = {
            "createdate": int(time.time()),
            "version_id": token,
            "version_stages": ["AWSPENDING"],
        }
        return token

    # ---- lifecycle

    def stop(self) -> None:
        """Shut the HTTP server down. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.stop()

    def __enter__(self) -> LocalSecretsManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["PREVIOUS_ROTATION_INCOMPLETE", "REGION", "LocalSecretsManager"]
