"""The plugin manager: loading, settings, the hook facade, isolation and the breaker.

No sockets here: the facade is called directly, with a real EntityStore's aggregates.
Entry points of pip-installed distributions: test_plugins_install.py; a real node:
test_plugins_node.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import logging
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pgutil import eventually  # async: polls on the running loop
from records import entities

from corec_node import hookspecs, log
from corec_node.config import Config, ConfigError, PluginsSection
from corec_node.engine import EntityStore, KernelState, aggregate, aggregate_rows
from corec_node.hookspecs import HOOK_NAMES, hookimpl
from corec_node.plugins import (
    DISABLED_ENV,
    NodeFacade,
    NoPluginStore,
    PluginConfigError,
    PluginLoadError,
    PluginManager,
    UnknownPluginTable,
    validate_settings,
)

# -- helpers --------------------------------------------------------------------------------


class Node:
    """What hooks get as ``node`` in these tests."""

    name = "a"


def entity_batch(channel: int, n: int = 2500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = (20 + rng.normal(0, 2, n)).astype(np.float32)
    return entities(np.arange(n, dtype=np.uint32), channel, values)


def real_rows(tick: int = 1) -> list[dict[str, Any]]:
    store = EntityStore(block_size=1000)
    store.ingest(entity_batch(7))
    store.ingest(entity_batch(9, 1000))
    return aggregate_rows(aggregate(store, tick), owner="a", nan_as_none=True)


class Recorder:
    """Implements every event hook, half sync and half async, and records the calls."""

    def __init__(self, channels=(7,)) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.threads: dict[str, str] = {}
        self._channels = channels

    def _seen(self, hook: str, detail: Any) -> None:
        self.calls.append((hook, detail))
        self.threads[hook] = threading.current_thread().name

    @hookimpl
    def corec_configure(self, config):
        self._seen("corec_configure", type(config).__name__)

    @hookimpl
    async def corec_startup(self, node):
        self._seen("corec_startup", node.name)

    @hookimpl
    def corec_shutdown(self, node):
        self._seen("corec_shutdown", node.name)

    @hookimpl
    def corec_channels(self):
        return self._channels

    @hookimpl
    def corec_entities(self, node, channel, records):
        self._seen("corec_entities", (channel, len(records), records.flags.writeable))

    @hookimpl
    async def corec_block_aggregates(self, node, tick, aggregates):
        self._seen("corec_block_aggregates", (tick, len(aggregates)))

    @hookimpl
    def corec_alert(self, alert):  # a subset of the spec's parameters
        self._seen("corec_alert", alert["kind"])

    @hookimpl
    async def corec_member_event(self, event):
        self._seen("corec_member_event", (event["name"], event["new"]))

    @hookimpl
    def corec_leader_changed(self, leader, term):
        self._seen("corec_leader_changed", (leader, term))

    def hooks(self) -> list[str]:
        return [h for h, _ in self.calls]


@pytest.fixture
def events():
    """Log events of the ``corec`` logger, as dicts (the event name under "event")."""
    seen: list[dict[str, Any]] = []

    class Grab(logging.Handler):
        def emit(self, record):
            seen.append({"event": record.getMessage(), **(getattr(record, "fields", None) or {})})

    logger = logging.getLogger(log.LOGGER_NAME)
    handler = Grab(level=logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def folder(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "plugins"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def config(**plugins: Any) -> Config:
    tables = plugins.pop("tables", {})
    return Config(plugins=PluginsSection(**plugins), plugin=tables, source="node.toml")


# -- hook specifications ----------------------------------------------------------------------


def test_every_hook_is_documented():
    specs = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if getattr(fn, "corec_node_spec", None) is not None}
    assert sorted(specs) == sorted(HOOK_NAMES)
    for name, fn in specs.items():
        doc = " ".join((inspect.getdoc(fn) or "").split())
        assert len(doc) > 80, f"{name} has no real docstring"
        assert "firstresult" in doc.lower(), f"{name}: say whether the first result wins"
        assert "must not block" in doc.lower(), f"{name}: state the rule on blocking"
        assert "return" in doc.lower(), f"{name}: say what a return value means"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc or param == "config" and "config" in doc, f"{name}: document {param}"
        assert not fn.corec_node_spec.get("firstresult"), f"{name}: no firstresult hooks (see hookspecs.py rule 4)"


def test_hookimpl_marker_is_the_projects():
    assert hookimpl.project_name == "corec_node" == hookspecs.PROJECT


# -- the facade -------------------------------------------------------------------------------


async def test_every_event_hook_fires_through_the_facade():
    rec = Recorder()
    pm = PluginManager()
    pm.register(rec, "rec")
    node = Node()
    await pm.startup(node)
    assert pm.channels() == {7} and pm.wants(7) and not pm.wants(9)
    rows = real_rows(3)
    await pm.entities(node, 7, entity_batch(7))
    await pm.entities(node, 9, entity_batch(9))  # not subscribed
    await pm.block_aggregates(node, 3, rows)
    await pm.alert(node, {"kind": "k", "text": "t", "plugin": None})
    await pm.member_event(node, {"name": "b", "addr": "x:1", "old": None, "new": "alive", "incarnation": 0, "reason": ""})
    await pm.leader_changed(node, "b", 4)
    await pm.shutdown(node)
    assert rec.calls == [
        ("corec_configure", "Config"),
        ("corec_startup", "a"),
        ("corec_entities", (7, 2500, False)),  # read-only records
        ("corec_block_aggregates", (3, 4)),  # 3 blocks on channel 7, 1 on channel 9
        ("corec_alert", "k"),
        ("corec_member_event", ("b", "alive")),
        ("corec_leader_changed", ("b", 4)),
        ("corec_shutdown", "a"),
    ]
    # sync hooks ran in the manager's worker threads, async ones on the loop
    assert rec.threads["corec_entities"].startswith("corec-plugin")
    assert rec.threads["corec_block_aggregates"] == threading.current_thread().name
    info = pm.info()[0]
    assert info["name"] == "rec" and info["state"] == "active" and info["faults"] == 0
    assert info["source"] == "builtin" and info["channels"] == [7]
    assert set(info["hooks"]) == set(HOOK_NAMES) - {"corec_kernels", "corec_storage_migrations", "corec_cli_commands"}
    assert await pm.block_aggregates(node, 4, rows) == []  # after shutdown: nothing is called
    assert rec.hooks().count("corec_block_aggregates") == 1


async def test_several_plugins_all_called_concurrently():
    order: list[str] = []

    class Slow:
        @hookimpl
        async def corec_block_aggregates(self, tick):
            order.append("slow start")
            for _ in range(1000):  # until the fast plugin has run (or 10 s: it was not called meanwhile)
                if "fast" in order:
                    break
                await asyncio.sleep(0.01)
            order.append("slow end")

    class Fast:
        @hookimpl
        def corec_block_aggregates(self, tick):
            order.append("fast")

    pm = PluginManager()
    pm.register(Slow(), "slow")
    pm.register(Fast(), "fast")
    await pm.block_aggregates(Node(), 1, [])
    assert order.index("fast") < order.index("slow end")


async def test_alerts_returned_by_hooks_go_to_on_alert_stamped_with_the_plugin():
    got: list[dict] = []

    class Raiser:
        @hookimpl
        def corec_block_aggregates(self, tick, aggregates):
            return [{"kind": "hot", "text": f"{len(aggregates)} rows", "block": aggregates[0]["block"]}]

        @hookimpl
        def corec_alert(self, alert):
            got.append({"echo": alert["kind"]})

    class Listener:
        @hookimpl
        def corec_alert(self, alert):
            got.append({"heard": alert["kind"]})

    pm = PluginManager(on_alert=got.append)
    pm.register(Raiser(), "raiser")
    pm.register(Listener(), "listener")
    node = Node()
    raised = await pm.block_aggregates(node, 1, real_rows())
    assert raised == [{"kind": "hot", "text": "4 rows", "block": real_rows()[0]["block"], "severity": "warning",
                       "plugin": "raiser", "hook": "corec_block_aggregates"}]
    assert got == raised
    # the node hands the alert back to every plugin but the one that raised it
    await pm.alert(node, raised[0])
    assert got[1:] == [{"heard": "hot"}]


async def test_a_bad_return_value_is_a_fault():
    class Wrong:
        @hookimpl
        def corec_block_aggregates(self):
            return ["not an alert"]

    pm = PluginManager()
    pm.register(Wrong(), "wrong")
    assert await pm.block_aggregates(Node(), 1, []) == []
    assert pm.info()[0]["faults"] == 1 and "alert" in pm.info()[0]["last_error"]


async def test_await_me_maybe_a_sync_hook_returning_a_coroutine():
    seen = []

    class Maybe:
        @hookimpl
        def corec_block_aggregates(self, tick):
            async def later():
                seen.append(tick)
                return [{"kind": "k", "text": "from a coroutine"}]
            return later()

    pm = PluginManager()
    pm.register(Maybe(), "maybe")
    raised = await pm.block_aggregates(Node(), 5, [])
    assert seen == [5] and raised[0]["text"] == "from a coroutine"


def test_kernels_migrations_and_cli():
    def double(values, state):
        return np.asarray(values, np.float32) * 2

    class Ext:
        @hookimpl
        def corec_kernels(self):
            return {"double": double}

        @hookimpl
        def corec_storage_migrations(self):
            return ["CREATE TABLE t (x INTEGER)"]

        @hookimpl
        def corec_cli_commands(self, subparsers):
            p = subparsers.add_parser("ext-hello")
            p.set_defaults(func=lambda args: 7)

    pm = PluginManager()
    pm.register(Ext(), "ext")
    kernels = pm.kernels()
    assert list(kernels) == ["double"]
    assert kernels["double"](np.ones(3, np.float32), KernelState.seeded(0)).tolist() == [2, 2, 2]
    assert pm.migrations() == {"ext": ["CREATE TABLE t (x INTEGER)"]}
    parser = argparse.ArgumentParser()
    pm.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ext-hello"])
    assert args.func(args) == 7

    class Clash:
        @hookimpl
        def corec_kernels(self):
            return {"double": double}

    pm.register(Clash(), "clash")
    with pytest.raises(PluginLoadError, match="'double' is also provided by plugin 'ext'"):
        pm.kernels()

    class Builtin:
        @hookimpl
        def corec_kernels(self):
            return {"sine": double}

    pm2 = PluginManager()
    pm2.register(Builtin(), "b")
    with pytest.raises(PluginLoadError, match="built-in"):
        pm2.kernels()


# -- isolation and the breaker -----------------------------------------------------------------


class Ticker:
    """Counts turns of the event loop (one per 10 ms sleep). Any thread can wait for the count
    to move on, which it only does while the loop is free to run."""

    def __init__(self) -> None:
        self.ticks = 0
        self._moved = threading.Condition()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            with self._moved:
                self.ticks += 1
                self._moved.notify_all()

    def turns(self, n: int, timeout: float = 30.0) -> bool:
        """From a worker thread: block until the loop has turned ``n`` more times; False if it
        did not within ``timeout`` (the loop stood still)."""
        with self._moved:
            target = self.ticks + n
            return self._moved.wait_for(lambda: self.ticks >= target, timeout)


class Healthy:
    def __init__(self) -> None:
        self.ticks: list[int] = []

    @hookimpl
    def corec_block_aggregates(self, tick):
        self.ticks.append(tick)


class Raises:
    @hookimpl
    def corec_block_aggregates(self, tick):
        raise RuntimeError(f"broken at tick {tick}")


class HangsSync:
    """Blocks its worker thread until released. With a ticker, it first checks, from inside
    the blocked call, that the event loop keeps turning while it blocks."""

    def __init__(self, ticker: Ticker | None = None) -> None:
        self.release = threading.Event()
        self.ticker = ticker
        self.loop_turned: list[bool] = []  # per call: the loop turned 3 times while it blocked

    @hookimpl
    def corec_block_aggregates(self, tick):
        if self.ticker is not None:
            self.loop_turned.append(self.ticker.turns(3))
        self.release.wait(30)  # a blocking call that never returns in time


class HangsAsync:
    @hookimpl
    async def corec_block_aggregates(self, tick):
        await asyncio.sleep(30)


class IgnoresCancel:
    @hookimpl
    async def corec_block_aggregates(self, tick):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # a badly written plugin: swallows the cancellation a while


@pytest.mark.parametrize("bad_cls", [Raises, HangsSync, HangsAsync, IgnoresCancel])
async def test_faulty_plugin_is_switched_off_while_others_and_the_loop_go_on(bad_cls, events):
    alerts: list[dict] = []
    pm = PluginManager(on_alert=alerts.append, budget=0.2, max_faults=3, fault_window=60)
    ticker = Ticker()
    good, bad = Healthy(), (HangsSync(ticker) if bad_cls is HangsSync else bad_cls())
    pm.register(good, "good")
    pm.register(bad, "bad")
    task = asyncio.create_task(ticker.run())
    node = Node()
    try:
        for tick in range(1, 8):
            await pm.block_aggregates(node, tick, [])
            await asyncio.sleep(0.05)
        if bad_cls is HangsSync:  # its first call is still blocked in a worker thread: its check
            # answers once the loop turned 3 times (or, the loop stalled, after 30 s: False)
            await eventually(lambda: bad.loop_turned, 60, message="the hung hook's check of the loop")
    finally:
        task.cancel()
        if isinstance(bad, HangsSync):
            bad.release.set()
    assert good.ticks == list(range(1, 8))  # never missed a call
    info = {p["name"]: p for p in pm.info()}
    assert info["good"]["state"] == "active" and info["good"]["faults"] == 0
    assert info["bad"]["state"] == "disabled"
    assert info["bad"]["faults"] == 3
    assert info["bad"]["reason"].startswith("circuit breaker: 3 faults within 60 s")
    assert [a["kind"] for a in alerts] == ["plugin_disabled"]
    assert alerts[0]["plugin"] == "bad" and alerts[0]["severity"] == "critical"
    faults = [e for e in events if e["event"] == "plugin_fault"]
    assert len(faults) == 3 and all(e["plugin"] == "bad" and e["hook"] == "corec_block_aggregates" for e in faults)
    assert any(e["event"] == "plugin_disabled" and e["plugin"] == "bad" for e in events)
    # the loop kept running: the blocking sync hook saw, from inside its call, the ticker on
    # the loop turn while it blocked (had the call blocked the loop, the ticker could not move
    # and its wait would run out). The async hangs wait on the loop itself: they cannot stall it.
    if bad_cls is HangsSync:
        assert bad.loop_turned == [True], bad.loop_turned


async def test_a_hung_sync_plugin_holds_one_thread_per_hook_at_most():
    hang = HangsSync()
    pm = PluginManager(budget=0.05, max_faults=100)
    pm.register(hang, "hang")
    try:
        for tick in range(10):
            await pm.block_aggregates(Node(), tick, [])
        assert pm._pool is not None and pm._pool.threads == 1
        info = pm.info()[0]
        assert info["calls"] == 1 and info["faults"] == 10  # 1 timeout + 9 skipped while hung
    finally:
        hang.release.set()


async def test_a_slow_plugin_drops_calls_but_is_not_faulted():
    class Slow:
        def __init__(self):
            self.seen = []
            self.release = threading.Event()

        @hookimpl
        def corec_channels(self):
            return [7]

        @hookimpl
        def corec_entities(self, records):
            self.seen.append(len(records))
            self.release.wait(30)  # slower than the stream (busy until the test releases it)

    slow = Slow()
    pm = PluginManager(budget=60.0)  # within its budget however long the machine takes
    pm.register(slow, "slow")
    batch = entity_batch(7, 10)
    calls = [asyncio.ensure_future(pm.entities(Node(), 7, batch)) for _ in range(5)]
    try:
        await eventually(lambda: sum(c.done() for c in calls) >= 4 and slow.seen, 30,
                         message="the first call runs, the 4 that arrive meanwhile return")
        assert sum(c.done() for c in calls) == 4 and slow.seen == [10]  # the first one is still running
    finally:
        slow.release.set()
    await asyncio.gather(*calls)
    info = pm.info()[0]
    assert slow.seen == [10] and info["dropped"] == 4 and info["faults"] == 0 and info["state"] == "active"


async def test_faults_spread_beyond_the_window_do_not_trip_the_breaker():
    now = [0.0]
    pm = PluginManager(max_faults=3, fault_window=60, clock=lambda: now[0])
    pm.register(Raises(), "flaky")
    for tick in range(6):
        await pm.block_aggregates(Node(), tick, [])
        now[0] += 31  # two faults per window at most
    info = pm.info()[0]
    assert info["faults"] == 6 and info["state"] == "active"


async def test_spawned_dispatches_are_awaited_at_shutdown():
    class Late:
        def __init__(self):
            self.done = []

        @hookimpl
        async def corec_block_aggregates(self, tick):
            await asyncio.sleep(0.1)
            self.done.append(tick)

        @hookimpl
        def corec_shutdown(self):
            self.done.append("shutdown")

    late = Late()
    pm = PluginManager()
    pm.register(late, "late")
    pm.spawn(pm.block_aggregates(Node(), 1, []))
    await pm.shutdown(Node())
    assert late.done == [1, "shutdown"]


async def test_trace_env_logs_each_call(events):
    pm = PluginManager(env={"COREC_TRACE_PLUGINS": "1"})
    pm.register(Healthy(), "h")
    await pm.block_aggregates(Node(), 1, [])
    calls = [e for e in events if e["event"] == "plugin_call"]
    assert len(calls) == 1
    assert calls[0]["plugin"] == "h" and calls[0]["hook"] == "corec_block_aggregates" and calls[0]["outcome"] == "ok"
    assert calls[0]["ms"] >= 0


async def test_no_trace_by_default(events):
    pm = PluginManager(env={})
    pm.register(Healthy(), "h")
    await pm.block_aggregates(Node(), 1, [])
    assert not [e for e in events if e["event"] == "plugin_call"]


# -- loading: folders, disabling, validation ----------------------------------------------------

LOCAL_MODULE = """
    from corec_node.hookspecs import hookimpl
    import pathlib
    pathlib.Path(__file__).with_suffix(".imported").write_text("yes")
    SETTINGS = {"scale": (float, 1.0)}
    SEEN = []

    @hookimpl
    def corec_configure(config):
        SEEN.append(("scale", config.plugin["{name}"]["scale"]))

    @hookimpl
    def corec_block_aggregates(tick, aggregates):
        SEEN.append(("tick", tick))
