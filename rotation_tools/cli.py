"""The `rotation` command line (also `python -m rotation_tools`).

Each subcommand lives in its own module exposing ``HELP`` (one line), ``configure(parser)`` and
``run(args) -> int`` (and ``FUNCTION_LOGS = False`` when it runs none of the function's code); this file only
wires them, so features stay small and independent.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence

from rotation.exceptions import RotationError

#: name -> module. Modules are imported when the parser is built: `--help` must list every command.
COMMANDS = {
    "invoke": "rotation_tools.commands.invoke",
    "events": "rotation_tools.commands.events",
    "rotate": "rotation_tools.commands.rotate",
    "doctor": "rotation_tools.commands.doctor",
    "repair": "rotation_tools.commands.repair",
    "status": "rotation_tools.commands.status",
    "demo": "rotation_tools.commands.demo",
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that command's (the others' modules are not even imported).

    Every command module is imported to list it under `--help`; a command that runs needs only its own, and
    loading the others (without bytecode, compiling them) was a measurable part of a short command's time.
    """
    parser = argparse.ArgumentParser(
        prog="rotation",
        description="Secrets Manager rotation for Aurora PostgreSQL: invoke the handlers locally (with events "
        "staged for your secret), rotate a secret now, diagnose a failing rotation, repair a stuck one, see the "
        "whole fleet's state, or watch the whole story in a demo.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(sub)
        sub.set_defaults(handler=module.run, function_logs=getattr(module, "FUNCTION_LOGS", True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        with _region_from_arn(getattr(args, "secret_id", None)), _function_logs(args):
            return args.handler(args)
    except RotationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _function_logs(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """The function's log lines go to stderr: stdout is the command's own output (one JSON document with --json).

    Rendered for people, except with --json. `invoke` routes them itself, once it has set the function's
    environment (JSON, what Lambda would log, on stderr as `sam local invoke` does); the demo captures the
    function's output for its leak check; a command whose module says ``FUNCTION_LOGS = False`` runs none of
    the function's code, and is spared loading its logger.
    """
    if args.command in {"invoke", "demo"} or not args.function_logs:
        return contextlib.nullcontext()
    from rotation_tools.logs import function_logs

    return function_logs(human=not getattr(args, "json", False))


@contextlib.contextmanager
def _region_from_arn(secret_id: str | None) -> Iterator[None]:
    """A secret ARN names its region: use it when none is configured, instead of failing for want of one.

    Set in the environment before any client is built, and only for the command's length (callers may be
    in-process). A configured region is respected.
    """
    parts = (secret_id or "").split(":")
    configured = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if configured or len(parts) < 7 or parts[0] != "arn" or parts[2] != "secretsmanager" or not parts[3]:
        yield
        return
    # Both: boto3/botocore read AWS_DEFAULT_REGION, the function's settings (and Lambda) AWS_REGION.
    os.environ["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"] = parts[3]
    try:
        yield
    finally:
        os.environ.pop("AWS_REGION", None)
        os.environ.pop("AWS_DEFAULT_REGION", None)


if __name__ == "__main__":
    sys.exit(main())
