"""Write the four step events for a secret, with a freshly staged AWSPENDING version, ready to run.

Stages a rotation as RotateSecret does before it invokes createSecret (a new ClientRequestToken, an empty
version labelled AWSPENDING), then writes createSecret.json, setSecret.json, testSecret.json and
finishSecret.json into --out, each naming the secret's ARN and that token. Run them in order with
`rotation invoke` (no Docker), or with `sam local invoke RotationFunction -e FILE` where Docker exists.

Staging needs a local endpoint (moto, e.g. the one `rotation demo --keep` runs): against AWS, RotateSecret
invokes the deployed function, which runs the whole rotation itself. With --token, a version already staged
AWSPENDING (a stuck rotation's, say) is used as it is, on any endpoint, and nothing is changed.

examples:
  rotation events --secret-id NAME --out /tmp/ev
  for step in createSecret setSecret testSecret finishSecret; do rotation invoke /tmp/ev/$step.json; done

exit status: 0 written, 1 refused (rotation off, another rotation pending, not a local endpoint), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

HELP = "stage a rotation as RotateSecret does and write its four step events (for rotation invoke / sam local)"
#: Runs none of the function's code, so nothing logs: the CLI need not load the function's logger.
FUNCTION_LOGS = False


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-id", required=True, metavar="ID", help="the secret's name or ARN")
    parser.add_argument("--out", required=True, metavar="DIR", type=Path,
                        help="where to write the four event files (created if missing)")
    parser.add_argument("--token", metavar="TOKEN",
                        help="use this AWSPENDING version (already staged) or stage one with this id; default: a "
                        "new UUID")
    parser.add_argument("--json", action="store_true", help="print what was staged and written as JSON")


def run(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError

    from rotation.config import Settings
    from rotation.exceptions import SecretsManagerError, SecretsManagerUnreachable
    from rotation.secrets_store import secrets_manager_client, unreachable_fix
    from rotation_tools.staging import stage_rotation, write_events

    client = secrets_manager_client(Settings.from_env().secrets_manager_endpoint)
    try:
        staged = stage_rotation(client, args.secret_id, args.token)
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        raise SecretsManagerUnreachable(f"cannot reach the Secrets Manager endpoint {client.meta.endpoint_url}: "
                                        f"{unreachable_fix(client.meta.endpoint_url)}") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SecretsManagerError(f"{exc.operation_name} on secret {args.secret_id} failed: "
                                  f"{error.get('Code')}: {error.get('Message', '')}") from exc
    except BotoCoreError as exc:
        raise SecretsManagerError(f"Secrets Manager call on secret {args.secret_id} failed: {exc}") from exc
    staged = write_events(staged, args.out)
    if args.json:
        print(json.dumps(staged.to_dict(), indent=2))
        return 0
    how = ("staged as RotateSecret does: a new version, labelled AWSPENDING, no value yet" if staged.staged_now
           else "already the AWSPENDING version: nothing changed")
    print(f"secret {staged.secret_arn}")
    print(f"token  {staged.token} ({how})")
    print("run the steps in order, each once (a step may be repeated: each converges):")
    for path in staged.files:
        print(f"  rotation invoke {shlex.quote(str(path))}")
    print("or, where Docker exists, each in turn:")
    print(f"  {sam_local_invoke(staged.files[0], client.meta.endpoint_url)}")
    return 0


def sam_local_invoke(event_file: Path | str, endpoint_url: str) -> str:
    """The `sam local invoke` line for one event; a local endpoint must reach the container (host network)."""
    from rotation.secrets_store import is_loopback

    line = f"sam local invoke RotationFunction -e {shlex.quote(str(event_file))}"
    if is_loopback(endpoint_url):
        line += f" --parameter-overrides SecretsManagerEndpoint={endpoint_url} --docker-network host"
    return line
