"""The cluster's settings (cluster_settings.py) and their place in the committed voter
configuration (mesh/voters.py rule 9): pure, no node."""

from __future__ import annotations

import pytest

from corec_node import cluster_settings as cs
from corec_node.config import Config, ConfigError, load_config
from corec_node.mesh.effects import ConfigCommitted, PersistConfig
from corec_node.mesh.voters import Configuration, VoterConfig, Voters


def _config(**env: str) -> Config:
    return load_config(None, env={f"COREC_{k.upper()}": v for k, v in env.items()})


def test_own_settings_are_the_cluster_keys_in_toml_spelling():
    own = dict(cs.own(_config(engine_replicas="2", engine_tick_interval="0.5")))
    assert set(own) == set(cs.KEYS)
    assert own["engine.replicas"] == "2" and own["engine.tick_interval"] == "0.5"
    assert own["security.enabled"] == "false" and own["engine.block_size"] == "1000"


def test_differences_and_apply_run_with_the_committed_values():
    mine = _config(engine_replicas="3")
    committed = cs.own(_config(engine_replicas="2", engine_tick_interval="1"))
    assert cs.differences(mine, committed) == {"engine.replicas": ("3", "2")}  # 1 and 1.0 are one tick
    running = cs.apply(mine, committed)
    assert running.engine.replicas == 2 and running.engine.tick_interval == 1.0
    assert mine.engine.replicas == 3, "the file's configuration is left as it was"
    assert cs.apply(running, committed) is running
    assert cs.differences(mine, [("engine.replicas", "3"), ("unknown.key", "x")]) == {}


def test_a_committed_value_the_node_cannot_run_with_names_the_key_and_the_source():
    mine = _config(engine_replicas="2", engine_min_insync="2")
    with pytest.raises(ConfigError) as err:
        cs.apply(mine, [("engine.replicas", "1")])  # min_insync 2 > replicas 1
    assert err.value.key == "engine.min_insync" and cs.SOURCE in str(err.value)
    with pytest.raises(ConfigError) as err:
        cs.apply(mine, [("engine.replicas", "two")])
    assert err.value.key == "engine.replicas"


def test_changes_checks_keys_values_and_the_rest_of_the_settings():
    config = _config()
    committed = cs.own(config)
    assert cs.changes(config, ["engine.replicas=2", "engine.tick_interval = 0.5"], committed) == {
        "engine.replicas": "2", "engine.tick_interval": "0.5"}
    for bad, words in ((["engine.block_size=500"], "fixed when the cluster is founded"),
                       (["security.enabled=true"], "fixed"),
                       (["engine.ttl=1:60"], "not a cluster setting"),
                       (["engine.replicas"], "KEY=VALUE"),
                       (["engine.replicas=9"], "engine.replicas"),
                       (["engine.min_insync=3"], "engine.min_insync")):
        with pytest.raises(ValueError, match=words):
            cs.changes(config, bad, committed)


def test_describe_shows_the_file_where_it_differs():
    file = _config(engine_replicas="3")
    out = cs.describe(file, cs.own(_config()))
    assert out["committed"]["engine.replicas"] == "1"
    assert out["differences"] == {"engine.replicas": {"file": "3", "committed": "1"}}


SETTINGS = (("engine.block_size", "1000"), ("engine.replicas", "1"))


def _leader(stored: Configuration | None = None) -> Voters:
    v = Voters("a", VoterConfig(), stored or Configuration(), own_settings=SETTINGS)
    if stored is None:
        v.bootstrap({"a": "a:1"}, "c1")
    return v


def test_the_founder_writes_its_settings_and_every_change_keeps_them():
    v = _leader()
    assert v.current.settings == SETTINGS
    out = v.lead(1)
    assert v.current.settings == SETTINGS and v.committed
    assert [e.settings for e in out if type(e) in (PersistConfig, ConfigCommitted)] == [SETTINGS, SETTINGS]
    v.plan(1, {"b": ("b:1", 0.0)}, ["a", "b"], now=10.0)
    assert v.current.names() == {"a", "b"} and v.current.settings == SETTINGS


def test_a_leader_fills_a_configuration_that_holds_none():
    v = _leader(Configuration(3, 2, (("a", "a:1"),), "c1"))  # written by an older release
    v.lead(5)
    assert v.current.settings == SETTINGS and (v.current.term, v.current.index) == (5, 4)


def test_only_a_leader_with_nothing_in_flight_changes_the_settings():
    v = _leader()
    assert v.settle(1, {"engine.replicas": "2"}) == ([], "this node is not the leader")
    v.lead(1)
    out, why = v.settle(1, {"engine.replicas": "2"})
    assert not why and dict(v.current.settings)["engine.replicas"] == "2"
    assert any(type(e) is ConfigCommitted for e in out), "a one-voter cluster commits at once"
    assert v.settle(1, {"engine.replicas": "2"}) == ([], ""), "no entry when nothing changes"
    v.plan(1, {"b": ("b:1", 0.0)}, ["a", "b"], now=10.0)  # b's promotion awaits b's ack
    assert v.settle(1, {"engine.replicas": "3"})[1].startswith("the previous configuration change")


def test_a_follower_takes_settings_that_differ_even_at_the_same_index():
    v = Voters("b", VoterConfig(), Configuration(4, 2, (("a", "a:1"), ("b", "b:1")), "c1"))
    out = v.follow(Configuration(4, 2, (("a", "a:1"), ("b", "b:1")), "c1", SETTINGS), 4)
    assert v.current.settings == SETTINGS and v.committed
    assert [e for e in out if type(e) is PersistConfig][0].settings == SETTINGS
