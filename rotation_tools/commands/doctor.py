"""Diagnose why rotating a secret would fail: every step of its path checked, with a fix for each failure.

Runs the checks the function runs for {"Preflight": true, "SecretId": ...}: Secrets Manager endpoint, secret
readable and well-formed, rotation state, database host, port and TLS, AWSCURRENT login and, with a
masterarn, the admin secret's login and role privileges. Nothing is changed. The report comes back within
10 seconds even when nothing answers.

Run here, the checks use this machine's network, AWS credentials and endpoint (AWS_ENDPOINT_URL_SECRETS_MANAGER,
SECRETS_MANAGER_ENDPOINT, AWS_PROFILE...). A network path that works from here can still be missing from the
function's subnets: to check the function's own path, invoke it with the preflight event, e.g.
  aws lambda invoke --function-name FN --payload '{"Preflight": true, "SecretId": "NAME"}' report.json

exit status: 0 no check failed (warnings allowed), 1 at least one check failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap

HELP = "diagnose a secret's rotation path (preflight checks, each with a fix); exit 1 when a check fails"

_MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}
_ASCII_MARKS = {"ok": "ok", "warn": "!!", "fail": "XX", "skip": "--"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-id", required=True, metavar="ID", help="the secret's name or ARN")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (the handler's answer)")


def run(args: argparse.Namespace) -> int:
    from rotation.preflight import Status, diagnose

    report = diagnose(args.secret_id)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return 1 if report.status is Status.FAIL else 0


def _marks() -> dict[str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "".join(_MARKS.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return _ASCII_MARKS
    return _MARKS


def render(report) -> str:
    """The report as a table: mark, check, duration, detail, and the fix under a failing or warning check."""
    marks = _marks()
    name_width = max(len(check.name) for check in report.checks)
    indent = " " * (2 + 2 + name_width + 2 + 9 + 2)
    width = max(100, min(shutil.get_terminal_size().columns, 160))
    lines = [f"secret {report.secret_arn or report.secret_id}", ""]
    for check in report.checks:
        duration = "" if check.status.value == "skip" else f"{check.duration_ms:>6.0f} ms"
        head = f"  {marks[check.status.value]:<2} {check.name:<{name_width}}  {duration:>9}  "
        lines.append(_fill(check.detail, width, head, indent))
        if check.fix and check.status.value in {"fail", "warn"}:
            lines.append(_fill(f"fix: {check.fix}", width, indent, indent + "     "))
    lines += ["", report.summary()]
    return "\n".join(lines)


def _fill(text: str, width: int, first: str, rest: str) -> str:
    # ARNs and URLs stay whole: a line break inside one would make it impossible to copy.
    return textwrap.fill(text, width, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                         break_on_hyphens=False)
