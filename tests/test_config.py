from __future__ import annotations

from pathlib import Path

import pytest

from corec_node.config import Config, ConfigError, load_config, tag_map

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file():
    config = load_config(env={})
    assert isinstance(config, Config)
    assert config.node.listen == "127.0.0.1:7400"
    assert config.pub_listen == ("127.0.0.1", 7401)
    assert config.storage.postgres_dsn == ""
    assert config.name  # the host name


@pytest.mark.parametrize("example", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load(example):
    config = load_config(example, env={})
    assert config.source == str(example)


def test_precedence_file_env_flags(tmp_path):
    path = write(tmp_path, '[node]\nname = "from-file"\nlisten = "127.0.0.1:9000"\n[mesh]\njoin = ["10.0.0.1:7400"]\n')
    assert load_config(path, env={}).name == "from-file"
    env = {"COREC_NODE_NAME": "from-env", "COREC_MESH_JOIN": "a:1, b:2", "COREC_ENGINE_TICK_INTERVAL": "0.5"}
    config = load_config(path, env=env)
    assert config.name == "from-env"
    assert config.mesh.join == ("a:1", "b:2")
    assert config.engine.tick_interval == 0.5
    assert config.pub_listen == ("127.0.0.1", 9001)
    config = load_config(path, env=env, overrides={"node.name": "from-flag", "node.listen": None})
    assert config.name == "from-flag"
    assert config.node.listen == "127.0.0.1:9000"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[node]\nlisten = "nowhere"\n', "node.listen", "host:port"),
        ('[node]\nlisten = 7400\n', "node.listen", "a string"),
        ('[node]\nnmae = "x"\n', "node.nmae", "one of"),
        ('[nodes]\nname = "x"\n', "nodes", "sections"),
        ('[mesh]\nprofile = "wan"\n', "mesh.profile", "one of lan, edge, test"),
        ('[mesh]\njoin = "a:1"\n', "mesh.join", "a list of strings"),
        ('[engine]\ntick_interval = "fast"\n', "engine.tick_interval", "a number"),
        ('[engine]\nblock_size = true\n', "engine.block_size", "an integer"),
        ('[engine]\ningest_queue_mb = 0\n', "engine.ingest_queue_mb", "MiB"),
        ('[engine]\ngenomes = ["3=clip"]\n', "engine.genomes", "CHANNEL:GENE=VALUE"),
        ('[alerts]\nwebhook = "hooks.example/x"\n', "alerts.webhook", "http:// or https:// URL"),
        ('[alerts]\nalertmanager = "ftp://am"\n', "alerts.alertmanager", "http:// or https:// URL"),
        ('[engine]\ngenomes = ["1:season=13"]\n', "engine.genomes", "'season' must be"),
        ('[engine]\ngenomes = ["1:salt=1"]\n', "engine.genomes", "salt"),
        ('[engine]\nevolve_every = -1\n', "engine.evolve_every", "number of ticks"),
        ('[engine]\nintelligent = [3, 256]\n', "engine.intelligent", "channel numbers 0-255"),
        ('[engine]\nintelligent = ["3"]\n', "engine.intelligent", "a list of integers"),
        ('[engine]\nintelligent = 3\n', "engine.intelligent", "a list of integers"),
        ('[engine]\nintelligent_save_every = 0\n', "engine.intelligent_save_every", "positive number of ticks"),
        ('[engine]\nintelligent_train_every = 0\n', "engine.intelligent_train_every", "positive number of ticks"),
        ('[mesh]\nmax_message_bytes = 33554432\n', "mesh.max_message_bytes", "payload limit"),
        ('[security]\nenabled = "yes"\n', "security.enabled", "true or false"),
        ('[security]\nenabled = true\n', "security.secret_key_file", "key file"),
        ("[node\n", "(file)", "valid TOML"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == key
    assert expected in info.value.expected
    assert str(path) in str(info.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_config(env={"COREC_ENGINE_BLOCK_SIZE": "many"})
    assert info.value.source == "COREC_ENGINE_BLOCK_SIZE"
    assert info.value.key == "engine.block_size"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml", env={})
    assert "not found" in str(info.value)


def test_plugin_tables_are_kept_for_plugins(tmp_path):
    path = write(tmp_path, '[plugin.alerts]\nthreshold = 3.5\n')
    assert load_config(path, env={}).plugin["alerts"]["threshold"] == 3.5


def test_message_limit_is_the_protocols():
    from corec_node.config import MAX_MESSAGE_BYTES
    from corec_node.wire.limits import MAX_PAYLOAD_BYTES

    assert MAX_MESSAGE_BYTES == MAX_PAYLOAD_BYTES


def test_node_tags_are_key_value_pairs_named_in_the_error(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[node]\ntags = ["role=gateway", "zone=eu-1", "rack="]\n')
    assert load_config(good).node.tags == ("role=gateway", "zone=eu-1", "rack=")
    assert tag_map(load_config(good).node.tags) == {"role": "gateway", "zone": "eu-1", "rack": ""}
    for bad in ('["gateway"]', '["=x"]', '["a b=c"]', '["k=1", "k=2"]'):
        path = tmp_path / "bad.toml"
        path.write_text(f"[node]\ntags = {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert "node.tags" in str(err.value) and str(path) in str(err.value)
    assert load_config(None, env={"COREC_NODE_TAGS": "role=pi,site=b"}).node.tags == ("role=pi", "site=b")


def test_console_is_off_by_default_and_a_port_alone_is_loopback(tmp_path):
    from corec_node.config import console_addr

    assert load_config(env={}).console.listen == ""  # off
    path = write(tmp_path, '[console]\nlisten = "8500"\n')
    assert console_addr(load_config(path, env={}).console.listen) == ("127.0.0.1", 8500)
    config = load_config(path, env={"COREC_CONSOLE_LISTEN": "[::1]:8600"})
    assert console_addr(config.console.listen) == ("::1", 8600)
    assert load_config(path, env={}, overrides={"console.listen": "0.0.0.0:8700"}).console.listen == "0.0.0.0:8700"


@pytest.mark.parametrize("value", ['"nowhere"', '"127.0.0.1:0"', '"99999"', '"127.0.0.1:http"', "8500"])
def test_bad_console_listen_names_the_key_and_the_file(tmp_path, value):
    path = write(tmp_path, f"[console]\nlisten = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == "console.listen"
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(env={"COREC_CONSOLE_LISTEN": "nowhere"})
    assert info.value.source == "COREC_CONSOLE_LISTEN" and info.value.key == "console.listen"


def test_intelligent_channels_from_the_file_or_the_environment(tmp_path):
    path = write(tmp_path, "[engine]\nintelligent = [3, 5]\n")
    assert load_config(path, env={}).engine.intelligent == (3, 5)
    assert load_config(env={"COREC_ENGINE_INTELLIGENT": "7, 9"}).engine.intelligent == (7, 9)
    assert load_config(env={}).engine.intelligent == ()  # the default: torch is never imported
    assert load_config(env={"COREC_ENGINE_INTELLIGENT_TRAIN_EVERY": "1"}).engine.intelligent_train_every == 1
    with pytest.raises(ConfigError) as info:
        load_config(env={"COREC_ENGINE_INTELLIGENT": "3,x"})
    assert (info.value.source, info.value.key) == ("COREC_ENGINE_INTELLIGENT", "engine.intelligent")


def test_a_node_off_the_overlay_says_so_among_the_settings_drift_compares():
    """The overlay is the default; one node with mesh.overlay = false makes the whole
    cluster a full mesh (overlay rule 10), so it says so and `drift` names it. A node on
    the overlay announces nothing of it."""
    from corec_node.shell.drift import differences, settings_of

    assert load_config(env={}).mesh.overlay is True
    off = settings_of(load_config(env={"COREC_MESH_OVERLAY": "false"}))
    on = settings_of(load_config(env={}))
    assert "mesh.overlay=false" in off and not any(s.startswith("mesh.overlay") for s in on)
    diffs = differences([("a", on), ("b", off)])["differences"]
    assert diffs == [{"key": "mesh.overlay", "values": {"a": None, "b": "false"}}]
