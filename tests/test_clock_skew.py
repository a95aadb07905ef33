"""No wall clock decides which row of a block wins, between hosts or in PostgreSQL.

A block's latest row is chosen by its owner's placement epoch and tick (storage/rows.py
``newer``, engine/host.py rule 6). ``ts`` is the owner's wall clock: stored for people, never
compared. The pure tests check the rule and the epochs the engine stamps; the cluster test runs
real nodes against the real PostgreSQL with one node's clock an hour off (libfaketime).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import asyncpg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pgutil import IN_CI, eventually  # the pg, pg_dsn and pg_schema fixtures come through conftest
from records import aggregate_row, entities

from corec_node.client import Client
from corec_node.engine.host import TERM_SHIFT, EngineHost
from corec_node.engine.placement import PlacementMap
from corec_node.shell.control import ControlError
from corec_node.storage.rows import latest_per_block, merged_epoch, newer, normalize_row

T = 1_800_000_000.0
HOUR = 3600.0
BLOCK = (1 << 32) | 7


def row(owner: str, tick: int, ts: float, epoch: int | None = None) -> tuple:
    """A 14-field row (13 without an epoch) of BLOCK."""
    base = (BLOCK, 1, owner, tick, 10, 10, 1.0, 0.0, 2.0, 0.5, 0.0, 0.9, ts)
    return base if epoch is None else (*base, epoch)


# -- the rule -----------------------------------------------------------------------------------------


def test_another_owner_wins_by_placement_epoch_whatever_the_clocks():
    dead = row("c", 37, T + HOUR, epoch=5)  # c's clock an hour ahead
    assert newer(row("a", 3, T, epoch=6), dead)  # took the block over: a higher epoch
    assert not newer(dead, row("a", 3, T, epoch=6))  # c's rows, however late they arrive
    assert not newer(row("c", 38, T + 2 * HOUR, epoch=5), row("a", 3, T, epoch=6))
    assert not newer(row("a", 3, T + 2 * HOUR, epoch=4), dead)  # a later clock is not a later row
    assert newer(row("b", 1, T - HOUR, epoch=5), dead)  # an equal epoch: the row still written wins
    assert not newer(row("b", 1, T + HOUR), dead)  # no epoch known (a snapshot): epoch 0
    assert newer(row("b", 1, T - HOUR), row("c", 37, T))  # both before epochs: the later arrival


def test_the_same_owner_moves_on_by_its_ticks_alone():
    stored = row("a", 40, T, epoch=9)
    assert newer(row("a", 41, T - HOUR, epoch=2), stored)  # restarted: its epoch starts low, its ticks do not
    assert merged_epoch(row("a", 41, T, epoch=2), stored) == 9  # the stored epoch keeps the highest
    assert merged_epoch(row("b", 1, T, epoch=9), stored) == 9
    assert not newer(row("a", 40, T + HOUR, epoch=9), stored)  # a replay changes nothing
    assert not newer(row("a", 39, T + HOUR, epoch=10), stored)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_latest_row_depends_on_epochs_and_ticks_not_on_clocks_or_arrival(data):
    # a block passes from owner to owner, each takeover at a higher epoch; every owner's clock
    # is anywhere within two hours, and the rows reach the database in any order
    stints = data.draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=5), label="owners")
    ticks = {o: data.draw(st.integers(0, 10_000), label=f"first tick of {o}") for o in "abc"}
    rows, base = [], 0
    for owner in stints:
        base += data.draw(st.integers(3, 5))  # the new owner's epoch is above the old one's
        epoch = base
        for _ in range(data.draw(st.integers(1, 4))):
            ticks[owner] += 1
            epoch += data.draw(st.integers(0, 1))  # raised by what the owner hears
            ts = T + data.draw(st.floats(-2 * HOUR, 2 * HOUR))
            rows.append(row(owner, ticks[owner], ts, epoch=min(epoch, base + 2)))
    want = rows[-1]
    arrival = data.draw(st.permutations(rows), label="arrival")
    stored = None
    for r in arrival:
        if stored is None or newer(r, stored):
            stored = r
    assert stored[2:4] == want[2:4]
    assert arrival[latest_per_block(list(arrival))[BLOCK]][2:4] == want[2:4]


# -- the epochs the engine stamps -------------------------------------------------------------------------


def exchange(hosts: dict[str, EngineHost]) -> dict[str, list[dict]]:
    """One tick on every host, each host hearing the others' rows (as AGGREGATES carry them)."""
    out = {name: host.tick()[0] for name, host in hosts.items()}
    for name, host in hosts.items():
        for other, rows in out.items():
            if other != name:
                host.observe_rows(other, [dict(r) for r in rows])
    return out


