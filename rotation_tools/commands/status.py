"""The fleet view: every secret this rotation function rotates, and which ones need attention.

Lists the secrets whose RotationLambdaARN is --function (an ARN or a name), or every rotation-enabled secret
when --function is not given, with: last and next rotation, schedule, strategy (alternating users when the
value has a masterarn), whether AWSPENDING is stuck on a version other than AWSCURRENT's (and since when),
whether a rotation is overdue (its window passed without one), and the last failure the function logged
about the secret in CloudWatch Logs (/aws/lambda/<function>), or why the logs could not be read.

Needs secretsmanager:ListSecrets, ListSecretVersionIds and GetSecretValue (for the masterarn key only), and
logs:FilterLogEvents for the failures. The logs endpoint is boto3's (AWS_ENDPOINT_URL_LOGS...); when none is
set and Secrets Manager's is local (moto), the same local endpoint.

exit status: 0 nothing stuck or overdue, 1 something stuck or overdue (or an error), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os

HELP = "the fleet view: every secret this function rotates, last/next rotation, stuck or overdue, last failure"
#: Runs none of the function's code, so nothing logs: the CLI need not load the function's logger.
FUNCTION_LOGS = False

LOGS_CLIENT_CONFIG = {"connect_timeout": 2, "read_timeout": 5, "retries": {"total_max_attempts": 2}}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--function", metavar="ARN_OR_NAME",
                        help="the rotation function (its ARN or name); default: every rotation-enabled secret")
    parser.add_argument("--no-logs", action="store_true", help="do not read CloudWatch Logs for failures")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON document")


def run(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError

    from rotation.config import Settings
    from rotation.exceptions import SecretsManagerError, SecretsManagerUnreachable
    from rotation.secrets_store import secrets_manager_client, unreachable_fix
    from rotation_tools.status import collect, render_table

    sm_client = secrets_manager_client(Settings.from_env().secrets_manager_endpoint)
    logs_client = None if args.no_logs else _logs_client(sm_client.meta.endpoint_url)
    try:
        status = collect(sm_client, logs_client, args.function)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SecretsManagerError(f"{exc.operation_name} failed: {error.get('Code')}: "
                                  f"{error.get('Message', '')}") from exc
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        endpoint = sm_client.meta.endpoint_url
        raise SecretsManagerUnreachable(f"cannot reach the Secrets Manager endpoint {endpoint} "
                                        f"({type(exc).__name__}): {unreachable_fix(endpoint)}") from exc
    except BotoCoreError as exc:
        raise SecretsManagerError(f"listing the secrets failed: {exc}") from exc
    print(json.dumps(status.to_dict(), indent=2) if args.json else render_table(status))
    return 0 if status.ok else 1


def _logs_client(secrets_manager_endpoint: str):
    # botocore's own session, as boto3's client() would build it, without importing boto3 (and s3transfer).
    import botocore.session
    from botocore.config import Config

    from rotation.secrets_store import is_loopback

    endpoint = None
    if not (os.environ.get("AWS_ENDPOINT_URL_LOGS") or os.environ.get("AWS_ENDPOINT_URL")) \
            and is_loopback(secrets_manager_endpoint):
        endpoint = secrets_manager_endpoint  # a local moto serves every API on one port
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return botocore.session.get_session().create_client("logs", endpoint_url=endpoint, region_name=region,
                                                        config=Config(**LOGS_CLIENT_CONFIG))
