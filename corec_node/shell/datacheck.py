"""The data directory checked as a whole: at the node's start, and by ``corec-node check``,
``recover`` and ``restore``.

At start (``start_check``, before the store is opened; the node holds the directory lock):

1. The store: its header, then ``PRAGMA quick_check`` within ``START_CHECK_SECONDS``
   (``storage/verify.py``). A store too large to read in that time starts unchecked past
   that point: the node logs ``storage_check_incomplete`` and names the offline check.
2. ``vote.json`` and ``voters.json``: their checksums (``datadir.py``). A file written by
   an older corec-node, without one, is accepted and rewritten with one.
3. The vote against the term row of the store (``LocalStore.note_term``: every write that
   carries a term raises it). A vote file older than that row, or missing while the row
   holds a term, is not trusted: the node may have voted in that term after the file it
   sees was written. It starts at the row's term with ``VOTE_UNKNOWN``: it grants no vote
   in that term and votes again from the next one (bumping the term instead would make a
   returning node depose a healthy leader).
4. A restored or recovered directory (``datadir.mark_restored``) lost its voter
   configuration on purpose: a restored vote and store could both be older than what the
   node acknowledged, so it rejoins as a non-voter, the way a node started with --join
   does (voters rule 6), and votes only once its leader's configuration names it again. It
   must be started with --join (without one it would found a cluster of its own); the mark
   is cleared once a configuration from a leader is stored.
5. A node that left its cluster (``datadir.mark_left``, written by ``leave``) does not
   rejoin from its member snapshot, as Serf's default: it starts only with --join (or
   ``mesh.rejoin_after_leave``), and the mark is cleared then.

A damaged store or file stops the node with ONE line that names the file and the way out,
and exit code 65 (``cli.EXIT_DAMAGED``), which the systemd units do not restart.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corec_node import log
from corec_node.shell.datadir import (
    RESTORED_FILE,
    VOTE_FILE,
    VOTE_UNKNOWN,
    VOTERS_FILE,
    DamagedFile,
    StoredConfig,
    clear_left,
    clear_restored,
    left_mark,
    load_vote,
    mark_restored,
    parse_vote,
    parse_voters,
    read_sealed,
    restored_mark,
    save_vote,
    save_voters,
    set_aside,
)
from corec_node.storage.backup import copy_store
from corec_node.storage.migrations import CORE_SQLITE
from corec_node.storage.verify import (
    Salvage,
    StoreCheck,
    check_store,
    connect,
    is_damage,
    note_term,
    salvage,
    stored_term,
)

# 10 s reads about 4 GB from a page cache and 0.2-1 GB from an SD card; the units give a
# start 30 s (TimeoutStartSec) and the mesh process's start needs its share of them
START_CHECK_SECONDS = 10.0


class DataDirDamaged(Exception):
    """A store or file the node must not act on; the message is the one line to show."""


class NeedsJoin(Exception):
    """A restored data directory started without --join; the message says why."""


class RestoreRefused(Exception):
    """A backup that cannot be restored (not a store, or from a newer corec-node)."""


@dataclass(slots=True)
class FileReport:
    """One file as a check found it: ``state`` is ok, new (not there yet, as on a new
    node), note (acted on at start, nothing to repair) or damaged."""

    name: str
    path: Path
    state: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"file": self.name, "path": str(self.path), "state": self.state, "detail": self.detail}


@dataclass(slots=True)
class Report:
    """What ``check_data_dir`` found."""

    data_dir: Path
    live: bool
    store: StoreCheck
    files: list[FileReport] = field(default_factory=list)
    vote: tuple[int, str | None] | None = None
    vote_legacy: bool = False
    voters: StoredConfig | None = None
    voters_legacy: bool = False
    restored: dict[str, Any] | None = None

    @property
    def damaged(self) -> bool:
        return any(f.state == "damaged" for f in self.files)

    @property
    def healthy(self) -> bool:
        return not self.damaged and not self.store.too_new

    def file(self, name: str) -> FileReport:
        return next(f for f in self.files if f.name == name)

    def trusted_vote(self) -> tuple[int, str | None, str | None]:
        """``(term, voted_for, why it is not the file's)``: the vote the node starts with."""
        stored = self.store.term
        if self.vote is None:
            if stored > 0:
                return stored, VOTE_UNKNOWN, f"{VOTE_FILE} is missing and the store recorded term {stored}"
            return 0, None, None
        term, voted = self.vote
        if stored > term:
            return stored, VOTE_UNKNOWN, f"{VOTE_FILE} holds term {term}, older than term {stored} the store recorded"
        return term, voted, None

    def damage_line(self, way_out: str) -> str:
        """The one line a damaged directory stops the node with."""
        parts = [f"{f.path} is damaged ({f.detail})" for f in self.files if f.state == "damaged"]
        return "; ".join(parts) + f": {way_out}"

    def as_json(self) -> dict[str, Any]:
        s = self.store
        return {
            "data_dir": str(self.data_dir), "healthy": self.healthy, "damaged": self.damaged, "live": self.live,
            "files": [f.as_json() for f in self.files],
            "store": {"path": str(s.path), "exists": s.exists, "size": s.size, "check": s.kind,
                      "complete": s.complete, "seconds": round(s.seconds, 3), "problems": s.problems,
                      "schema_version": s.schema_version, "schema_known": len(CORE_SQLITE), "term": s.term},
        }

    def render(self) -> str:
        width = max(len(f.name) for f in self.files)
        lines = [f"{f.name.ljust(width)}  {f.state.upper() if f.state == 'damaged' else f.state:<7}  {f.detail}"
                 for f in self.files]
        if self.live:
            lines.append("(a node is running on this directory: checked read-only)")
        if self.damaged:
            lines.append(f"damaged: stop the node, then run `corec-node recover --data-dir {self.data_dir}`")
        elif self.store.too_new:
            lines.append("not usable by this corec-node: its store was migrated by a newer one")
        else:
            lines.append("healthy")
        return "\n".join(lines)


def _store_report(s: StoreCheck) -> FileReport:
    name = s.path.name
    if not s.exists:
        return FileReport(name, s.path, "new", "no store yet: the node creates it")
    if s.damaged:
        return FileReport(name, s.path, "damaged", s.reason())
    size = f"{s.size / 2**20:.1f} MiB"
    if s.schema_version is None:
        return FileReport(name, s.path, "new", f"{size}, no tables yet")
    if s.too_new:
        return FileReport(name, s.path, "note", f"schema version {s.schema_version}, newer than {len(CORE_SQLITE)} "
                          "(the newest this corec-node knows): upgrade corec-node")
    done = f"{s.kind} passed in {s.seconds:.2f} s" if s.complete else \
        f"{s.kind} not finished in {s.seconds:.1f} s (what was read is sound)"
    return FileReport(name, s.path, "ok" if s.complete else "note",
                      f"{size}, schema {s.schema_version}, term {s.term}, {done}")


def check_data_dir(data_dir: Path, sqlite_path: Path, *, full: bool = False, budget: float | None = None,
                   readonly: bool = True, live: bool = False) -> Report:
    """Check the store, the vote and the voter configuration; writes nothing (``readonly``
    False only lets SQLite replay its WAL, as at start)."""
    report = Report(data_dir, live, check_store(sqlite_path, full=full, budget=budget, readonly=readonly))
    report.files.append(_store_report(report.store))

    path = data_dir / VOTE_FILE
    try:
        sealed = read_sealed(path)
        if sealed is not None:
            report.vote, report.vote_legacy = parse_vote(sealed, path), sealed.legacy
    except DamagedFile as exc:
        report.files.append(FileReport(VOTE_FILE, path, "damaged", exc.reason))
    else:
        term, voted, why = report.trusted_vote()
        if why is not None:
            detail = f"not trusted: {why}; the node starts at term {term} and votes in none before {term + 1}"
            report.files.append(FileReport(VOTE_FILE, path, "note", detail))
        elif report.vote is None:
            report.files.append(FileReport(VOTE_FILE, path, "new", "no vote yet"))
        else:
            who = "no one" if voted is None else voted if voted != VOTE_UNKNOWN else \
                "unknown (it may have voted in this term: it votes again from the next)"
            legacy = "; no checksum (an older corec-node wrote it): added at start" if report.vote_legacy else ""
            report.files.append(FileReport(VOTE_FILE, path, "note" if legacy else "ok",
                                           f"term {term}, voted for {who}{legacy}"))

    path = data_dir / VOTERS_FILE
    try:
        sealed = read_sealed(path)
        if sealed is not None:
            report.voters, report.voters_legacy = parse_voters(sealed, path), sealed.legacy
    except DamagedFile as exc:
        report.files.append(FileReport(VOTERS_FILE, path, "damaged", exc.reason))
    else:
        if report.voters is None:
            report.files.append(FileReport(VOTERS_FILE, path, "new", "no voter configuration stored"))
        else:
            index, term, voters, _, _ = report.voters
            names = ", ".join(n for n, _ in voters) or "none"
            legacy = "; no checksum (an older corec-node wrote it): added at start" if report.voters_legacy else ""
            report.files.append(FileReport(VOTERS_FILE, path, "note" if legacy else "ok",
                                           f"configuration {index} (term {term}): {names}{legacy}"))

    report.restored = restored_mark(data_dir)
    if report.restored is not None:
        report.files.append(FileReport(RESTORED_FILE, data_dir / RESTORED_FILE, "note",
                                       "restored or recovered: the node must start with --join and rejoins as a "
                                       "non-voter until its leader adds it"))
    return report


def way_out(data_dir: Path, config_source: str | None = None) -> str:
    opt = f"--data-dir {data_dir}" + (f" --config {config_source}" if config_source else "")
    return f"run `corec-node check {opt}`, then `corec-node recover {opt}`"


# -- the node's start --------------------------------------------------------------------


def start_check(config: Any) -> tuple[int, str | None]:
    """The checks the node runs before it opens its store (module docstring); returns the
    vote it starts with. DataDirDamaged: exit 65; NeedsJoin: exit 2."""
    data_dir = config.data_dir
    source = config.source if config.source != "<defaults>" else None
    report = check_data_dir(data_dir, config.sqlite_path, budget=START_CHECK_SECONDS, readonly=False)
    if report.damaged:
        raise DataDirDamaged(report.damage_line(way_out(data_dir, source)))
    store = report.store
    if not store.complete:
        log.event("storage_check_incomplete", logging.WARNING, file=str(store.path), size=store.size,
                  seconds=round(store.seconds, 1),
                  detail=f"the store is too large to check in {START_CHECK_SECONDS:g} s at start; check it fully with "
                         f"the node stopped: corec-node check --data-dir {data_dir}")
    if report.restored is not None:
        if report.voters is not None and report.voters[0] > 0:
            clear_restored(data_dir)
            log.event("restore_completed", detail="a leader's voter configuration is stored: rejoined")
        elif not any(a != config.advertise for a in config.mesh.join):
            raise NeedsJoin(
                f"{data_dir} was restored or recovered: start the node with --join HOST:PORT (a member of its "
                f"cluster) so it rejoins as a non-voter; if it was alone in its cluster, remove "
                f"{data_dir / RESTORED_FILE} to found a new one")
        else:
            log.event("restored_rejoining", logging.WARNING,
                      detail="restored or recovered data directory: rejoining as a non-voter until the leader adds it")
    left = left_mark(data_dir)
    if left is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(left)) if left else "(time unknown)"
        if config.mesh.rejoin_after_leave or any(a != config.advertise for a in config.mesh.join):
            clear_left(data_dir)
            log.event("rejoining_after_leave", left_at=when,
                      detail="--join given" if config.mesh.join else "mesh.rejoin_after_leave is true")
        else:
            raise NeedsJoin(
                f"this node left its cluster with `corec-node leave` at {when} and does not rejoin by itself "
                f"(mesh.rejoin_after_leave = false): start it with --join HOST:PORT, or set "
                f"mesh.rejoin_after_leave = true to rejoin from its member snapshot")
    term, voted, why = report.trusted_vote()
    if why is not None:
        save_vote(data_dir, term, voted)
        log.event("vote_untrusted", logging.WARNING, term=term, reason=why,
                  detail=f"starting at term {term} with no vote to give in it")
    elif report.vote_legacy and report.vote is not None:
        save_vote(data_dir, term, voted)
        log.event("checksum_added", file=VOTE_FILE)
    if report.voters_legacy and report.voters is not None:
        save_voters(data_dir, *report.voters)
        log.event("checksum_added", file=VOTERS_FILE)
    return term, voted


