"""`opsloop noc user add|list|remove`: the NOC's users, from the command line only.

There is no default user and no default password: the first admin is created here. A password is read
from the terminal (asked twice) or, when stdin is not a terminal, from its first line; never from the
command line, where other users of the machine could read it. Each change is also sent to the audit
topic when the broker answers (the file changes either way; a warning says when the record was not sent).
"""

from __future__ import annotations

import getpass
import sys

from opsloop.config.settings import Settings
from opsloop.ops.noc import Outbox, audit_record, users_file
from opsloop.ops.noc_auth import Role, UserStore


def read_password(stdin=None, prompt=getpass.getpass) -> str:
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = prompt("Password: ")
        if prompt("Password again: ") != first:
            raise ValueError("the passwords differ")
        return first
    return stdin.readline().rstrip("\r\n")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"


def _audit(settings: Settings, event: str, target: str, detail: str) -> None:
    outbox = Outbox(settings, log_level=0)  # one warning below, not the client's retry log
    try:
        outbox.send([("noc.audit", audit_record(event, _os_user(), "cli", target=target, source="cli",
                                                 detail=detail))], timeout_s=5.0)
    except Exception as exc:
        print(f"warning: audit record not sent ({type(exc).__name__}: {exc})", file=sys.stderr)
    finally:
        outbox.close(1.0)


def run_user_command(settings: Settings, args, stdin=None) -> int:
    store = UserStore(users_file(settings))
    if args.user_action == "list":
        users = store.list()
        if not users:
            print(f"no NOC users in {store.path}; add the first admin: opsloop noc user add NAME --role admin")
        for user in users:
            print(f"{user.name}\t{user.role.label}")
        return 0
    if args.user_action == "add":
        try:
            role = Role.parse(args.role)
            existed = store.get(args.name) is not None
            store.add(args.name, role, read_password(stdin), replace=args.replace)
        except ValueError as exc:
            print(f"opsloop noc user add: {exc}", file=sys.stderr)
            return 2
        print(f"{'updated' if existed else 'added'} {args.name} ({role.label}) in {store.path}")
        _audit(settings, "user_added", args.name, f"role {role.label}" + (", replaced" if existed else ""))
        return 0
    if not store.remove(args.name):
        print(f"opsloop noc user remove: no user {args.name!r} in {store.path}", file=sys.stderr)
        return 1
    print(f"removed {args.name} from {store.path}")
    _audit(settings, "user_removed", args.name, "removed")
    return 0
