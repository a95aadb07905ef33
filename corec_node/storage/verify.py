"""Checks of a SQLite store from outside the node, and salvage of what a damaged one still
holds. Synchronous (stdlib ``sqlite3``): they run before the node opens its store, and in
``corec-node check``, ``recover`` and ``restore``.

Why before opening: SQLite reads a damaged page only when a query reaches it, so a node
could run for hours on a file SQLite calls malformed, counting no error, and migrate or
write into it meanwhile.

What is checked, cheapest first: the header (the magic string, the page size, and the
length the header records against the file's, so a truncated or overwritten header is
named as such), then ``PRAGMA quick_check``, which reads every page once and checks each
b-tree and record (``integrity_check``, with ``full``, also matches every index against
its table: about 15 times slower).

How long it takes, and very large files: quick_check reads about 0.4 GB/s from the page
cache of a small server and 20-100 MB/s from an SD card or a cold disk, so a check may be
given a ``budget`` in seconds (``sqlite3_interrupt`` when it runs out). The node's start
check has one (``shell/datacheck.py``: ``START_CHECK_SECONDS``): a store too large to read
in it is not fully checked at start; the node starts, logs ``storage_check_incomplete`` and
asks for an offline ``corec-node check``, which has no budget. What the header check finds
is found whatever the size.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from corec_node.storage.migrations import CORE_SQLITE

MAGIC = b"SQLite format 3\x00"
MAX_PROBLEMS = 20  # problems a check lists; one is enough to call the file damaged
BATCH = 500  # rows salvaged per read
MAX_ROWID = 2**63 - 1
REBUILT = ".header-rebuilt"  # the copy salvage reads when the header is destroyed
TERM_KEY = "term_seen"  # meta row: the highest term the node recorded (LocalStore.note_term)


class CheckInterrupted(Exception):
    """The budget ran out before SQLite finished."""


def is_damage(exc: BaseException) -> bool:
    """A SQLite error that says the file is damaged (corrupt, not a database, unreadable),
    as opposed to one about access (permissions, a lock)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR"))


@dataclass(slots=True)
class StoreCheck:
    """What a check found. ``problems`` empty: nothing wrong found; ``complete`` False: the
    budget ran out first (what was read so far was sound)."""

    path: Path
    exists: bool = False
    size: int = 0
    kind: str = "quick_check"
    problems: list[str] = field(default_factory=list)
    complete: bool = True
    seconds: float = 0.0
    schema_version: int | None = None
    term: int = 0

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    @property
    def too_new(self) -> bool:
        return self.schema_version is not None and self.schema_version > len(CORE_SQLITE)

    def reason(self) -> str:
        """The first problem, on one line."""
        if not self.problems:
            return ""
        first = self.problems[0]
        more = len(self.problems) - 1
        return first[:200] + (f", and {more}{'+' if len(self.problems) >= MAX_PROBLEMS else ''} more" if more > 0 else "")


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Open an existing file only (never create one); ``readonly`` is safe beside a live
    node: a WAL reader sees one consistent snapshot and blocks no writer."""
    uri = Path(path).resolve().as_uri() + ("?mode=ro" if readonly else "?mode=rw")
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)


def header_problem(path: Path) -> str | None:
    """What the file's first 100 bytes say is wrong, or None."""
    size = path.stat().st_size
    if size == 0:
        return None  # SQLite treats an empty file as a new database
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100:
        return f"{size} bytes: shorter than an SQLite header"
    if head[:16] != MAGIC:
        return "not an SQLite database: its header is damaged"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return f"header damaged (page size {page})"
    pages = int.from_bytes(head[28:32], "big")
    valid = head[24:28] == head[92:96]  # the recorded length counts only when these agree
    wal = path.with_name(path.name + "-wal")
    # after a crash mid-checkpoint the file may be short of what page 1 says; the WAL
    # still holds the rest, so the length is judged only without one
    if valid and pages and size < pages * page and not (wal.exists() and wal.stat().st_size):
        return f"truncated: {size:,} bytes, its header records {pages * page:,}"
    return None


def _lines(rows: list[tuple[str]]) -> list[str]:
    out = []
    for (text,) in rows:
        for line in str(text).splitlines():
            if line and line != "ok" and not line.startswith("*** in database"):
                out.append(line)
    return out


def stored_term(conn: sqlite3.Connection) -> int:
    """The highest term the store recorded: the term row, the election row, the nucleus."""
    terms = []
    for sql in (f"SELECT CAST(value AS INTEGER) FROM meta WHERE key = '{TERM_KEY}'",
                "SELECT term FROM election WHERE id = 1", "SELECT term FROM nucleus WHERE id = 1"):
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.DatabaseError:
            continue  # a table an older or damaged file lacks
        if row and row[0] is not None:
            terms.append(int(row[0]))
    return max(terms, default=0)


