"""Network probes below libpq: the deadline guard, the PostgreSQL SSLRequest, and a TLS handshake checked the way
libpq checks it. Each says what it found as a Finding; none logs in or changes anything."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from rotation.credentials import DatabaseCredentials
from rotation.preflight.report import Finding, fail, ok, warn

#: One network wait (connect, DNS, an answer). libpq rounds any connect_timeout below 2 s up to 2.
NETWORK_TIMEOUT_S = 2
CERT_EXPIRY_WARNING_DAYS = 14
#: PostgreSQL's SSLRequest: length 8, code 80877103. Every server answers it with one byte, 'S' or 'N', before
#: any authentication, so it tells "PostgreSQL answers here" and "TLS is offered" without logging in.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)

TLS_FIX = (
    "set PGSSLROOTCERT to the CA bundle that signed the server certificate (for RDS/Aurora, the RDS global "
    "bundle); with verify-full the host in the secret must be a name the certificate carries (the cluster "
    "endpoint, not a CNAME of it), or set the secret's ssl key to verify-ca"
)


class CheckTimedOut(Exception):
    pass


def within(seconds: float, function: Callable[[], Finding]) -> Finding:
    """Run ``function`` on a daemon thread and give up after ``seconds``.

    Every network call below has its own timeout; this is the backstop for what has none (a stuck DNS
    resolver, a TLS peer that trickles bytes), so the report's deadline holds whatever the network does.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["finding"] = function()
        except BaseException as exc:  # handed to the caller's thread, which decides
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="preflight-check", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CheckTimedOut
    if "error" in outcome:
        raise outcome["error"]
    return outcome["finding"]


def tls_context(sslmode: str, ca_file: str | None) -> ssl.SSLContext:
    # Mirrors libpq: a CA file replaces the trust store ("system" is the default here), verify-ca skips the
    # host name, require checks nothing.
    context = ssl.create_default_context(cafile=ca_file)
    if sslmode in {"require", "verify-ca"}:
        context.check_hostname = False
    if sslmode == "require":
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_handshake(creds: DatabaseCredentials, address: str, ca_file: str | None) -> Finding:
    method = "raw SSLRequest probe and Python's ssl module; current_login repeats it through libpq"
    where = f"{address}:{creds.port}"
    context = tls_context(creds.sslmode, ca_file)
    try:
        with socket.create_connection((address, creds.port), timeout=NETWORK_TIMEOUT_S) as raw:
            raw.sendall(SSL_REQUEST)
            if raw.recv(1) != b"S":
                return fail(f"{where} stopped offering TLS between two probes", TLS_FIX)
            with context.wrap_socket(raw, server_hostname=creds.host) as tls:
                version, certificate = tls.version(), tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        return fail(f"certificate verification failed (sslmode={creds.sslmode}, CA "
                    f"{ca_file or 'system trust store'}): {exc.verify_message} [{method}]", TLS_FIX)
    except (ssl.SSLError, OSError) as exc:
        return fail(f"TLS handshake with {where} failed: {getattr(exc, 'reason', None) or exc} [{method}]", TLS_FIX)
    if creds.sslmode == "require":
        return ok(f"{version} with {where}; certificate not verified (sslmode=require) [{method}]")
    subject = dict(item[0] for item in certificate.get("subject", ()))
    days_left = int((ssl.cert_time_to_seconds(certificate["notAfter"]) - time.time()) // 86400)
    checked = "and host name " if creds.sslmode == "verify-full" else ""
    detail = (f"{version} with {where}; certificate {subject.get('commonName', '?')!r} {checked}verified against "
              f"{ca_file or 'the system trust store'}, expires {certificate['notAfter']} [{method}]")
    if days_left < CERT_EXPIRY_WARNING_DAYS:
        return warn(f"{detail}: only {days_left} days left",
                    "renew the server certificate (RDS/Aurora: modify the cluster's certificate authority)")
    return ok(detail)
