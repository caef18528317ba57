"""Rotate a secret now, locally: what "Rotate secret immediately" does, without deploying the function.

Emulates Secrets Manager's RotateSecret (RotateImmediately=true): stages the pending version the way the
service does, then runs createSecret, setSecret, testSecret and finishSecret in this process, against the
Secrets Manager endpoint boto3 resolves (AWS_ENDPOINT_URL_SECRETS_MANAGER, SECRETS_MANAGER_ENDPOINT, a
profile) and the database the secret names. The function's settings come from the environment, as in Lambda
(ROTATION_STRATEGY, PASSWORD_LENGTH, EXCLUDE_CHARACTERS, PGSSLROOTCERT...).

For a secret whose rotation is attached to the deployed function, use the service itself instead:
  aws secretsmanager rotate-secret --secret-id NAME      (or the console's "Rotate secret immediately")

A failed step is reported with what was done and what is pending; the secret is left as the service would
leave it (AWSCURRENT untouched), and the same command with --token resumes that rotation where it stopped.

exit status: 0 rotated, 1 a step failed or the rotation was refused, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

HELP = 'rotate a secret now, in-process ("rotate immediately" played locally)'


def _token(value: str) -> str:
    from rotation_tools.local.driver import check_token

    try:
        return check_token(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-id", required=True, metavar="ID", help="the secret's name or ARN")
    parser.add_argument(
        "--token",
        type=_token,
        metavar="TOKEN",
        help="resume the rotation that used this token (the version id a failed run printed), or start one "
        "with it; default: a new UUID",
    )
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON report on stdout")


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: the parser imports every command module to list it, and `rotation --help`
    # must stay fast, without the boto3 and psycopg imports that only a rotation needs.
    from rotation import wiring
    from rotation.config import Settings
    from rotation.exceptions import RotationError
    from rotation_tools.local.driver import rotate_now

    if not args.json:
        print(f"rotating {args.secret_id}" + (f", resuming token {args.token}" if args.token else ""), flush=True)
    try:
        settings = Settings.from_env()
        report = rotate_now(
            wiring.store(settings),
            lambda: wiring.database(settings),
            settings,
            args.secret_id,
            token=args.token,
            on_step=None if args.json else _print_step,
        )
    except RotationError as exc:
        if not args.json:
            raise  # the CLI prints "error: ..." and exits 1
        _print_json({"ok": False, "secret_id": args.secret_id, "error": {"code": exc.code, "message": str(exc)}})
        return 1
    if args.json:
        _print_json(report.to_dict())
    elif report.ok:
        print(f"rotated {report.secret_arn} in {_ms(report.seconds)} ({report.strategy}): AWSCURRENT is now "
              f"version {report.token}")
    else:
        explain_failure(report, sys.stderr)
    return 0 if report.ok else 1


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _print_json(document: dict) -> None:
    print(json.dumps(document, indent=2))


def _print_step(result) -> None:
    status = "" if result.ok else f"FAILED ({result.error}): "
    print(f"  {result.step.value:<13} {_ms(result.seconds):>10}  {status}{result.action}", flush=True)


def explain_failure(report, out: TextIO) -> None:
    """What failed, what was done, what is pending and how to resume, for a person at a terminal."""
    from rotation.config import StrategyName
    from rotation.events import Step

    failed = report.failed
    lines = [f"rotation of {report.secret_arn} failed at {failed.step.value}: {failed.error}: {failed.action}"]
    done = [result for result in report.steps if result.ok]
    if done:
        lines.append("done before the failure:")
        lines += [f"  {result.step.value}: {result.action}" for result in done]
    else:
        lines.append("done before the failure: nothing")

    pending = report.pending
    if pending is None:
        lines.append(f"pending: unknown (the secret could not be read back); the token is {report.token}")
    elif pending.pending_has_value:
        lines.append(f"pending: version {report.token} is labelled AWSPENDING and holds the new credentials; "
                     f"AWSCURRENT is still version {pending.current_version}")
    else:
        lines.append(f"pending: nothing stored (no AWSPENDING value for token {report.token}); AWSCURRENT is "
                     f"still version {pending.current_version}")
    password_already_set = any(result.ok and result.step is Step.SET for result in report.steps)
    if password_already_set and report.strategy == StrategyName.SINGLE_USER:
        lines.append("warning: single-user rotation already set the new password in the database, so the "
                     "AWSCURRENT password no longer logs in: resume as soon as the cause is fixed")
    lines.append("resume once the cause is fixed (same token: each step picks up where the last run stopped):")
    lines.append(f"  {report.resume_command}")
    if pending is None or pending.pending_has_value:
        lines.append(f"or abandon it: `rotation repair --secret-id {report.secret_id}` explains how to clear it")
    print("\n".join(lines), file=out)