"""


def test_local_folder_modules_and_packages(tmp_path, events):
    root = folder(tmp_path, {
        "one.py": LOCAL_MODULE.replace("{name}", "one"),
        "two/__init__.py": "from .hooks import *\n__version__ = '2.0'\n",
        "two/hooks.py": LOCAL_MODULE.replace("{name}", "two"),
        "_private.py": "raise SystemExit('never imported')\n",
        "notes.txt": "not a plugin",
        "empty_dir/readme": "no __init__",
    })
    pm = PluginManager(config(paths=(str(root),), tables={"one": {"scale": 3}})).load(entrypoints=False)
    info = {p["name"]: p for p in pm.info()}
    assert set(info) == {"one", "two"}
    assert info["one"]["source"] == "path" and info["one"]["origin"] == str(root / "one.py")
    assert info["two"]["version"] == "2.0"
    assert info["one"]["hooks"] == ["corec_configure", "corec_block_aggregates"]
    assert pm.settings("one") == {"scale": 3.0} and pm.settings("two") == {"scale": 1.0}
    loaded = [e["plugin"] for e in events if e["event"] == "plugin_loaded"]
    assert sorted(loaded) == ["one", "two"]


async def test_local_plugin_hooks_fire(tmp_path):
    root = folder(tmp_path, {"solo.py": LOCAL_MODULE.replace("{name}", "solo")})
    pm = PluginManager(config(paths=(str(root),))).load(entrypoints=False)
    await pm.block_aggregates(Node(), 9, real_rows())
    module = pm.records["solo"].obj
    assert module.SEEN == [("scale", 1.0), ("tick", 9)]


@pytest.mark.parametrize("how", ["config", "env"])
def test_disabled_plugins_are_not_even_imported(tmp_path, how, events):
    root = folder(tmp_path, {"keep.py": LOCAL_MODULE.replace("{name}", "keep"),
                             "skip.py": LOCAL_MODULE.replace("{name}", "skip")})
    if how == "config":
        pm = PluginManager(config(paths=(str(root),), disabled=("skip",)), env={})
    else:
        pm = PluginManager(config(paths=(str(root),)), env={DISABLED_ENV: " other, skip "})
    pm.load(entrypoints=False)
    info = {p["name"]: p for p in pm.info()}
    assert info["keep"]["state"] == "active"
    assert info["skip"]["state"] == "disabled" and info["skip"]["hooks"] == []
    assert info["skip"]["reason"] == ("disabled by config plugins.disabled" if how == "config" else f"disabled by {DISABLED_ENV}")
    assert (root / "keep.imported").exists() and not (root / "skip.imported").exists()
    assert any(e["event"] == "plugin_not_loaded" and e["plugin"] == "skip" for e in events)


def test_disabled_reason_attribute_registers_no_hooks():
    class Missing:
        DISABLED_REASON = "needs libfoo"

        @hookimpl
        def corec_block_aggregates(self):
            raise AssertionError("never called")

    pm = PluginManager()
    pm.register(Missing(), "missing")
    assert pm.info()[0]["state"] == "disabled" and pm.info()[0]["reason"] == "needs libfoo"
    assert pm.info()[0]["hooks"] == []


def test_misspelled_hook_fails_at_load_naming_the_plugin(tmp_path):
    root = folder(tmp_path, {"typo.py": """
        from corec_node.hookspecs import hookimpl

        @hookimpl
        def corec_block_agregates(tick):
            pass
    """})
    with pytest.raises(PluginLoadError) as err:
        PluginManager(config(paths=(str(root),))).load(entrypoints=False)
    assert err.value.plugin == "typo"
    assert "corec_block_agregates" in str(err.value) and "misspelled" in str(err.value)
    assert isinstance(err.value, ConfigError)  # the CLI exits 2 with one line


def test_unmarked_misspelled_hook_fails_too():
    class Forgot:
        def corec_startupp(self, node):  # no @hookimpl, and a typo
            pass

    with pytest.raises(PluginLoadError, match="'forgot'.*corec_startupp"):
        PluginManager().register(Forgot(), "forgot")


def test_wrong_hook_parameter_fails_at_load():
    class BadArgs:
        @hookimpl
        def corec_block_aggregates(self, tick, rows):  # the spec calls it "aggregates"
            pass

    with pytest.raises(PluginLoadError) as err:
        PluginManager().register(BadArgs(), "badargs")
    assert "badargs" in str(err.value) and "rows" in str(err.value)


def test_hook_wrappers_are_refused():
    class Wrapper:
        @hookimpl(wrapper=True)
        def corec_block_aggregates(self, tick):
            yield

    with pytest.raises(PluginLoadError, match="wrappers are not supported"):
        PluginManager().register(Wrapper(), "wrapper")


def test_import_error_names_the_plugin(tmp_path):
    root = folder(tmp_path, {"broken.py": "import no_such_module_anywhere\n"})
    with pytest.raises(PluginLoadError) as err:
        PluginManager(config(paths=(str(root),))).load(entrypoints=False)
    assert err.value.plugin == "broken" and "no_such_module_anywhere" in str(err.value)


def test_missing_plugin_folder_is_an_error(tmp_path):
    with pytest.raises(PluginLoadError, match="not a folder"):
        PluginManager(config(paths=(str(tmp_path / "nope"),))).load(entrypoints=False)


def test_two_plugins_with_one_name(tmp_path):
    a = folder(tmp_path / "a", {"same.py": "X = 1\n"})
    b = folder(tmp_path / "b", {"same.py": "X = 2\n"})
    with pytest.raises(PluginLoadError, match="two plugins have this name"):
        PluginManager(config(paths=(str(a), str(b)))).load(entrypoints=False)


def test_a_misspelled_plugin_table_names_file_table_and_installed_plugins(tmp_path):
    root = folder(tmp_path, {"alerts.py": "X = 1\n", "analyzer.py": "X = 2\n"})
    with pytest.raises(UnknownPluginTable) as err:
        PluginManager(config(paths=(str(root),), tables={"alertz": {"x": 1}})).load(entrypoints=False)
    e = err.value
    assert isinstance(e, ConfigError) and e.plugin == "alertz" and e.suggestion == "alerts"
    assert str(e).startswith("node.toml: [plugin.alertz]: no plugin named 'alertz' is installed "
                             "(did you mean 'alerts'?); installed: alerts, analyzer.")
    with pytest.raises(UnknownPluginTable) as err:  # nothing close: no suggestion, still the list
        PluginManager(config(paths=(str(root),), tables={"zzz": {}})).load(entrypoints=False)
    assert err.value.suggestion is None and "did you mean" not in str(err.value)
    assert "installed: alerts, analyzer" in str(err.value)


def test_settings_kept_for_a_plugin_not_installed_here_when_it_is_disabled():
    pm = PluginManager(config(disabled=("ghost",), tables={"ghost": {"x": 1}})).load(entrypoints=False)
    assert pm.info() == []
    pm = PluginManager(config(tables={"ghost": {"x": 1}}), env={DISABLED_ENV: "ghost"}).load(entrypoints=False)
    assert pm.info() == []
    with pytest.raises(UnknownPluginTable, match="installed: none"):
        PluginManager(config(tables={"ghost": {"x": 1}}), env={}).load(entrypoints=False)


# -- settings ---------------------------------------------------------------------------------


class DictSettings:
    SETTINGS = {"threshold": (float, 1.5), "channels": (list, []), "name": (str, "x"), "on": (bool, True),
                "limit": ((int, type(None)), None)}

    def __init__(self):
        self.got = None

    @hookimpl
    def corec_configure(self, config):
        self.got = config.plugin["dicty"]


@dataclasses.dataclass(frozen=True)
class Knobs:
    window: int = 8
    ratio: float = 0.5
    tags: list[str] = dataclasses.field(default_factory=list)
    mode: str | None = None


class DataclassSettings:
    SETTINGS = Knobs

    def __init__(self):
        self.got = None

    @hookimpl
    def corec_configure(self, config):
        self.got = config.plugin["dc"]


def test_dict_settings_defaults_and_coercion():
    p = DictSettings()
    PluginManager().register(p, "dicty", settings={"threshold": 3, "channels": [1, 2]})
    assert p.got == {"threshold": 3.0, "channels": [1, 2], "name": "x", "on": True, "limit": None}
    assert isinstance(p.got["threshold"], float)


def test_dataclass_settings():
    p = DataclassSettings()
    PluginManager().register(p, "dc", settings={"window": 4, "tags": ["a"], "ratio": 1})
    assert p.got == Knobs(window=4, ratio=1.0, tags=["a"], mode=None)


@pytest.mark.parametrize("cls, name, settings, key, expected", [
    (DictSettings, "dicty", {"threshhold": 1.0}, "threshhold", "one of threshold, channels, name, on, limit"),
    (DictSettings, "dicty", {"threshold": "high"}, "threshold", "a number"),
    (DictSettings, "dicty", {"on": 1}, "on", "true or false"),
    (DictSettings, "dicty", {"limit": 2.5}, "limit", "an integer or nothing"),
    (DataclassSettings, "dc", {"window": 2.5}, "window", "an integer"),
    (DataclassSettings, "dc", {"tags": [1]}, "tags", "a list of strings"),
    (DataclassSettings, "dc", {"windows": 3}, "windows", "one of window, ratio, tags, mode"),
])
def test_settings_errors_name_plugin_and_key(cls, name, settings, key, expected):
    pm = PluginManager(Config(source="node.toml"))
    with pytest.raises(PluginConfigError) as err:
        pm.register(cls(), name, settings=settings)
    e = err.value
    assert e.plugin == name and e.setting == key
    assert str(e).startswith(f"node.toml: plugin.{name}.{key}: expected {expected}")
    assert isinstance(e, ConfigError)
    assert pm.info() == []  # nothing half-registered


def test_settings_from_the_node_config_tables(tmp_path):
    root = folder(tmp_path, {"tuned.py": LOCAL_MODULE.replace("{name}", "tuned")})
    with pytest.raises(PluginConfigError, match=r"node.toml: plugin.tuned.scale: expected a number, got 'big'"):
        PluginManager(config(paths=(str(root),), tables={"tuned": {"scale": "big"}})).load(entrypoints=False)


def test_configure_may_refuse_a_setting():
    class Picky:
        SETTINGS = {"mode": (str, "a")}

        @hookimpl
        def corec_configure(self, config):
            if config.plugin["picky"]["mode"] not in ("a", "b"):
                raise PluginConfigError("picky", "mode", "a or b", config.plugin["picky"]["mode"])

    with pytest.raises(PluginConfigError, match="plugin.picky.mode: expected a or b, got 'c'"):
        PluginManager().register(Picky(), "picky", settings={"mode": "c"})

    class Crashes:
        @hookimpl
        def corec_configure(self):
            raise KeyError("oops")

    with pytest.raises(PluginLoadError, match="'crashes'.*corec_configure failed: KeyError"):
        PluginManager().register(Crashes(), "crashes")


def test_validate_settings_without_spec_passes_the_table_through():
    assert validate_settings("p", None, {"anything": [1]}) == {"anything": [1]}
    with pytest.raises(PluginLoadError, match="SETTINGS"):
        validate_settings("p", {"x": int}, {})


# -- the node facade ----------------------------------------------------------------------------


class RealishNode:
    """The parts of shell/node.py's Node a facade reaches, recording what plugins did."""

    name = "a"

    def __init__(self, tmp_path: Path) -> None:
        self.config = Config()
        self.data_dir = tmp_path
        self.raised: list[tuple[str, str, dict[str, Any]]] = []
        self.engine = "the engine"  # not in the facade

    def raise_alert(self, kind, text, *, severity="warning", **fields):
        self.raised.append((kind, text, {"severity": severity, **fields}))

    async def plugin_store(self, name):
        return f"store of {name}"


