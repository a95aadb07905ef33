"""Small durable files in the data directory: the data-directory lock, the election vote and
the voter configuration (``mesh/voters.py``).

The vote is written atomically (temporary file, fsync, rename) before the node sends it,
so a crash leaves the old vote or the new one, and a restarted node cannot vote twice in
one term. It is a file rather than a SQLite row because the election core's effects are
carried out synchronously, in order, on the loop (a 100-byte fsync). The member snapshot
lives in SQLite (``storage.LocalStore``).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


VOTE_FILE = "vote.json"
VOTERS_FILE = "voters.json"
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


def save_voters(data_dir: Path, index: int, term: int, voters: tuple[tuple[str, str], ...], cluster: str) -> None:
    """The latest voter configuration, fsynced before it is acknowledged (voters rule 2)."""
    row = {"index": index, "term": term, "cluster": cluster,
           "voters": [{"name": n, "addr": a} for n, a in voters]}
    write_atomic(data_dir / VOTERS_FILE, json.dumps(row).encode())


def load_voters(data_dir: Path) -> tuple[int, int, tuple[tuple[str, str], ...], str] | None:
    """``(index, term, voters, cluster)``, or None when this node never stored one."""
    try:
        row = json.loads((data_dir / VOTERS_FILE).read_bytes())
        voters = tuple(sorted((str(v["name"]), str(v["addr"])) for v in row["voters"]))
        return int(row["index"]), int(row["term"]), voters, str(row["cluster"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RuntimeError(f"{data_dir / VOTERS_FILE} is damaged ({exc}); recover the voters with "
                           "`corec-node voters` on a healthy node") from None