def as_stored(r: dict, ts: float) -> tuple:
    return (*normalize_row(r), ts, r["epoch"])


def test_an_owner_taking_over_a_dead_owners_blocks_stamps_a_higher_epoch():
    recs = entities(np.arange(3_000), 1, 5.0 + np.arange(3_000) % 7)
    hosts = {n: EngineHost(n, block_size=100) for n in "abc"}
    for host in hosts.values():
        host.set_members("abc")
        host.ingest(recs)
    for _ in range(2):
        last = exchange(hosts)
    assert len({h.epoch for h in hosts.values()}) == 1  # everyone at the highest epoch heard
    dead = {r["block"]: as_stored(r, T + HOUR) for r in last["c"]}  # c's clock an hour ahead
    assert dead
    del hosts["c"]
    # until the nucleus confirms {a, b}, rows of c's blocks kept for the new view are provisional
    for host in hosts.values():
        host.observe_view("ab")
        host.ingest(recs)
    rows = exchange(hosts)
    held = [r for rs in rows.values() for r in rs if r["block"] in dead]
    assert held and all(not newer(as_stored(r, T), dead[r["block"]]) for r in held)
    for host in hosts.values():
        host.confirm(PlacementMap(0, "ab").digest())
    rows = exchange(hosts)
    now_owned = {r["block"]: as_stored(r, T - HOUR) for rs in rows.values() for r in rs if r["block"] in dead}
    assert now_owned.keys() == dead.keys()
    assert all(newer(r, dead[b]) for b, r in now_owned.items())
    after = PlacementMap(0, "ab")
    assert all(r[2] == after.owner(b) for b, r in now_owned.items())


def test_a_newcomer_catches_up_and_a_newer_term_outranks_older_maps():
    old = EngineHost("a", block_size=100)
    for _ in range(5):
        old.set_members(["a", "x"])
        old.set_members(["a"])
    new = EngineHost("n", block_size=100)
    new.set_members(["a", "n"])
    assert new.epoch < old.epoch
    new.observe_rows("a", [aggregate_row(1, epoch=old.epoch)])
    assert new.epoch == old.epoch  # its next rows are not below anything it has heard
    new.raise_epoch(old.epoch - 3)  # a lower floor changes nothing
    assert new.epoch == old.epoch
    new.observe_term(2)
    assert new.epoch == 2 << TERM_SHIFT
    old.observe_term(1)
    old.set_members(["a", "y"])
    assert old.epoch < new.epoch  # maps adopted under term 1 stay below term 2's


# -- real nodes, one of them with its clock an hour off -------------------------------------------------------

BLOCKS = 30
CHANNEL = 1


