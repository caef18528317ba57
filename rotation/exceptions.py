"""The project's one error hierarchy.

Every failure the rotation or bootstrap function can report is a :class:`RotationError`. Messages name the
secret, the user, the host and the reason, and never a password, a secret value or a SCRAM verifier: they end
up in CloudWatch Logs and in the Secrets Manager console. Adapters translate boto3/psycopg exceptions at the
boundary with ``raise ... from exc`` so the original stays available to a debugger but the message is ours.
"""

from __future__ import annotations


class RotationError(Exception):
    """Base class: anything the project raises on purpose."""

    #: A short machine-friendly name, used as the ``error`` key in logs and reports.
    code = "RotationError"


class ConfigurationError(RotationError):
    """The function's environment (password policy, strategy, timeouts) is invalid."""

    code = "ConfigurationError"


class InvalidEventError(RotationError):
    """The invocation event is not a rotation/bootstrap event we understand."""

    code = "InvalidEvent"


class SecretFormatError(RotationError):
    """A secret's value is not a usable "Amazon RDS database credentials" JSON document."""

    code = "SecretFormatError"


class RotationStateError(RotationError):
    """The secret's versions are not in a state in which this step may run (rotation off, token not pending)."""

    code = "RotationStateError"


class SecretsManagerError(RotationError):
    """A Secrets Manager API call failed."""

    code = "SecretsManagerError"


class SecretsManagerUnreachable(SecretsManagerError):
    """No network route to the Secrets Manager endpoint (the classic missing VPC endpoint / NAT)."""

    code = "SecretsManagerUnreachable"


class PendingValueMissing(SecretsManagerError):
    """The AWSPENDING version exists but holds no value yet (createSecret has not stored it)."""

    code = "PendingValueMissing"


class DatabaseError(RotationError):
    """A PostgreSQL operation failed."""

    code = "DatabaseError"


class DatabaseUnreachable(DatabaseError):
    """The database host does not resolve or its port does not answer within the connect timeout."""

    code = "DatabaseUnreachable"


class TLSError(DatabaseError):
    """TLS was required but the handshake or the certificate verification failed."""

    code = "TLSError"


class LoginRefused(DatabaseError):
    """The server refused the password (or the role does not exist: the server does not say which)."""

    code = "LoginRefused"


class ConnectionRejected(DatabaseError):
    """The server rejected the connection for a reason other than the password: pg_hba.conf has no entry for
    it, or the database does not exist. Trying other passwords cannot help."""

    code = "ConnectionRejected"


class CleartextPasswordRefused(DatabaseError):
    """The server asked for the password in cleartext; we never send it (SCRAM and md5 do not reveal it)."""

    code = "CleartextPasswordRefused"


class PrivilegeError(DatabaseError):
    """Logged in, but the role may not do what the step needs (alter a role, create a role, grant)."""

    code = "PrivilegeError"


class VerificationError(DatabaseError):
    """testSecret logged in, but the session is not who or what the secret says it should be."""

    code = "VerificationError"


class BootstrapError(RotationError):
    """The bootstrap function could not create or reconcile the read-only role and its secret."""

    code = "BootstrapError"


class LocalToolError(RotationError):
    """A local component (PostgreSQL binaries, moto, certificates, a port) is missing or failed to start.

    The message always names the fix: a package to install, an option or environment variable to set.
    """

    code = "LocalToolError"


class AdminEndpointUnknown(ConfigurationError):
    """The admin secret names no server, and neither the RDS API nor ADMIN_ENDPOINT says which one it is for."""

    code = "AdminEndpointUnknown"


class ForeignEndpoint(RotationStateError):
    """A user secret points at a server that is not the admin secret's (nor another endpoint of its cluster)."""

    code = "ForeignEndpoint"


class AdministrativeRoleRefused(PrivilegeError):
    """The admin secret was asked to reset or clone a role with administrative power; it never does."""

    code = "AdministrativeRoleRefused"


class AuthenticationMethodRejected(ConnectionRejected):
    """The server authenticates this role by another method than a password (IAM/PAM, LDAP, ident, GSS, cert):
    no password the rotation could set would help."""

    code = "AuthenticationMethodRejected"


class RdsApiError(RotationError):
    """An RDS API call (DescribeDBClusters / DescribeDBInstances) failed."""

    code = "RdsApiError"


class RdsApiUnreachable(RdsApiError):
    """No network route to the RDS API endpoint."""

    code = "RdsApiUnreachable"
