"""Trainer (shell/trainer.py): a real spawned child with real torch, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)
pytest.importorskip("torch", reason="torch is not installed (the optional 'intelligent blocks' extra)")

from corec_node.engine.nanonet import NanoConfig, NanoNets  # noqa: E402
from corec_node.shell.trainer import Trainer  # noqa: E402
from corec_node.testing.cluster import eventually as _eventually  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CFG = NanoConfig(seed=4)


def eventually(cond: Callable[[], object], what: str) -> object:
    return _eventually(cond, 30.0, interval=0.02, message=what)


def series(t: int, blocks: int) -> dict[int, float]:
    return {b: 20 + np.sin(2 * np.pi * (t + b) / 12) + 0.01 * t for b in range(blocks)}


def run_ticks(tr: Trainer, ticks: range, blocks: int) -> dict[int, float]:
    """Submit each tick once the previous one is answered (nothing dropped); the last forecasts."""
    out: dict[int, float] = {}
    for t in ticks:
        assert tr.submit(t, series(t, blocks))
        want = tr.stats().submitted
        eventually(lambda: (out.update(tr.poll()), tr.stats().answered >= want)[1], what=f"tick {t}")
    return out


def gone(pid: int) -> bool:
    """True once ``pid`` is reaped (no zombie left)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture
def trainer():
    tr = Trainer(CFG, season=12)
    try:
        yield tr
    finally:
        tr.close()


def test_forecasts_come_back_and_the_child_is_reaped_on_close(trainer):
    eventually(lambda: (trainer.poll(), trainer.stats().child_ready)[1], what="child ready")
    fc = run_ticks(trainer, range(40), 3)
    assert sorted(fc) == [0, 1, 2] and all(np.isfinite(list(fc.values())))
    st = trainer.stats()
    assert st.child_rss > 50e6 and st.blocks == 3 and st.restarts == 0
    pid = trainer.pid
    trainer.close()
    assert gone(pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped
    assert trainer.submit(41, {0: 1.0}) is False  # closed: dropped, not raised
    trainer.close()  # idempotent


def test_a_sigkilled_child_is_restarted_with_its_weights(trainer):
    run_ticks(trainer, range(30), 4)
    trainer.snapshot()
    eventually(lambda: (trainer.poll(), all(trainer.weights(b) for b in range(4)))[1],
               what="weights of every block")
    first = {b: trainer.weights(b) for b in range(4)}
    trainer.snapshot()  # a second, to be sure the blobs are those of tick 29 (no tick since)
    eventually(lambda: (trainer.poll(), all(trainer.weights(b) is not first[b] for b in range(4)))[1],
               what="the second snapshot")
    saved = {b: trainer.weights(b) for b in range(4)}
    old = trainer.pid
    os.kill(old, signal.SIGKILL)
    eventually(lambda: (trainer.poll(), trainer.stats().restarts == 1 and trainer.stats().child_ready)[1],
               what="restart")
    assert trainer.pid != old and gone(old)
    # the new child forecasts tick 30 exactly as the saved weights do here
    fc = run_ticks(trainer, range(30, 31), 4)
    local = NanoNets(CFG)
    for b, blob in saved.items():
        local.restore(b, blob)
    want = local.update(np.arange(4), [series(30, 4)[b] for b in range(4)])
    np.testing.assert_array_equal([fc[b] for b in range(4)], want)


def test_submit_never_blocks_and_drops_when_the_child_is_behind(trainer):
    eventually(lambda: (trainer.poll(), trainer.stats().child_ready)[1], what="child ready")
    os.kill(trainer.pid, signal.SIGSTOP)  # a frozen child: the pipe fills, nobody answers
    try:
        big = {b: float(b) for b in range(2000)}
        for t in range(300):  # a call that blocked would hang here for good (the test's timeout)
            trainer.submit(t, big)
            trainer.poll()
        st = trainer.stats()
        assert st.submitted == trainer.max_pending
        assert st.dropped == 300 - trainer.max_pending
    finally:
        os.kill(trainer.pid, signal.SIGCONT)
    eventually(lambda: (trainer.poll(), trainer.stats().answered == trainer.max_pending)[1],
               what="the backlog answered")
    assert trainer.submit(300, {0: 1.0})


def test_load_and_forget_and_refused_bytes(trainer):
    donor = NanoNets(CFG)
    donor.add(77, season=12)
    for t in range(20):
        donor.update([77], [series(t, 1)[0]])
    blob = donor.export(77)
    trainer.load(77, blob)
    trainer.load(78, b"garbage")
    assert trainer.weights(77) == blob  # held at once, for a restart before the child saves
    eventually(lambda: (trainer.poll(), trainer.stats().load_errors == 1)[1], what="refusal")
    assert trainer.weights(78) is None
    fc = run_ticks(trainer, range(20, 21), 1)  # block 0 is new; 77 is not ticked
    assert 0 in fc and 77 not in fc
    assert trainer.submit(21, {77: series(20, 1)[0]})
    got = eventually(lambda: trainer.poll(), what="forecast for 77")
    assert got[77] == donor.update([77], [series(20, 1)[0]])[0]
    trainer.forget(77)
    assert trainer.weights(77) is None
    before = trainer.weights(0)
    trainer.snapshot()
    eventually(lambda: (trainer.poll(), trainer.weights(0) is not before)[1], what="the snapshot after forget")
    assert trainer.weights(77) is None and trainer.weights(0) is not None


def test_the_node_process_never_imports_torch():
    script = textwrap.dedent("""
        import sys, time
        from corec_node.shell.trainer import Trainer
        from corec_node.engine.nanonet import NanoConfig
        assert "torch" not in sys.modules
        if __name__ == "__main__":
            tr = Trainer(NanoConfig(seed=1))
            deadline = time.monotonic() + 30
            got = {}
            t = 0
            while not got and time.monotonic() < deadline:
                tr.submit(t, {1: 1.0 + t, 2: 2.0})
                t += 1
                time.sleep(0.05)
                got = tr.poll()
            tr.snapshot()
            while tr.weights(1) is None and time.monotonic() < deadline:
                time.sleep(0.05)
                tr.poll()
            tr.close()
            print(bool(got), tr.weights(1) is not None, "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


def test_a_hung_child_is_killed_and_started_again():
    with Trainer(CFG, hung_after=1.0) as trainer:
        eventually(lambda: (trainer.poll(), trainer.stats().child_ready)[1], what="child ready")
        hung = trainer.pid
        os.kill(hung, signal.SIGSTOP)  # alive, silent
        trainer.submit(0, {1: 1.0})
        eventually(lambda: (trainer.submit(1, {1: 1.0}), trainer.stats().restarts == 1)[1], what="a restart")
        eventually(lambda: (trainer.poll(), trainer.stats().child_ready)[1], what="the new child ready")
        assert trainer.pid != hung and gone(hung)