async def open_store(config: Any) -> Any:
    """``LocalStore.for_config``, with damage SQLite meets only now (in a part of a large
    store the start check had no time to read) stopping the node like the start check."""
    from corec_node.storage import LocalStore

    try:
        return await LocalStore.for_config(config)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        source = config.source if config.source != "<defaults>" else None
        raise DataDirDamaged(f"{config.sqlite_path} is damaged ({exc}): {way_out(config.data_dir, source)}") from None


# -- recover -----------------------------------------------------------------------------


@dataclass(slots=True)
class Recovery:
    """What ``recover_data_dir`` did, for the CLI to print."""

    before: Report
    after: Report
    lines: list[str]
    aside: Path | None = None
    moved: list[Path] = field(default_factory=list)
    salvage: Salvage | None = None
    term: int | None = None
    rejoin: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "healthy": self.after.healthy, "recovered": self.aside is not None,
            "moved_aside": [str(p) for p in self.moved], "term": self.term, "needs_join": self.rejoin,
            "messages": self.lines, "check": self.after.as_json(),
        }
        if self.salvage is not None:
            out["salvage"] = {"error": self.salvage.error, "note": self.salvage.note, "tables": [
                {"table": t.table, "copied": t.copied, "refused": t.refused, "error": t.error,
                 "lost": [{"after_rowid": a, "upto_rowid": b} for a, b in t.lost]} for t in self.salvage.tables]}
        return out


