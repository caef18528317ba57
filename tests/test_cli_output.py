"""Human output: stdout is the command's own, the function's log lines go to stderr, and read as sentences.

With a secret saying "ssl": false every connection logs a warning. In human mode it must appear on stderr as
one line for a person; with --json as the Lambda's JSON log line, on stderr too, so stdout stays one document.
"""

from __future__ import annotations

import json
import logging

import pytest

from rotation_tools.cli import main
from rotation_tools.logs import HumanLogFormatter

WARNING = 'without TLS because the secret says "ssl": false'


@pytest.mark.parametrize("command", ["rotate", "doctor", "repair"])
def test_human_mode_renders_the_function_logs_for_people_on_stderr(command, make_app_user, store_secret, sm,
                                                                   capsys):
    arn = store_secret(make_app_user())
    sm.enable_rotation(arn)

    code = main([command, "--secret-id", arn])

    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert WARNING not in out and '"level"' not in out, "stdout is the command's own output"
    warnings = [line for line in err.splitlines() if WARNING in line]
    assert warnings and all(line.startswith("warning: connecting to ") for line in warnings)
    assert '"level"' not in err, "no JSON for a person"


@pytest.mark.parametrize("command", ["rotate", "doctor", "repair"])
def test_json_mode_keeps_stdout_one_document_and_the_logs_json(command, make_app_user, store_secret, sm, capsys):
    arn = store_secret(make_app_user())
    sm.enable_rotation(arn)

    main([command, "--secret-id", arn, "--json"])

    out, err = capsys.readouterr()
    json.loads(out)
    lines = [json.loads(line) for line in err.splitlines() if "without TLS" in line]
    assert lines and all(line["level"] == "WARNING" for line in lines)


@pytest.mark.parametrize(
    ("level", "extra", "expected"),
    [
        pytest.param(logging.WARNING, {}, "warning: the message", id="plain-warning"),
        pytest.param(logging.ERROR, {"error": "LoginRefused", "step": "setSecret"},
                     "error: the message [error=LoginRefused, step=setSecret]", id="error-with-its-code-and-step"),
        pytest.param(logging.INFO, {"unrelated": "x"}, "info: the message", id="other-keys-left-out"),
    ],
)
def test_a_log_record_reads_as_one_line(level, extra, expected):
    record = logging.LogRecord("secrets-rotation", level, __file__, 1, "the message", None, None)
    record.__dict__.update(extra)

    assert HumanLogFormatter().format(record) == expected