def check_store(path: str | Path, *, full: bool = False, budget: float | None = None,
                readonly: bool = True) -> StoreCheck:
    """Check the store at ``path``. Errors that are not about damage (permissions, a lock
    held too long) are raised, not reported."""
    path = Path(path)
    result = StoreCheck(path, kind="integrity_check" if full else "quick_check")
    if not path.exists():
        return result
    result.exists = True
    result.size = path.stat().st_size
    started = time.monotonic()
    problem = header_problem(path)
    if problem is not None:
        result.problems.append(problem)
        return result
    conn = connect(path, readonly=readonly)
    # sqlite3_interrupt from a timer: the b-tree walk is one long VM step, which a progress
    # handler never sees, but it looks at the interrupt flag on every page
    timer = threading.Timer(budget, conn.interrupt) if budget is not None else None
    try:
        if timer is not None:
            timer.start()
        try:
            result.problems += _lines(conn.execute(f"PRAGMA {result.kind}({MAX_PROBLEMS})").fetchall())
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_INTERRUPT":
                result.complete = False
            elif is_damage(exc):
                result.problems.append(str(exc))
            else:
                raise
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()  # a late interrupt lands before the next query, on no statement: a no-op
        if not result.problems:
            _schema(conn, result)
    finally:
        conn.close()
        result.seconds = time.monotonic() - started
    return result


def _schema(conn: sqlite3.Connection, result: StoreCheck) -> None:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return  # a new, empty database: the node creates its tables
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() if "meta" in tables else None
        if row is None:
            result.problems.append("no schema version: not a corec-node store, or its meta table is lost")
            return
        result.schema_version = int(row[0])
        result.term = stored_term(conn)
    except (sqlite3.DatabaseError, ValueError) as exc:
        result.problems.append(f"cannot read the schema: {exc}")


def note_term(path: Path, term: int) -> None:
    """Raise the store's term row to ``term`` (offline: restore and recover)."""
    conn = connect(path, readonly=False)
    try:
        conn.execute(f"INSERT INTO meta (key, value) VALUES ('{TERM_KEY}', ?) ON CONFLICT (key) DO UPDATE "
                     "SET value = excluded.value WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)",
                     (str(int(term)),))
    finally:
        conn.close()


# -- salvage -----------------------------------------------------------------------------


@dataclass(slots=True)
class TableSalvage:
    """One table copied from a damaged store: rows copied, rows the new schema refused,
    rowid ranges that could not be read (``(after, upto)``: rows after one rowid up to and
    including the other; ``upto`` None: to the end), or why nothing could be read."""

    table: str
    copied: int = 0
    refused: int = 0
    lost: list[tuple[int, int | None]] = field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class Salvage:
    tables: list[TableSalvage]
    term: int  # the highest term the readable part recorded (term row, election, nucleus, audit)
    error: str | None = None  # the file could not be opened at all
    note: str | None = None  # how it was opened, when that took a repair (a rebuilt header)