def test_hook_specs_take_the_facade_not_any():
    for name in HOOK_NAMES:
        params = inspect.signature(getattr(hookspecs, name)).parameters
        if "node" in params:
            assert params["node"].annotation == "NodeFacade", name


async def test_each_plugin_gets_its_own_facade_that_stamps_its_name(tmp_path, events):
    seen: dict[str, Any] = {}

    class Uses:
        SETTINGS = {"level": (int, 3)}

        @hookimpl
        async def corec_startup(self, node):
            seen["startup"] = node
            seen["store"] = await node.plugin_store()
            node.raise_alert("hot", "too hot", severity="critical", block=7)
            node.log("uses_started", rows=2)

        @hookimpl
        def corec_leader_changed(self, node, leader, term):  # a worker thread
            seen["leader"] = (node.leader, node.term, node.is_leader)

        @hookimpl
        def corec_block_aggregates(self, node, tick):
            seen["tick"] = node
            seen["engine"] = node.engine

    class Other:
        @hookimpl
        def corec_startup(self, node):
            seen["other"] = node

    real = RealishNode(tmp_path)
    pm = PluginManager()
    pm.register(Uses(), "uses", settings={"level": 5})
    pm.register(Other(), "other")
    await pm.startup(real)
    facade = seen["startup"]
    assert isinstance(facade, NodeFacade) and facade is not real
    assert (facade.name, facade.plugin, facade.settings, facade.data_dir) == ("a", "uses", {"level": 5}, tmp_path)
    assert facade.config is real.config and seen["other"].plugin == "other"
    assert seen["store"] == "store of uses"
    assert real.raised == [("hot", "too hot", {"severity": "critical", "block": 7, "plugin": "uses"})]
    assert any(e["event"] == "uses_started" and e["plugin"] == "uses" and e["rows"] == 2 for e in events)
    with pytest.raises(ValueError, match="severity"):
        facade.raise_alert("x", "y", severity="urgent")

    await pm.leader_changed(real, "a", 4)
    assert seen["leader"] == ("a", 4, True) and (facade.leader, facade.term) == ("a", 4)

    await pm.block_aggregates(real, 1, [])
    await pm.block_aggregates(real, 2, [])
    assert seen["tick"] is facade  # one facade per plugin and node
    assert seen["engine"] == "the engine"  # passed through, with one warning
    warned = [e for e in events if e["event"] == "plugin_node_attribute"]
    assert len(warned) == 1 and warned[0]["plugin"] == "uses" and warned[0]["attribute"] == "engine"
    assert pm.facade("uses", real) is facade