def skewed_env(offset: str) -> dict[str, str]:
    """The environment that makes a node's wall clock run ``offset`` off (e.g. "+1h").

    The ``faketime`` wrapper forks the command and does not pass signals on, so a SIGKILL
    would hit the wrapper and leave the node running: the node gets libfaketime the way the
    wrapper would give it (its LD_PRELOAD), with no process in between. Its monotonic clock
    is left alone: hosts never compare those.
    """
    if shutil.which("faketime") is None:
        why = "the faketime binary is not installed (Debian: apt-get install -y faketime)"
        if IN_CI:
            pytest.fail(f"CI=true: {why}", pytrace=False)
        pytest.skip(why)
    probe = subprocess.run(["faketime", "-f", "+0", "sh", "-c", 'printf %s "$LD_PRELOAD"'],
                           capture_output=True, text=True, timeout=30, check=True)
    assert "faketime" in probe.stdout, f"faketime sets no LD_PRELOAD: {probe.stdout!r} {probe.stderr!r}"
    return {"LD_PRELOAD": probe.stdout, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def expected_owners(members: str) -> dict[int, str]:
    placement = PlacementMap(0, members)
    return {(CHANNEL << 32) | n: placement.owner((CHANNEL << 32) | n) for n in range(BLOCKS)}


def send(node, value: float) -> None:
    n = BLOCKS * 1000  # the default block size: BLOCKS blocks of channel 1
    with Client(node.addr) as client:
        client.send(entities(np.arange(n), CHANNEL, value + np.arange(n) % 7))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("offset", ["+1h", "-1h"])
async def test_live_owners_rows_win_over_a_killed_node_whose_clock_is_off(pg_dsn, pg_schema, pg, cluster, offset):
    # cluster after pg_schema: the nodes stop before their schema is dropped
    skew = skewed_env(offset)
    env = {"COREC_STORAGE_POSTGRES_DSN": pg_dsn, "COREC_STORAGE_POSTGRES_SCHEMA": pg_schema,
           "COREC_ENGINE_TICK_INTERVAL": "0.2"}
    table = f'"{pg_schema}".block_state'

    async def state() -> dict[int, tuple]:
        try:
            rows = await pg.fetch(f"SELECT block, owner, tick, epoch, updated_at FROM {table}")
        except asyncpg.UndefinedTableError:  # the first node has not migrated the schema yet
            return {}
        return {r["block"]: (r["owner"], r["tick"], r["epoch"], r["updated_at"].timestamp()) for r in rows}

    async def owners_are(want: dict[int, str]) -> bool:
        return {b: s[0] for b, s in (await state()).items()} == want

    def alive(nodes, n: int) -> bool:
        try:
            return all(node.ctl("status")["members"].get("alive") == n for node in nodes)
        except (ControlError, OSError):
            return False

    def c_dead() -> bool:
        try:
            return all(node.members().get("c") == "dead" for node in (a, b))
        except (ControlError, OSError):
            return False

    a = cluster.start("a", extra_env=env)
    await asyncio.to_thread(a.wait_ready)
    b = cluster.start("b", extra_env=env, join=[a.addr])
    await asyncio.to_thread(b.wait_ready)
    await eventually(lambda: asyncio.to_thread(alive, [a, b], 2), 30, message="a and b see each other")
    await asyncio.to_thread(send, a, 10.0)
    await eventually(lambda: owners_are(expected_owners("ab")), 60, message="a's and b's rows in PostgreSQL")

    # c joins with its clock an hour off and takes its blocks over: its rows replace a's and b's
    c = cluster.start("c", extra_env={**env, **skew}, join=[a.addr])
    await asyncio.to_thread(c.wait_ready)
    await eventually(lambda: asyncio.to_thread(alive, [a, b, c], 3), 30, message="three members")
    with_c = expected_owners("abc")
    assert "c" in with_c.values()
    await eventually(lambda: owners_are(with_c), 60, message="c's rows for c's blocks in PostgreSQL")
    sign = 1 if offset.startswith("+") else -1
    c_rows = {blk: s for blk, s in (await state()).items() if s[0] == "c"}
    assert all(abs(s[3] - (time.time() + sign * HOUR)) < 600 for s in c_rows.values()), "c's clock is not off"

    # c is killed; a and b rebuild its blocks from fresh data and their rows replace c's
    await asyncio.to_thread(c.kill)
    await eventually(lambda: asyncio.to_thread(c_dead), 30, message="a and b see c dead")
    await asyncio.to_thread(send, a, 20.0)
    await eventually(lambda: owners_are(expected_owners("ab")), 60,
                     message="every block's row is its live owner's, none the killed node's")
    taken = await state()
    # a placement epoch no lower than c's: higher once c's rows reached them; equal when c died
    # before they did (it owned for under a second), and the store takes another owner's row
    # on an equal epoch
    bad = {blk: (taken[blk], s) for blk, s in c_rows.items() if not taken[blk][2] >= s[2]}
    assert not bad, bad
    assert all(abs(s[3] - time.time()) < 600 for s in taken.values())  # written on a and b's clocks

    async def moved_on() -> bool:  # the live owners keep writing newer ticks, and keep winning
        now = await state()
        return (now.keys() == taken.keys()
                and all(now[blk][0] == taken[blk][0] and now[blk][1] > taken[blk][1] for blk in now))

    await eventually(moved_on, 30, message="newer ticks of the live owners")
