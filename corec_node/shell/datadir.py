"""Small durable files in the data directory: the data-directory lock, the election vote,
the voter configuration (``mesh/voters.py``) and the mark a restore leaves.

The vote is written atomically (temporary file, fsync, rename) before the node sends it,
so a crash leaves the old vote or the new one, and a restarted node cannot vote twice in
one term. It is a file rather than a SQLite row because the election core's effects are
carried out synchronously, in order, on the loop (a 100-byte fsync). The member snapshot
lives in SQLite (``storage.LocalStore``).

Every file written here carries a CRC-32 of its canonical body (``crc32``), so a damaged
file is told from a valid one before anything acts on it. A file without the field was
written by an older corec-node: it is read once and rewritten with it at the next start
(``shell/datacheck.py``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VOTE_FILE = "vote.json"
VOTERS_FILE = "voters.json"
LOCK_FILE = "node.lock"
RESTORED_FILE = "restored.json"
LEFT_FILE = "left.json"  # this node left its cluster with ``leave``: it does not rejoin by itself
# A vote whose candidate is not known: the node may have voted in this term, so it refuses
# every candidate until the term moves on. "" can never be a node's name (config.py: a name
# has 1 to 255 bytes), so no candidate matches it (election rule 2).
VOTE_UNKNOWN = ""


class DataDirBusy(Exception):
    """Another live node holds this data directory."""


class DataDirUnusable(Exception):
    """The data directory cannot be made or written (a file in the way, permissions, a
    read-only or full file system): a configuration problem, one line and exit 2."""


class DamagedFile(RuntimeError):
    """A file of the data directory cannot be trusted: unreadable, not what it should hold,
    or its checksum does not match its body."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is damaged ({reason})")


