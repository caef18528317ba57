"""Aurora and RDS endpoints: what a host name says about its cluster, and what the RDS API says.

Aurora publishes several names for one cluster: the cluster (writer) endpoint
``<cluster>.cluster-<id>.<region>.rds.amazonaws.com``, the reader endpoint ``<cluster>.cluster-ro-<id>...``,
custom endpoints ``<name>.cluster-custom-<id>...`` and one endpoint per instance ``<instance>.<id>...``. The
``<id>`` is shared by every cluster and instance of an account in a region, so only the cluster and reader
names can be matched to each other by their text; for the others the RDS API is the authority.

Pure: the RDS API sits behind :class:`rotation.ports.ClusterDirectory`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_AURORA_NAME = re.compile(
    r"(?P<name>[a-z][a-z0-9-]*)\.(?P<kind>cluster-ro|cluster-custom|cluster)-(?P<id>[a-z0-9]+)\."
    r"(?P<region>[a-z0-9-]+)\.(?P<domain>rds\.amazonaws\.com(?:\.cn)?)"
)


_RDS_DOMAINS = (".rds.amazonaws.com", ".rds.amazonaws.com.cn")


def is_rds_host(host: str) -> bool:
    """Whether ``host`` is a name RDS publishes (a cluster, reader, custom or instance endpoint)."""
    return host.strip().rstrip(".").lower().endswith(_RDS_DOMAINS)


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """A host and port, compared the way DNS compares names (case-insensitive, trailing dot ignored)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", self.host.strip().rstrip(".").lower())

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AuroraName:
    """The parts of an Aurora cluster, reader or custom endpoint name."""

    name: str
    kind: str  # "cluster", "cluster-ro" or "cluster-custom"
    id: str
    region: str
    domain: str

    @classmethod
    def parse(cls, host: str) -> AuroraName | None:
        match = _AURORA_NAME.fullmatch(host.strip().rstrip(".").lower())
        return None if match is None else cls(**match.groupdict())

    @property
    def is_reader(self) -> bool:
        return self.kind == "cluster-ro"

    def writer_host(self) -> str | None:
        """The cluster (writer) endpoint of a cluster or reader name; None for a custom endpoint."""
        if self.kind == "cluster-custom":
            return None
        return f"{self.name}.cluster-{self.id}.{self.region}.{self.domain}"

    def same_cluster(self, other: AuroraName) -> bool:
        """Whether both names are the cluster or reader endpoint of one cluster (custom names tell nothing)."""
        kinds = {"cluster", "cluster-ro"}
        return (self.kind in kinds and other.kind in kinds
                and (self.name, self.id, self.region, self.domain)
                == (other.name, other.id, other.region, other.domain))


@dataclass(frozen=True, slots=True)
class ClusterTopology:
    """A cluster's endpoints as the RDS API lists them (an RDS instance outside a cluster is a cluster of one)."""

    identifier: str
    writer: Endpoint
    reader: Endpoint | None = None
    instances: tuple[Endpoint, ...] = ()
    custom: tuple[Endpoint, ...] = ()

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        return frozenset({self.writer, *((self.reader,) if self.reader else ()), *self.instances, *self.custom})

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self.endpoints