async def _new_store(path: Path) -> None:
    from corec_node.storage import LocalStore

    await (await LocalStore.open(path)).close()


def _describe(result: Salvage, name: str) -> list[str]:
    if result.error is not None:
        return [f"{name}: nothing could be read from the damaged file ({result.error}); the new store is empty"]
    parts = []
    for t in result.tables:
        if t.error is not None:
            parts.append(f"{t.table} unreadable ({t.error})")
            continue
        if not (t.copied or t.lost or t.refused):
            continue
        lost = "; ".join(f"rows after rowid {a:,} " + ("to the end" if b is None else f"up to {b:,}") + " lost"
                         if a > -2**63 else "rows " + ("to the end" if b is None else f"up to rowid {b:,}") + " lost"
                         for a, b in t.lost)
        refused = f"; {t.refused:,} unreadable rows refused" if t.refused else ""
        parts.append(f"{t.table} {t.copied:,} row{'' if t.copied == 1 else 's'}" + (f" ({lost})" if lost else "") + refused)
    how = f" ({result.note})" if result.note else ""
    return [f"{name}: rebuilt with what could be read{how}: " + (", ".join(parts) or "no rows")]


def _vote_line(term: int) -> str:
    if not term:
        return "vote: none recorded (term 0)"
    return (f"vote: term {term} with no vote to give in it (this node may have voted in term {term}; "
            f"it votes again from term {term + 1})")


