"""The `rotation` command line (also `python -m rotation_tools`).

Each subcommand lives in its own module exposing ``HELP`` (one line), ``configure(parser)`` and
``run(args) -> int``; this file only wires them, so features stay small and independent.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence

from rotation.exceptions import RotationError

#: name -> module. Modules are imported when the parser is built: `--help` must list every command.
COMMANDS = {
    "invoke": "rotation_tools.commands.invoke",
    "rotate": "rotation_tools.commands.rotate",
    "doctor": "rotation_tools.commands.doctor",
    "repair": "rotation_tools.commands.repair",
    "demo": "rotation_tools.commands.demo",
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotation",
        description="Secrets Manager rotation for Aurora PostgreSQL: invoke the handlers locally, rotate a "
        "secret now, diagnose a failing rotation, repair a stuck one, or watch the whole story in a demo.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_stdout = contextlib.nullcontext()
    if getattr(args, "json", False):
        # Machine-readable modes keep stdout for their one JSON document. Imported here: the logger must be
        # built after `invoke` has set the function's environment, and `--help` need not build it at all.
        from rotation.observability import logs_to_stderr

        quiet_stdout = logs_to_stderr()
    try:
        with quiet_stdout:
            return args.handler(args)
    except RotationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