async def test_facade_over_a_node_without_stores():
    class Bare:
        name = "b"

    facade = NodeFacade(Bare(), "p")
    with pytest.raises(NoPluginStore):
        await facade.plugin_store()
    assert isinstance(NoPluginStore("x"), LookupError)  # what a plugin may catch without importing us
    with pytest.raises(AttributeError):
        facade.nothing_here  # noqa: B018


# -- hook order ---------------------------------------------------------------------------------


def ordered_plugin(name: str, calls: list[str], **marks: bool) -> Any:
    class P:
        @hookimpl(**marks)
        def corec_configure(self):
            calls.append(f"configure {name}")

        @hookimpl(**marks)
        def corec_channels(self):
            calls.append(f"channels {name}")

        @hookimpl(**marks)
        async def corec_block_aggregates(self, tick):
            calls.append(f"aggregates {name}")

    return P()


async def test_tryfirst_and_trylast_order_the_calls():
    calls: list[str] = []
    plugins = [("late", ordered_plugin("late", calls, trylast=True)), ("one", ordered_plugin("one", calls)),
               ("first", ordered_plugin("first", calls, tryfirst=True)), ("two", ordered_plugin("two", calls))]
    pm = PluginManager().load(entrypoints=False, builtins=plugins)
    expected = ["first", "one", "two", "late"]  # tryfirst, then load order, then trylast
    assert [c.split()[1] for c in calls if c.startswith("configure")] == expected
    assert [c.split()[1] for c in calls if c.startswith("channels")][:4] == expected
    calls.clear()
    await pm.block_aggregates(None, 1, [])
    assert [c.split()[1] for c in calls] == expected  # started in that order (tasks on one loop)


def test_a_misspelled_optional_hook_is_still_an_error():
    class Optional:
        @hookimpl(optionalhook=True)
        def corec_startupp(self, node):
            pass

    with pytest.raises(PluginLoadError, match="unknown hook 'corec_startupp'"):
        PluginManager().register(Optional(), "optional")


def test_the_facade_shows_every_members_tags_as_gossiped():
    from types import SimpleNamespace

    from corec_node.plugins.facade import NodeFacade

    view = SimpleNamespace(tags={"pi-7": {"role": "gateway"}, "pi-8": {"role": "sensor", "zone": "b"}})
    node = SimpleNamespace(name="pi-7", mesh=SimpleNamespace(view=view))
    facade = NodeFacade(node, "alerts")
    assert facade.tags == {"pi-7": {"role": "gateway"}, "pi-8": {"role": "sensor", "zone": "b"}}
    facade.tags["pi-7"]["role"] = "changed"  # a copy: the plugin cannot change the node's view
    assert view.tags["pi-7"]["role"] == "gateway"