def recover_data_dir(data_dir: Path, sqlite_path: Path) -> Recovery:
    """Rebuild what can be rebuilt of a damaged data directory (the caller holds its lock):
    damaged files are moved aside and kept, the store is rebuilt from what SQLite can still
    read, the vote keeps the highest known term with no vote in it."""
    before = check_data_dir(data_dir, sqlite_path, full=True, readonly=False)
    if not before.damaged:
        return Recovery(before, before, ["nothing to recover: no damage found (see `corec-node check`)"])
    store_bad = before.store.damaged
    vote_bad = any(f.name == VOTE_FILE and f.state == "damaged" for f in before.files)
    voters_bad = any(f.name == VOTERS_FILE and f.state == "damaged" for f in before.files)
    paths = []
    if store_bad:
        paths += [sqlite_path, sqlite_path.with_name(sqlite_path.name + "-wal"),
                  sqlite_path.with_name(sqlite_path.name + "-shm")]
    if vote_bad:
        paths.append(data_dir / VOTE_FILE)
    if voters_bad:
        paths.append(data_dir / VOTERS_FILE)
    aside, moved = set_aside(data_dir, paths, "damaged")
    rec = Recovery(before, before, [f"moved aside, kept for inspection: {', '.join(str(p) for p in moved)}"],
                   aside=aside, moved=moved)
    term = max(before.vote[0] if before.vote is not None else 0, before.store.term)
    if store_bad:
        asyncio.run(_new_store(sqlite_path))
        rec.salvage = salvage(aside / sqlite_path.name, sqlite_path)
        term = max(term, rec.salvage.term)
        rec.lines += _describe(rec.salvage, sqlite_path.name)
        rec.lines.append("the member snapshot was dropped: it is re-learned from peers when the node rejoins")
        rec.lines.append("block state will be rebuilt from the cluster on rejoin")
    if store_bad or vote_bad:
        note_term(sqlite_path, term)
        save_vote(data_dir, term, VOTE_UNKNOWN if term else None)
        rec.term = term
        rec.lines.append(_vote_line(term))
    if voters_bad:
        rec.lines.append("voter configuration: dropped; the leader's is stored when the node rejoins")
    if store_bad or voters_bad:
        mark_restored(data_dir, reason="recover", aside=str(aside), term=term)
        rec.rejoin = True
        rec.lines.append("start the node with --join HOST:PORT (a member of its cluster): it rejoins as a "
                         "non-voter until its leader adds it again")
    rec.after = check_data_dir(data_dir, sqlite_path, full=True, readonly=False)
    return rec


