"""The function's log lines, as the command line shows them: on stderr, and for a person in human mode.

In Lambda (and with ``--json``) each line is one JSON object, for CloudWatch Logs Insights and machines. At a
terminal the same line as JSON buries the one sentence a person needs (``connecting to 127.0.0.1:5432 without
TLS...``) among a dozen keys, and on stdout it interleaves with the command's own output. The CLI therefore
installs :class:`HumanLogFormatter` on the function's log handler for the length of a command, and sends the
lines to stderr, so stdout holds only what the command itself prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

#: Keys worth a person's attention, when a record carries them (in this order).
_CONTEXT_KEYS = ("error", "step", "check")
_LEVEL_STYLE = {"WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[31m"}
_RESET = "\033[0m"


class HumanLogFormatter(logging.Formatter):
    """``warning: <message> [error=LoginRefused]``; a traceback, when the record has one, follows it."""

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__()
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        if self._colour and record.levelname in _LEVEL_STYLE:
            level = f"{_LEVEL_STYLE[record.levelname]}{level}{_RESET}"
        context = [f"{key}={getattr(record, key)}" for key in _CONTEXT_KEYS if getattr(record, key, None)]
        line = f"{level}: {record.getMessage()}" + (f" [{', '.join(context)}]" if context else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def wants_colour(stream, env=os.environ) -> bool:
    return not env.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


@contextlib.contextmanager
def function_logs(*, human: bool) -> Iterator[None]:
    """For one command: the function's log lines go to stderr; rendered for people when ``human``.

    The logger is imported here, not at the top: `invoke` must have set the function's environment first
    (the service name and level are read when it is built), and `--help` need not build it at all.
    """
    from rotation.observability import logger, logs_to_stderr

    handler = logger.registered_handler
    previous = handler.formatter
    if human:
        handler.setFormatter(HumanLogFormatter(colour=wants_colour(sys.stderr)))
    try:
        with logs_to_stderr():
            yield
    finally:
        handler.setFormatter(previous)


__all__ = ["HumanLogFormatter", "function_logs"]
