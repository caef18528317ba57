"""A fresh interpreter playing one Lambda container: import the handler, then run the rotations it is sent.

Protocol (one JSON object per line on stdout): first ``{"import_ms": ...}``; then, for each ``<arn> <token>``
line read from stdin, ``{"steps": {step: ms}}`` or ``{"error": ...}``. The parent stages AWSPENDING before
each line, because moto's model lives in its process. The handler's own log lines go to /dev/null.
"""

from __future__ import annotations

import json
import os
import sys
import time

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = open(os.devnull, "w")

    started = time.perf_counter()
    from rotation import handler

    replies.write(json.dumps({"import_ms": (time.perf_counter() - started) * 1000}) + "\n")
    for line in sys.stdin:
        arn, token = line.split()
        steps: dict[str, float] = {}
        reply: dict[str, object] = {"steps": steps}
        try:
            for step in STEPS:
                had_psycopg = "psycopg" in sys.modules
                started = time.perf_counter()
                handler.rotate({"Step": step, "SecretId": arn, "ClientRequestToken": token}, None)
                steps[step] = (time.perf_counter() - started) * 1000
                if not had_psycopg and "psycopg" in sys.modules:
                    reply["psycopg_first_loaded_by"] = step
        except Exception as exc:
            # Our exceptions' messages are written to be logged: they never hold a secret value.
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