# -- restore -----------------------------------------------------------------------------


def _old_term(data_dir: Path, sqlite_path: Path) -> int:
    """The highest term the directory being replaced knew, as far as it can be read."""
    terms = [0]
    try:
        terms.append(load_vote(data_dir)[0])
    except DamagedFile:
        pass
    if sqlite_path.exists():
        try:
            conn = connect(sqlite_path, readonly=True)
            try:
                terms.append(stored_term(conn))
            finally:
                conn.close()
        except (sqlite3.Error, OSError):  # a damaged store being replaced: its term is lost with it
            pass
    return max(terms)


def restore_data_dir(data_dir: Path, sqlite_path: Path, source: Path) -> dict[str, Any]:
    """Put the backup ``source`` in place as the store (the caller holds the lock): verified
    first (integrity_check), what it replaces is moved aside, the vote keeps the highest
    known term with no vote in it, and the directory is marked restored (module docstring,
    step 4). DataDirDamaged: the backup is damaged; RestoreRefused: not restorable here."""
    if not source.is_file():
        raise FileNotFoundError(f"no backup at {source}")
    check = check_store(source, full=True, readonly=True)
    if check.damaged:
        raise DataDirDamaged(f"{source} is damaged ({check.reason()}): not restored")
    if check.schema_version is None:
        raise RestoreRefused(f"{source} holds no corec-node store")
    if check.too_new:
        raise RestoreRefused(f"{source} has schema version {check.schema_version}, newer than "
                             f"{len(CORE_SQLITE)}: restore it with a newer corec-node")
    term = max(_old_term(data_dir, sqlite_path), check.term)
    replaced = [sqlite_path, sqlite_path.with_name(sqlite_path.name + "-wal"),
                sqlite_path.with_name(sqlite_path.name + "-shm"), data_dir / VOTE_FILE, data_dir / VOTERS_FILE]
    aside, moved = (None, []) if not any(p.exists() for p in replaced) else set_aside(data_dir, replaced, "replaced")
    sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    copied = copy_store(source, sqlite_path)
    note_term(sqlite_path, term)
    save_vote(data_dir, term, VOTE_UNKNOWN if term else None)
    mark_restored(data_dir, reason="restore", source=str(source), term=term)
    lines = [f"restored {sqlite_path} from {source} ({copied.size / 2**20:.1f} MiB, schema {check.schema_version})"]
    if moved:
        lines.append(f"moved aside, kept: {', '.join(str(p) for p in moved)}")
    lines += [_vote_line(term),
              ("start the node with --join HOST:PORT (a member of its cluster): it rejoins as a non-voter until "
               "its leader adds it again; block state newer than the backup is re-learned from the cluster")]
    return {"restored": str(sqlite_path), "source": str(source), "size": copied.size,
            "schema_version": check.schema_version, "term": term, "needs_join": True,
            "moved_aside": [str(p) for p in moved], "aside": str(aside) if aside else None, "messages": lines}
