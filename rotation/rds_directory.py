"""The RDS API behind :class:`~rotation.ports.ClusterDirectory`: which endpoints belong to which cluster.

Used only when a secret alone cannot prove where the admin acts: an RDS-managed master secret holds no host, and
an instance or custom endpoint does not name its cluster. Read-only calls (DescribeDBClusters,
DescribeDBInstances), short timeouts, and errors that name the fix: in a private subnet the RDS API needs an
``rds`` interface VPC endpoint or a NAT gateway, exactly like Secrets Manager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from rotation import aws
from rotation.exceptions import RdsApiError, RdsApiUnreachable
from rotation.topology import ClusterTopology, Endpoint

if TYPE_CHECKING:  # stubs from the dev extra, never in the Lambda artifact
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_rds.type_defs import EndpointTypeDef

_Response = TypeVar("_Response")

RDS_API_FIX = (
    "the function needs a route to the RDS API (an interface VPC endpoint for rds with private DNS, or a NAT "
    "gateway) and rds:DescribeDBClusters / rds:DescribeDBInstances; or pin the admin's server with ADMIN_ENDPOINT"
)

RDS_CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"total_max_attempts": 2, "mode": "standard"},
    user_agent_extra="aurora-postgres-rotation",
)


def rds_client() -> RDSClient:
    """The container's RDS API client (botocore honours AWS_ENDPOINT_URL_RDS, as for every service)."""
    return aws.client("rds", config=RDS_CLIENT_CONFIG)


def _endpoint(address: str | None, port: int | None, what: str) -> Endpoint:
    if not address:
        raise RdsApiError(f"the RDS API lists no endpoint for {what} (is it still being created?)")
    return Endpoint(address, int(port or 5432))


def _instance_endpoint(document: EndpointTypeDef | None, what: str) -> Endpoint:
    document = document or {}
    return _endpoint(document.get("Address"), document.get("Port"), what)


class RdsClusterDirectory:
    def __init__(self, client: RDSClient) -> None:
        self._client = client

    def _call(self, what: str, request: Callable[[], _Response]) -> _Response:
        try:
            return request()
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise RdsApiUnreachable(
                f"cannot reach the RDS API at {self._client.meta.endpoint_url} to look up {what} "
                f"({type(exc).__name__}): {RDS_API_FIX}"
            ) from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            raise RdsApiError(f"the RDS API refused to describe {what}: {code}"
                              + (f"; {RDS_API_FIX}" if code in ("AccessDenied", "AccessDeniedException") else "")
                              ) from exc
        except BotoCoreError as exc:
            raise RdsApiError(f"the RDS API call for {what} failed: {type(exc).__name__}") from exc

    def cluster(self, identifier: str) -> ClusterTopology:
        what = f"cluster {identifier}"
        clusters = self._call(what, lambda: self._client.describe_db_clusters(DBClusterIdentifier=identifier)
                              ).get("DBClusters", [])
        if not clusters:
            raise RdsApiError(f"the RDS API knows no {what}")
        cluster = clusters[0]
        port = int(cluster.get("Port") or 5432)
        writer = _endpoint(cluster.get("Endpoint"), port, what)
        reader_endpoint = cluster.get("ReaderEndpoint")
        reader = Endpoint(reader_endpoint, port) if reader_endpoint else None
        custom = tuple(Endpoint(name, port) for name in cluster.get("CustomEndpoints") or ())
        members = self._call(f"the instances of {what}", lambda: self._client.describe_db_instances(
            Filters=[{"Name": "db-cluster-id", "Values": [cluster["DBClusterIdentifier"]]}]))
        instances = tuple(
            _instance_endpoint(instance.get("Endpoint"), f"instance {instance.get('DBInstanceIdentifier')}")
            for instance in members.get("DBInstances", []) if instance.get("Endpoint")
        )
        return ClusterTopology(cluster["DBClusterIdentifier"], writer, reader, instances, custom)

    def instance(self, identifier: str) -> Endpoint:
        what = f"instance {identifier}"
        instances = self._call(what, lambda: self._client.describe_db_instances(DBInstanceIdentifier=identifier)
                               ).get("DBInstances", [])
        if not instances:
            raise RdsApiError(f"the RDS API knows no {what}")
        return _instance_endpoint(instances[0].get("Endpoint"), what)


def default_directory() -> RdsClusterDirectory:
    """The container's RDS API directory, as the handlers and the preflight use it."""
    return RdsClusterDirectory(rds_client())
