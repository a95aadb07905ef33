"""``corec-node check | recover | backup | restore``: the data directory offline (or, for
``check`` and ``backup``, beside a running node). Exit codes as ``cli.py`` says: 65 for a
damaged data directory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from corec_node.cli import EXIT_DAMAGED, EXIT_FAIL, EXIT_OK, _common, _config, _fail


def add_cli(sub: Any) -> None:
    """``check``, ``recover``, ``backup`` and ``restore`` on ``corec-node``'s subparsers."""
    check = sub.add_parser("check", help="verify a data directory: store, vote, voter configuration",
                           description="Verify a data directory (read-only; safe beside a running node). "
                                       "Exit 0 healthy, 65 damaged, 1 when it cannot tell.")
    _common(check)
    check.add_argument("--full", action="store_true", help="PRAGMA integrity_check (also matches every index "
                                                           "against its table; slower) instead of quick_check")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=cmd_check)

    recover = sub.add_parser("recover", help="rebuild a damaged data directory (node stopped)",
                             description="Move damaged files aside (kept), rebuild the store from what SQLite can "
                                         "still read, keep the highest known term with no vote in it. The node "
                                         "then rejoins its cluster (--join) and re-learns members and block state.")
    _common(recover)
    recover.add_argument("--json", action="store_true", help="print JSON")
    recover.set_defaults(func=cmd_recover)

    backup = sub.add_parser("backup", help="copy the node's store, consistent even while the node runs")
    _common(backup)
    backup.add_argument("--to", metavar="FILE", required=True, help="the backup file to create (must not exist)")
    backup.add_argument("--json", action="store_true", help="print JSON")
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser("restore", help="put a backup in place as the store (node stopped)",
                             description="Verify the backup, move the store it replaces aside, and mark the data "
                                         "directory restored: the node rejoins as a non-voter (start it with --join).")
    _common(restore)
    restore.add_argument("--from", metavar="FILE", dest="source", required=True, help="a file made by `backup`")
    restore.add_argument("--json", action="store_true", help="print JSON")
    restore.set_defaults(func=cmd_restore)


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def cmd_check(args: argparse.Namespace) -> int:
    import sqlite3

    from corec_node.shell.datacheck import check_data_dir
    from corec_node.shell.datadir import held_lock

    config = _config(args)
    if not config.data_dir.is_dir():
        return _fail(f"no data directory at {config.data_dir}")
    try:
        with held_lock(config.data_dir) as ours:
            report = check_data_dir(config.data_dir, config.sqlite_path, full=args.full, live=not ours)
    except sqlite3.Error as exc:
        return _fail(f"cannot check {config.sqlite_path}: {exc}")
    _print(args, report.as_json(), report.render())
    return EXIT_DAMAGED if report.damaged else EXIT_OK if report.healthy else EXIT_FAIL


def cmd_recover(args: argparse.Namespace) -> int:
    from corec_node.shell.datacheck import recover_data_dir
    from corec_node.shell.datadir import held_lock

    config = _config(args)
    if not config.data_dir.is_dir():
        return _fail(f"no data directory at {config.data_dir}")
    with held_lock(config.data_dir) as ours:
        if not ours:
            return _fail(f"a node is running with data directory {config.data_dir}: stop it first")
        rec = recover_data_dir(config.data_dir, config.sqlite_path)
    _print(args, rec.as_json(), "\n".join([*rec.lines, "", rec.after.render()]))
    return EXIT_OK if rec.after.healthy else EXIT_DAMAGED


def cmd_backup(args: argparse.Namespace) -> int:
    import sqlite3

    from corec_node.storage.backup import copy_store
    from corec_node.storage.verify import is_damage

    config = _config(args)
    src = config.sqlite_path
    try:
        copied = copy_store(src, args.to)
    except (FileExistsError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:
        if is_damage(exc):
            print(f"corec-node: {src} is damaged ({exc}): not backed up", file=sys.stderr)
            return EXIT_DAMAGED
        return _fail(f"cannot back up {src}: {exc}")
    except OSError as exc:
        return _fail(f"cannot write {args.to}: {exc.strerror or exc}")
    check = copied.check
    if check.damaged:  # the store itself is damaged: the copy holds the same pages
        copied.path.unlink(missing_ok=True)
        print(f"corec-node: {src} is damaged ({check.reason()}): not backed up", file=sys.stderr)
        return EXIT_DAMAGED
    data = {"backup": str(copied.path), "source": str(src), "size": copied.size, "seconds": round(copied.seconds, 3),
            "schema_version": check.schema_version, "term": check.term}
    _print(args, data, f"backed up {src} to {copied.path}: {copied.size / 2**20:.1f} MiB, schema "
                       f"{check.schema_version}, term {check.term}, in {copied.seconds:.2f} s")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    import sqlite3
    from pathlib import Path

    from corec_node.shell.datacheck import DataDirDamaged, RestoreRefused, restore_data_dir
    from corec_node.shell.datadir import held_lock

    config = _config(args)
    with held_lock(config.data_dir) as ours:
        if not ours:
            return _fail(f"a node is running with data directory {config.data_dir}: stop it first")
        try:
            done = restore_data_dir(config.data_dir, config.sqlite_path, Path(args.source))
        except DataDirDamaged as exc:
            print(f"corec-node: {exc}", file=sys.stderr)
            return EXIT_DAMAGED
        except (RestoreRefused, FileNotFoundError, FileExistsError, sqlite3.Error) as exc:
            return _fail(str(exc))
    _print(args, done, "\n".join(done["messages"]))
    return EXIT_OK