@dataclass(frozen=True, slots=True)
class Sealed:
    """A checksummed file as read: its body, and whether it came without a checksum (an
    older corec-node wrote it: accepted once, rewritten with one)."""

    body: dict[str, Any]
    legacy: bool


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _crc(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return f"{zlib.crc32(canonical):08x}"


def seal(body: dict[str, Any]) -> bytes:
    """The file's bytes: the body with its checksum."""
    return json.dumps({**body, "crc32": _crc(body)}).encode()


def read_sealed(path: Path) -> Sealed | None:
    """None when the file does not exist; DamagedFile when it cannot be trusted."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedFile(path, exc.strerror or str(exc)) from None
    try:
        row = json.loads(raw)
    except ValueError:
        raise DamagedFile(path, "not valid JSON" if raw.strip() else "empty") from None
    if not isinstance(row, dict):
        raise DamagedFile(path, "not a JSON object")
    crc = row.pop("crc32", None)
    if crc is None:
        return Sealed(row, legacy=True)
    if crc != _crc(row):
        raise DamagedFile(path, "checksum mismatch")
    return Sealed(row, legacy=False)


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory for the life of the process."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        cause = "a file, not a directory" if isinstance(exc, FileExistsError) else (exc.strerror or str(exc))
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != data_dir else ""
        raise DataDirUnusable(f"data directory {data_dir}: {cause}{where}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(f"another node is running with data directory {data_dir}") from None
    return fd


@contextmanager
def held_lock(data_dir: Path) -> Iterator[bool]:
    """The lock for an offline tool: True while this process holds it, False when a live
    node does (the tool may still read what is safe to read under a running node)."""
    try:
        fd = lock_data_dir(data_dir)
    except DataDirBusy:
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


# -- the vote -----------------------------------------------------------------------


def save_vote(data_dir: Path, term: int, voted_for: str | None) -> None:
    write_atomic(data_dir / VOTE_FILE, seal({"term": int(term), "voted_for": voted_for}))


def parse_vote(sealed: Sealed, path: Path) -> tuple[int, str | None]:
    try:
        voted = sealed.body.get("voted_for")
        term = sealed.body["term"]
        if not isinstance(term, int) or term < 0 or not (voted is None or isinstance(voted, str)):
            raise ValueError(f"term {term!r}, voted_for {voted!r}")
        return term, voted
    except (KeyError, ValueError) as exc:
        raise DamagedFile(path, f"not a vote: {exc}") from None


def load_vote(data_dir: Path) -> tuple[int, str | None]:
    """``(term, voted_for)``; ``(0, None)`` when no vote was ever stored. DamagedFile:
    refusing to start beats voting twice in a term we no longer remember."""
    path = data_dir / VOTE_FILE
    sealed = read_sealed(path)
    return (0, None) if sealed is None else parse_vote(sealed, path)


# -- the voter configuration -------------------------------------------------------------


StoredConfig = tuple[int, int, tuple[tuple[str, str], ...], str, tuple[tuple[str, str], ...]]


def save_voters(data_dir: Path, index: int, term: int, voters: tuple[tuple[str, str], ...], cluster: str,
                settings: tuple[tuple[str, str], ...] = ()) -> None:
    """The latest voter configuration, fsynced before it is acknowledged (voters rule 2),
    with the cluster's settings (rule 9; the key is absent when it holds none)."""
    row: dict[str, Any] = {"index": index, "term": term, "cluster": cluster,
                           "voters": [{"name": n, "addr": a} for n, a in voters]}
    if settings:
        row["settings"] = dict(settings)
    write_atomic(data_dir / VOTERS_FILE, seal(row))


def parse_voters(sealed: Sealed, path: Path) -> StoredConfig:
    row = sealed.body
    try:
        voters = tuple(sorted((str(v["name"]), str(v["addr"])) for v in row["voters"]))
        settings = tuple(sorted((str(k), str(v)) for k, v in row.get("settings", {}).items()))
        return int(row["index"]), int(row["term"]), voters, str(row["cluster"]), settings
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DamagedFile(path, f"not a voter configuration: {exc!r}") from None


def load_voters(data_dir: Path) -> StoredConfig | None:
    """``(index, term, voters, cluster, settings)``, or None when this node never stored one."""
    path = data_dir / VOTERS_FILE
    sealed = read_sealed(path)
    return None if sealed is None else parse_voters(sealed, path)


# -- a restored data directory ----------------------------------------------------------


def mark_restored(data_dir: Path, **details: Any) -> None:
    """The data directory was rebuilt (restore, recover): the node must rejoin its cluster
    as a non-voter, so it is started with --join until a leader's configuration is stored."""
    write_atomic(data_dir / RESTORED_FILE, seal({"at": time.time(), **details}))


def restored_mark(data_dir: Path) -> dict[str, Any] | None:
    """The mark's details; a damaged mark counts as a mark (it only ever asks for --join)."""
    try:
        sealed = read_sealed(data_dir / RESTORED_FILE)
    except DamagedFile as exc:
        return {"damaged": exc.reason}
    return None if sealed is None else sealed.body


def clear_restored(data_dir: Path) -> None:
    try:
        (data_dir / RESTORED_FILE).unlink()
    except FileNotFoundError:
        return
    fsync_dir(data_dir)


# -- a node that left --------------------------------------------------------------------


def mark_left(data_dir: Path) -> None:
    """``leave`` is an intent: like Serf, a node that left does not rejoin from its member
    snapshot when it starts again (``mesh.rejoin_after_leave`` to do so, or ``--join``)."""
    write_atomic(data_dir / LEFT_FILE, seal({"at": time.time()}))


def left_mark(data_dir: Path) -> float | None:
    """When the node left (0.0 for a mark that cannot be read: it still says it left)."""
    try:
        sealed = read_sealed(data_dir / LEFT_FILE)
    except DamagedFile:
        return 0.0
    return None if sealed is None else float(sealed.body.get("at", 0.0))


def clear_left(data_dir: Path) -> None:
    try:
        (data_dir / LEFT_FILE).unlink()
    except FileNotFoundError:
        return
    fsync_dir(data_dir)


def set_aside(data_dir: Path, paths: list[Path], why: str) -> tuple[Path, list[Path]]:
    """Move files into ``data_dir/<why>-<time>/`` (kept for a human, never deleted);
    returns that directory and the new paths of the files that existed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = data_dir / f"{why}-{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = data_dir / f"{why}-{stamp}.{n}"
    aside.mkdir(mode=0o700)
    moved = []
    for path in paths:
        if path.exists():
            target = aside / path.name
            shutil.move(path, target)  # the store may live on another file system
            moved.append(target)
    fsync_dir(data_dir)
    return aside, moved
