"""Explain a stuck rotation ("A previous rotation isn't complete") and, with --apply, clear it safely.

Shows each labelled version of the secret, whether AWSPENDING sits on a version other than AWSCURRENT, whether
that version holds a value, and whether the AWSCURRENT and AWSPENDING credentials log in to the database.
Then it proposes one action:

  finish-rotation       AWSPENDING logs in and AWSCURRENT does not (the password was changed but never
                        published): move AWSCURRENT to the pending version, as finishSecret would
  remove-pending-label  AWSCURRENT logs in: drop the stale AWSPENDING label so the next rotation can start
  refuse                neither logs in, or the database cannot be reached to tell: nothing is changed
  nothing               no rotation is stuck

Without --apply nothing is changed. Secrets Manager and the database are reached the way the function reaches
them (AWS_ENDPOINT_URL_SECRETS_MANAGER, SECRETS_MANAGER_ENDPOINT, PGSSLROOTCERT, PGCONNECT_TIMEOUT...).

exit status: 0 nothing to repair, or repaired; 1 repair refused (or an error); 2 usage error;
3 a repair is needed and --apply was not given.
"""

from __future__ import annotations

import argparse
import json

HELP = "explain a stuck rotation's version stages and, with --apply, finish it or clear AWSPENDING safely"

EXIT_REPAIR_NEEDED = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-id", required=True, metavar="ID", help="the secret's name or ARN")
    parser.add_argument("--apply", action="store_true", help="carry out the proposed action (default: only explain)")
    parser.add_argument("--json", action="store_true", help="print the plan (and result) as JSON")


def run(args: argparse.Namespace) -> int:
    from rotation_tools.repair import Action, Repair

    repair = Repair.from_env()
    plan = repair.analyze(args.secret_id)
    result = repair.apply(plan) if args.apply else None
    if args.json:
        document = {"plan": plan.to_dict(), "result": result.to_dict() if result else None}
        print(json.dumps(document, indent=2))
    else:
        print(render(plan, result))
    if plan.action is Action.REFUSE:
        return 1
    if plan.action is Action.NOTHING or result is not None:
        return 0
    return EXIT_REPAIR_NEEDED


def render(plan, result=None) -> str:
    from rotation_tools.repair import Action

    lines = [f"secret {plan.secret_arn}", f"rotation enabled: {'yes' if plan.rotation_enabled else 'no'}", "",
             "versions:"]
    for state in plan.versions:
        labels = ", ".join(state.stages) or "(no label)"
        line = f"  {state.version_id}  {labels:<24}"
        if state.username:
            line += f"  user {state.username!r}"
        if state.login.value != "not-checked" or state.detail:
            line += f"  login: {state.login.value}"
        lines.append(line)
        if state.detail:
            lines.append(f"      {state.detail}")
    lines += ["", f"diagnosis: {plan.reason}", f"action: {plan.action.value}"]
    if result is not None:
        lines.append(f"result: {result.message}")
        lines += ["stages now:"] + [f"  {version}  {', '.join(stages)}" for version, stages in
                                    result.stages_after.items()]
    elif plan.action in {Action.FINISH_ROTATION, Action.REMOVE_PENDING}:
        lines.append("nothing changed: run again with --apply to do it")
    return "\n".join(lines)
