"""Small durable files in the data directory: the member snapshot and the election vote.

Both are written atomically (temporary file, fsync, rename), so a crash leaves the old
version or the new one, never half of either. The vote is fsynced before the node sends
it: a restarted node cannot vote twice in one term.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from corec_node.wire.messages import MemberState, MemberStatus

SNAPSHOT_FILE = "members.json"
VOTE_FILE = "vote.json"
LOCK_FILE = "node.lock"


class DataDirBusy(Exception):
    """Another live node holds this data directory."""


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory for the life of the process."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(f"another node is running with data directory {data_dir}") from None
    return fd


def save_members(data_dir: Path, states: list[MemberState]) -> None:
    rows = [
        {"name": s.name, "addr": s.addr, "pub": s.pub, "inc": s.inc, "status": s.status.label}
        for s in states
    ]
    # a snapshot is a hint for rejoining, not a safety record: no fsync on every change
    write_atomic(data_dir / SNAPSHOT_FILE, json.dumps(rows, indent=1).encode(), sync=False)


def load_members(data_dir: Path) -> list[MemberState]:
    """The last snapshot, or nothing; a damaged file is ignored (the node rejoins by config)."""
    try:
        rows: Any = json.loads((data_dir / SNAPSHOT_FILE).read_bytes())
        return [
            MemberState(
                name=str(r["name"]), addr=str(r["addr"]), pub=str(r["pub"]), inc=int(r["inc"]),
                status=MemberStatus[str(r["status"]).upper()],
            )
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save_vote(data_dir: Path, term: int, voted_for: str | None) -> None:
    write_atomic(data_dir / VOTE_FILE, json.dumps({"term": term, "voted_for": voted_for}).encode())


def load_vote(data_dir: Path) -> tuple[int, str | None]:
    try:
        row = json.loads((data_dir / VOTE_FILE).read_bytes())
        voted = row.get("voted_for")
        return int(row["term"]), (str(voted) if voted is not None else None)
    except FileNotFoundError:
        return 0, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # refusing to start beats voting twice in a term we no longer remember
        raise RuntimeError(f"{data_dir / VOTE_FILE} is damaged ({exc}); move it aside only if this node has been down for an election timeout") from None