def salvage(src: Path, dst: Path, *, skip: frozenset[str] = frozenset({"meta", "members"})) -> Salvage:
    """Copy what can still be read of the damaged store ``src`` into the new store ``dst``
    (already created with the current schema), table by table and row by row in rowid
    order, stepping over unreadable pages. Indexes are rebuilt by the inserts. Tables in
    ``skip`` are left as the new store has them."""
    out = Salvage([], 0)
    target = connect(dst, readonly=False)
    try:
        tables = [r[0] for r in target.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        try:
            source, out.note = _open_damaged(src)
        except sqlite3.DatabaseError as exc:
            out.error = str(exc)
            return out
        try:
            try:
                out.term = stored_term(source)
            except sqlite3.DatabaseError:
                pass
            for table in tables:
                if table not in skip:
                    out.tables.append(_copy_table(source, target, table))
            row = target.execute("SELECT max(term) FROM audit").fetchone()
            out.term = max(out.term, int(row[0] or 0), stored_term(target))
        finally:
            source.close()
            src.with_name(src.name + REBUILT).unlink(missing_ok=True)
        _rebuild_owner_ticks(target)
    finally:
        target.close()
    return out


def _readable(path: Path) -> sqlite3.Connection:
    conn = connect(path, readonly=True)
    try:
        # a truncated file: read the pages that are there instead of refusing the file
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _open_damaged(src: Path) -> tuple[sqlite3.Connection, str | None]:
    """A read-only connection to the damaged file; with a header destroyed, to a copy with
    a rebuilt one (for each page size SQLite allows, until its schema reads)."""
    try:
        return _readable(src), None
    except sqlite3.DatabaseError as exc:
        if header_problem(src) is None or "truncated" in (header_problem(src) or ""):
            raise
        error = exc
    copy = src.with_name(src.name + REBUILT)
    size = src.stat().st_size
    for page in (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512):
        with open(src, "rb") as f, open(copy, "wb") as out:
            f.seek(100)
            out.write(_header(page, size // page))
            while chunk := f.read(1 << 20):
                out.write(chunk)
        try:
            return _readable(copy), f"its header was rebuilt (page size {page})"
        except sqlite3.DatabaseError:
            continue
    copy.unlink(missing_ok=True)
    raise error


def _header(page: int, pages: int) -> bytes:
    """A valid database header (rollback journal, UTF-8, schema format 4, no free list)."""
    head = bytearray(100)
    head[:16] = MAGIC
    head[16:18] = (1 if page == 65536 else page).to_bytes(2, "big")
    head[18:24] = bytes([1, 1, 0, 64, 32, 32])
    head[24:28] = (1).to_bytes(4, "big")  # change counter
    head[28:32] = pages.to_bytes(4, "big")
    head[40:44] = (1).to_bytes(4, "big")  # schema cookie
    head[44:48] = (4).to_bytes(4, "big")  # schema format
    head[56:60] = (1).to_bytes(4, "big")  # UTF-8
    head[92:96] = (1).to_bytes(4, "big")  # valid for change counter 1
    major, minor, patch = sqlite3.sqlite_version_info
    head[96:100] = (major * 1_000_000 + minor * 1000 + patch).to_bytes(4, "big")
    return bytes(head)


def _columns(conn: sqlite3.Connection, table: str) -> tuple[list[str], bool]:
    """The table's columns, and whether one of them is the rowid (INTEGER PRIMARY KEY)."""
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    pks = [r for r in info if r[5]]
    alias = len(pks) == 1 and str(pks[0][2]).upper() == "INTEGER"
    return [r[1] for r in info], alias


def _copy_table(source: sqlite3.Connection, target: sqlite3.Connection, table: str) -> TableSalvage:
    result = TableSalvage(table)
    cols, alias = _columns(target, table)
    names = cols if alias else ["rowid", *cols]
    select = f'SELECT rowid, {", ".join(cols)} FROM "{table}" WHERE rowid > ? ORDER BY rowid'
    insert = (f'INSERT OR REPLACE INTO "{table}" ({", ".join(names)}) '
              f'VALUES ({", ".join("?" * len(names))})')
    after = -MAX_ROWID - 1
    target.execute("BEGIN")
    try:
        while True:
            batch, failed = _read(source, select, after)
            if batch is None:  # the table cannot be read at all (schema or root page)
                result.error = failed
                break
            if batch:
                _write(target, insert, [r if not alias else r[1:] for r in batch], result)
                top = max(r[0] for r in batch)  # a damaged page may hold rowids out of order
                if top <= after:
                    failed = failed or "rowids out of order"
                after = max(after, top)
            if failed is None:
                if len(batch) < BATCH:
                    break
                continue
            resume = _next_readable(source, select, after)
            result.lost.append((after, None if resume is None else resume))
            if resume is None:
                break
            after = resume
        target.execute("COMMIT")
    except BaseException:
        target.execute("ROLLBACK")
        raise
    return result


def _read(source: sqlite3.Connection, select: str, after: int) -> tuple[list[tuple] | None, str | None]:
    """Up to BATCH rows after ``after``, stopping at an unreadable page: (rows, None) or
    (rows read before the damage, its error); (None, error) when nothing can be read."""
    rows: list[tuple] = []
    try:
        cur = source.execute(select, (after,))
        for row in cur:
            rows.append(row)
            if len(rows) >= BATCH:
                break
        cur.close()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc) and not rows and "no such" in str(exc):
            return None, str(exc)
        return rows, str(exc)
    return rows, None


def _next_readable(source: sqlite3.Connection, select: str, after: int) -> int | None:
    """The smallest rowid bound past ``after`` from which reading works again (ahead in
    doubling steps, then back by halves), or None when nothing further can be read."""
    def works(bound: int) -> bool:
        try:
            cur = source.execute(select, (bound,))
            cur.fetchone()
            cur.close()
            return True
        except sqlite3.DatabaseError:
            return False

    bad, step = after, 1
    while True:
        probe = after + step
        if probe >= MAX_ROWID:
            return None
        if works(probe):
            break
        bad, step = probe, step * 2
    good = probe
    while good - bad > 1:
        mid = (bad + good) // 2
        if works(mid):
            good = mid
        else:
            bad = mid
    return good


def _write(target: sqlite3.Connection, insert: str, rows: list[tuple], result: TableSalvage) -> None:
    try:
        target.executemany(insert, rows)
        result.copied += len(rows)
    except sqlite3.DatabaseError:
        for row in rows:  # a row the schema refuses (garbage read from a damaged page)
            try:
                target.execute(insert, row)
                result.copied += 1
            except sqlite3.DatabaseError:
                result.refused += 1


def _rebuild_owner_ticks(target: sqlite3.Connection) -> None:
    """Each owner's highest tick from what was salvaged, so a restarted engine keeps
    numbering its ticks upward (a lower tick would lose to the rows peers already hold)."""
    target.execute(
        "INSERT INTO owner_ticks (owner, tick) SELECT owner, max(tick) FROM "
        "(SELECT owner, tick FROM block_history UNION ALL SELECT owner, tick FROM block_state) "
        "WHERE true GROUP BY owner ON CONFLICT (owner) DO UPDATE SET tick = max(tick, excluded.tick)")
