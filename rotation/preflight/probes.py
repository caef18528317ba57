"""Network probes below libpq: the deadline guard, the PostgreSQL SSLRequest, and a TLS handshake checked the way
libpq checks it. Each says what it found as a Finding; none logs in or changes anything."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping

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
    findings: list[Finding] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            findings.append(function())
        except BaseException as exc:  # handed to the caller's thread, which decides
            errors.append(exc)

    worker = threading.Thread(target=target, name="preflight-check", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CheckTimedOut
    if errors:
        raise errors[0]
    return findings[0]


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
    # A verified handshake always has the peer's certificate, with its subject and expiry.
    not_after = certificate.get("notAfter") if certificate else None
    if not isinstance(not_after, str):
        return fail(f"{where} presented no certificate with an expiry date [{method}]", TLS_FIX)
    days_left = int((ssl.cert_time_to_seconds(not_after) - time.time()) // 86400)
    checked = "and host name " if creds.sslmode == "verify-full" else ""
    detail = (f"{version} with {where}; certificate {_common_name(certificate)!r} {checked}verified against "
              f"{ca_file or 'the system trust store'}, expires {not_after} [{method}]")
    if days_left < CERT_EXPIRY_WARNING_DAYS:
        return warn(f"{detail}: only {days_left} days left",
                    "renew the server certificate (RDS/Aurora: modify the cluster's certificate authority)")
    return ok(detail)


def _common_name(certificate: Mapping[str, object] | None) -> str:
    """The subject's commonName of a certificate as ``SSLSocket.getpeercert()`` gives it, else '?'."""
    subject = certificate.get("subject", ()) if certificate else ()
    common_name = "?"
    for relative_name in subject if isinstance(subject, tuple) else ():
        # As dict(rdn[0] for rdn in subject): the first attribute of each relative name, the last one wins.
        attribute = relative_name[0] if isinstance(relative_name, tuple) and relative_name else None
        if isinstance(attribute, tuple) and len(attribute) == 2 and attribute[0] == "commonName":
            common_name = str(attribute[1])
    return common_name
