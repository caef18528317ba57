"""`rotation doctor`'s report is built from fields that cannot hold a password, never redacted after the fact.

Replacing the password as a substring of free text gives a short one away: with the password "e", marks appear
wherever an "e" was (``sslmod<redacted>=v<redacted>rify-full``) and spell out its positions. The report for a
short password must therefore read exactly as the report for a long random one.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import pytest
from helpers import can_login, connect
from psycopg import sql

from rotation.database import scram_verifier
from rotation_tools.cli import main

#: Timings and version ids differ between two runs and two secrets; everything else in a check must not.
_VARYING = re.compile(r"\d+(\.\d+)?\s*ms|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _set_password(cluster: dict[str, Any], role: str, password: str) -> None:
    with connect(cluster) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(conn, role, password))))


def _doctor(arn: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["doctor", "--secret-id", arn, *flags])
    return code, capsys.readouterr().out


def _checks(document: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    return [(check["name"], check["status"], check["detail"], check["fix"]) for check in document["checks"]]


def _comparable(document: dict[str, Any], arn: str) -> list[tuple[str, str, str, str | None]]:
    return [(name, status, _VARYING.sub("", detail.replace(arn, "ARN")), fix)
            for name, status, detail, fix in _checks(document)]


@pytest.mark.parametrize(
    "short_password",
    [
        pytest.param("e", id="one-letter-in-every-word"),
        pytest.param("s", id="s"),
        pytest.param("1", id="digit-in-versions-and-ports"),
        pytest.param("ok", id="a-status-word"),
        pytest.param("full", id="part-of-verify-full"),
        pytest.param("postgres", id="the-database-name"),
    ],
)
def test_a_short_password_leaves_no_mark_in_the_report(short_password, make_app_user, cluster, store_secret,
                                                       capsys):
    user = make_app_user()
    long_arn = store_secret(user)
    _, long_json = _doctor(long_arn, capsys, "--json")

    _set_password(cluster, user["username"], short_password)
    short_user = {**user, "password": short_password}
    assert can_login(short_user)
    short_arn = store_secret(short_user)
    _, short_json = _doctor(short_arn, capsys, "--json")
    _, short_table = _doctor(short_arn, capsys)

    long_report, short_report = json.loads(long_json), json.loads(short_json)
    assert short_report["status"] != "fail"
    assert "redacted" not in short_json and "redacted" not in short_table
    assert _comparable(short_report, short_arn) == _comparable(long_report, long_arn)
    _set_password(cluster, user["username"], secrets.token_urlsafe(24))  # a role left with "e" helps nobody


def test_a_long_password_is_nowhere_in_the_report(make_app_user, store_secret, capsys):
    user = make_app_user()
    arn = store_secret(user)

    code, out = _doctor(arn, capsys, "--json")
    _, table = _doctor(arn, capsys)

    assert code == 0
    assert user["password"] not in out and user["password"] not in table
