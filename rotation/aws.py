"""AWS clients for the function, built from botocore's own session, one per container and settings.

Not boto3: ``import boto3`` also imports s3transfer (through ``boto3.compat``), which a Secrets Manager or RDS
client never uses (~80 ms of CPU on Python 3.11 here, less on 3.13: docs/performance.md); boto3's ``client()`` is
a thin wrapper over the botocore session used here. botocore still resolves everything the way boto3 does, from
its own configuration chain: credentials, ``AWS_ENDPOINT_URL_<SERVICE>`` and ``AWS_ENDPOINT_URL``, FIPS and
dual-stack settings, profiles.

What a container pays once: botocore's data loader (the service models and the 1.2 MB endpoints file it parses)
is shared by every client built here, so another client of a loaded service (another endpoint) costs ~15-20 ms
instead of ~60 (mostly the new botocore session's event handlers).
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from typing import TYPE_CHECKING, Any, Literal, overload

import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, DataNotFoundError, NoRegionError
from botocore.loaders import JSONFileLoader, Loader

from rotation.exceptions import ConfigurationError

if TYPE_CHECKING:  # the services' typed clients: stubs from the dev extra, never in the Lambda artifact
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

#: Variables botocore reads when it builds a client and that decide where its requests go: part of the cache
#: key, so a changed endpoint (tests, the CLI pointing at moto) gets a new client instead of a stale one.
_ENDPOINT_VARIABLE_PREFIX = "AWS_ENDPOINT_URL"
_ENDPOINT_SWITCHES = ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")

DEFAULT_CONFIG = Config(user_agent_extra="aurora-postgres-rotation")


class _PlainDictJSONFileLoader(JSONFileLoader):
    """botocore's JSON data files, parsed into dicts rather than OrderedDicts.

    botocore still asks for OrderedDict (a Python 2 habit; dicts keep their order since 3.7), which makes the
    parse of its 1.2 MB endpoints file ~3x slower: 20 against 7 ms of CPU here, on every cold start. Nothing reads
    the data as an OrderedDict in particular.
    """

    _OPENERS = ((".json", open), (".json.gz", gzip.open))

    def load_file(self, file_path: str) -> Any:
        for extension, opener in self._OPENERS:
            full_path = file_path + extension
            if os.path.isfile(full_path):
                with opener(full_path, "rb") as data:
                    return json.loads(data.read().decode("utf-8"))
        return None


class _NamedServicesLoader(Loader):
    """botocore's data loader, looking only at the services clients were asked for.

    Before loading a model, botocore's Loader checks that the service exists by listing every service folder
    of its data directory (~450, with a stat per API version) for each model type: 10-20 ms per type on a cold
    container. The answer for the services we name is the same, found in one folder each.
    """

    def __init__(self, extra_search_paths: list[str] | None = None) -> None:
        super().__init__(extra_search_paths=extra_search_paths, file_loader=_PlainDictJSONFileLoader())
        self._named: set[str] = set()

    def name_service(self, service_name: str) -> None:
        self._named.add(service_name)

    def list_available_services(self, type_name: str) -> list[str]:
        available = []
        for service_name in sorted(self._named):
            try:
                self.list_api_versions(service_name, type_name)
            except DataNotFoundError:
                continue
            available.append(service_name)
        return available


_lock = threading.Lock()
_loader: _NamedServicesLoader | None = None
_clients: dict[tuple[Any, ...], BaseClient] = {}


def _shared_loader(session: botocore.session.Session) -> _NamedServicesLoader:
    global _loader  # one per container: it caches what it parsed
    if _loader is None:
        # As botocore's own create_loader does with AWS_DATA_PATH (a list of extra model folders).
        data_path = session.get_config_variable("data_path")
        extra = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)] if data_path else None
        _loader = _NamedServicesLoader(extra_search_paths=extra)
    return _loader


def _endpoint_environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, value) for name, value in os.environ.items()
                        if name.startswith(_ENDPOINT_VARIABLE_PREFIX) or name in _ENDPOINT_SWITCHES))


def _build(service_name: str, endpoint_url: str | None, region: str | None, config: Config) -> BaseClient:
    # A new session per client keeps each client's view of the environment (profile, credentials) as boto3's
    # would be; the shared loader is what makes it cheap.
    session = botocore.session.Session()
    loader = _shared_loader(session)
    loader.name_service(service_name)
    session.register_component("data_loader", loader)
    return session.create_client(service_name, region_name=region, endpoint_url=endpoint_url, config=config)


@overload
def client(service_name: Literal["secretsmanager"], *, endpoint_url: str | None = None, region: str | None = None,
           config: Config = DEFAULT_CONFIG) -> SecretsManagerClient: ...


@overload
def client(service_name: Literal["rds"], *, endpoint_url: str | None = None, region: str | None = None,
           config: Config = DEFAULT_CONFIG) -> RDSClient: ...


@overload
def client(service_name: str, *, endpoint_url: str | None = None, region: str | None = None,
           config: Config = DEFAULT_CONFIG) -> BaseClient: ...


def client(service_name: str, *, endpoint_url: str | None = None, region: str | None = None,
           config: Config = DEFAULT_CONFIG) -> BaseClient:
    """The container's botocore client for ``service_name`` with these settings, built on first use.

    ``endpoint_url`` overrides botocore's resolution (which honours ``AWS_ENDPOINT_URL_<SERVICE>`` and
    ``AWS_ENDPOINT_URL``); ``region`` defaults to AWS_REGION (Lambda sets it) or AWS_DEFAULT_REGION.
    Clients are thread-safe; building one is not, hence the lock.
    """
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # Config has no value equality: the very object is the key, as the handler always passes the same one.
    key = (service_name, endpoint_url, region, _endpoint_environment(), config)
    cached = _clients.get(key)
    if cached is not None:
        return cached
    with _lock:
        cached = _clients.get(key)
        if cached is not None:
            return cached
        try:
            built = _build(service_name, endpoint_url, region, config)
        except NoRegionError as exc:
            raise ConfigurationError(
                f"no AWS region configured for the {service_name} client: set AWS_REGION (Lambda sets it) or a "
                "profile's region"
            ) from exc
        except BotoCoreError as exc:
            raise ConfigurationError(f"cannot build the {service_name} client: {exc}") from exc
        _clients[key] = built
        return built
