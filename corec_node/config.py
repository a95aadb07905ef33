"""Node configuration: one TOML file, environment overrides, CLI overrides.

Precedence, lowest first: built-in defaults, the TOML file, ``COREC_<SECTION>_<KEY>``
environment variables, command-line flags. Every key has a default, so no file is needed.
A bad file or value raises :class:`ConfigError` naming the file, the key and what was
expected; the CLI turns it into one line and exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "COREC_"
PROFILES = ("lan", "edge", "test")
MAX_MESSAGE_BYTES = 16 << 20  # wire.limits.MAX_PAYLOAD_BYTES (not imported: config stays light to load)
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A configuration value is wrong; the message names the source, key and expectation."""

    def __init__(self, source: str, key: str, expected: str, got: object = None) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        detail = f"{source}: {key}: expected {expected}"
        if got is not None:
            detail += f", got {got!r}"
        super().__init__(detail)


def default_data_dir() -> str:
    """Per-user state directory; systemd units set ``node.data_dir`` to StateDirectory."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "corec-node")


TAG_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def tag_map(tags: Sequence[str]) -> dict[str, str]:
    """``("role=gateway", ...)`` as ``{"role": "gateway"}`` (a peer's tag without "=" is a
    key with an empty value: what travels is only checked to be a printable name)."""
    return dict(t.partition("=")[::2] for t in tags)


@dataclass(frozen=True, slots=True)
class NodeSection:
    name: str = ""  # empty: the host name
    data_dir: str = ""  # empty: $XDG_STATE_HOME/corec-node
    listen: str = "127.0.0.1:7400"  # direct (ROUTER) socket; loopback until told otherwise
    advertise: str = ""  # what peers dial; empty: same as listen
    cluster: str = "corec"  # label on every frame so two clusters on one network never merge
    log_level: str = "info"
    tags: tuple[str, ...] = ()  # "key=value" labels gossiped with this node (members --detailed, --tag, plugins)


@dataclass(frozen=True, slots=True)
class MeshSection:
    profile: str = "lan"  # timer profile: lan (default), edge (slow links), test (fast)
    pub_listen: str = ""  # PUB socket; empty: the listen port + 1
    data_listen: str = ""  # data socket (producers, owner-routed batches); empty: the listen port + 2
    join: tuple[str, ...] = ()  # peers to join at start ("host:port" of their direct socket)
    join_required: bool = False  # exit when none of them answers within join_timeout (else run alone, warning)
    join_timeout: float = 30.0  # seconds join_required waits for the first answer
    rejoin_after_leave: bool = False  # after `leave`, rejoin from the member snapshot at start (Serf's default: no)
    max_message_bytes: int = 16 * 1024 * 1024  # ZMQ_MAXMSGSIZE: hostile frames cut at the socket
    discovery: bool = False  # UDP beacon on the LAN; off: nodes join explicitly
    discovery_port: int = 7399
    discovery_addr: str = "255.255.255.255"  # where beacons go: the subnet's broadcast address
    max_voters: int = 5  # members that elect the nucleus (3, 5 or 7: two may fail of five); the rest follow
    overlay: bool = True  # membership, heartbeats and broadcasts over partial views and a tree (SPEC 7.1); false: this node speaks none, and the cluster runs as a full mesh


@dataclass(frozen=True, slots=True)
class EngineSection:
    tick_interval: float = 1.0  # seconds between block aggregations
    block_size: int = 1000  # entities per block (one channel each)
    max_errors: float = 0.1  # block error rate above which a block is repaired
    min_fitness: float = 0.2  # blocks under this fuse into a strong block of their channel
    tick_rows: int = 10_000  # rows one tick makes at most; past it, changed blocks first, the rest in turn (engine/host.py rule 7)
    ingest_queue_mb: float = 128.0  # entity batches waiting to be stored; flow control asks for pauses at 1/16 of it
    replicas: int = 1  # copies of each block in total, its owner's included: 2 = a primary and one replica
    min_insync: int = 0  # holders that must store a batch sent with acks all; 0: min(2, replicas)
    copy_mb_per_s: float = 64.0  # block copies to each new holder at most this fast (a join must not starve ingest); 0: unpaced
    ttl: tuple[str, ...] = ()  # "CHANNEL:SECONDS": entities of the channel not written for that long expire
    genomes: tuple[str, ...] = ()  # "CHANNEL:GENE=VALUE[;GENE=VALUE]": genes of the channel's first genomes ("1:season=12", "3:kernel=clip")
    memory_limit_mb: float = 0.0  # past 90 % of it (RSS of the node's processes) no new blocks are taken; 0: the cgroup's MemoryMax, if any
    audit: bool = True  # IsolationForest over block rows (loads scikit-learn: about 85 MB a node); false on small devices
    evolve_every: int = 60  # ticks between two evolution plans of the nucleus (challenger genomes run in shadow); 0: none
    intelligent: tuple[int, ...] = ()  # channels whose blocks also get a tiny torch forecaster, trained in a child process; empty: torch never loads
    intelligent_save_every: int = 60  # ticks between two saves of those forecasters' weights to SQLite (and once at stop): a crash loses at most this many ticks of learning
    intelligent_train_every: int = 2  # each intelligent block trains on every this-many-th tick and forecasts on all: 2 halves the child's CPU for MASE 0.639 against 0.625 (bench/nanonet.py)


def genome_genes(entries: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """``engine.genomes`` as {channel: {gene: value}}, each value an int, a float or a name;
    ValueError naming the first bad entry or gene (whether a kernel exists is known only
    once plugins are loaded: the node checks that)."""
    from corec_node.engine.genome import validate

    out: dict[int, dict[str, Any]] = {}
    for entry in entries:
        channel, sep, genes = str(entry).partition(":")
        if not sep or not channel.isdigit() or int(channel) > 255 or not genes:
            raise ValueError(f"{entry!r} is not CHANNEL:GENE=VALUE[;GENE=VALUE...]")
        parsed: dict[str, Any] = {}
        for pair in genes.split(";"):
            gene, eq, text = pair.partition("=")
            if not eq or not gene.strip():
                raise ValueError(f"{entry!r}: {pair!r} is not GENE=VALUE")
            parsed[gene.strip()] = _gene_value(text.strip())
        validate(parsed)  # names the gene and its range
        out[int(channel)] = parsed
    return out


def _gene_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def ttl_seconds(entries: tuple[str, ...]) -> dict[int, int]:
    """``engine.ttl`` as {channel: seconds}; ValueError naming the first bad entry."""
    out: dict[int, int] = {}
    for entry in entries:
        channel, sep, seconds = str(entry).partition(":")
        try:
            c, t = int(channel), int(seconds)
        except ValueError:
            raise ValueError(f"{entry!r} is not CHANNEL:SECONDS") from None
        if not sep or not 0 <= c <= 255 or t <= 0:
            raise ValueError(f"{entry!r} is not CHANNEL:SECONDS")
        out[c] = t
    return out


@dataclass(frozen=True, slots=True)
class StorageSection:
    sqlite_path: str = ""  # empty: <data_dir>/corec.db
    postgres_dsn: str = ""  # empty: SQLite only (the embedded default)
    postgres_schema: str = "corec"
    outbox_max_rows: int = 1_000_000  # past this the oldest history is dropped, never state
    history_retention: float = 0.0  # seconds of block history kept in SQLite; 0 keeps all (1000 blocks, 1 s ticks: ~86 M rows a day)


@dataclass(frozen=True, slots=True)
class PluginsSection:
    paths: tuple[str, ...] = ()  # local plugin folders, besides installed entry points
    disabled: tuple[str, ...] = ()  # plugin names not to load
    # tracemalloc attributes traced memory to each plugin's files (README, "Plugin memory");
    # off by default: tracing slows every allocation of the node process
    memory_watch: bool = False
    memory_max_mb: float = 256.0  # a plugin over it on 2 checks in a row is switched off (an eighth of the unit's MemoryMax); 0: figures only
    memory_limits: tuple[str, ...] = ()  # "NAME:MB" entries: a plugin's own limit instead of memory_max_mb (0: none)
    memory_interval: float = 30.0  # seconds between checks: a snapshot stalls the loop ~1 us a live trace (0.3 s at a busy node's 300k)
    memory_frames: int = 4  # frames kept a trace: 4 credits a plugin with what np.ones or pandas allocate for it; 1 only its own lines, at half the cost


def plugin_memory_limits(entries: tuple[str, ...]) -> dict[str, float]:
    """``plugins.memory_limits`` as {plugin: MiB}; ValueError naming the first bad entry."""
    out: dict[str, float] = {}
    for entry in entries:
        name, sep, mb = str(entry).rpartition(":")
        try:
            value = float(mb)
        except ValueError:
            raise ValueError(f"{entry!r} is not NAME:MB") from None
        if not sep or not name.strip() or not 0 <= value <= 1 << 24:
            raise ValueError(f"{entry!r} is not NAME:MB (MB from 0 to 16777216)")
        out[name.strip()] = value
    return out


@dataclass(frozen=True, slots=True)
class SecuritySection:
    enabled: bool = False  # CurveZMQ; off is fine on loopback, the node says so at start
    secret_key_file: str = ""
    public_keys_dir: str = ""
    allow: tuple[str, ...] = ()  # peer networks admitted ("10.0.0.0/8"), refused before libzmq buffers them; empty: all


@dataclass(frozen=True, slots=True)
class MetricsSection:
    listen: str = ""  # Prometheus exposition "host:port"; empty: off


CONSOLE_HOST = "127.0.0.1"  # a console given only a port binds loopback: it has no login


@dataclass(frozen=True, slots=True)
class ConsoleSection:
    listen: str = ""  # the read-only web console, "host:port" or a port alone (loopback); empty: off


@dataclass(frozen=True, slots=True)
class AlertsSection:
    webhook: str = ""  # http(s) URL: each alert this node raises is POSTed there as JSON; empty: none
    alertmanager: str = ""  # Alertmanager's base URL ("http://host:9093"): alerts go to its /api/v2/alerts; empty: none
    timeout: float = 5.0  # seconds one delivery may take before it is tried again


@dataclass(frozen=True, slots=True)
class ExplainSection:
    """``corec-node explain``'s optional rewording by an OpenAI-compatible endpoint
    (``shell/explain_llm.py``); the account by rules needs none of it."""

    url: str = ""  # base URL ("https://openrouter.ai/api/v1", "http://127.0.0.1:11434/v1"); empty: rules only
    api_key: str = field(default="", repr=False)  # sent as a Bearer token; COREC_EXPLAIN_API_KEY keeps it out of files
    model: str = ""  # the endpoint's model name; empty: none sent (a llama.cpp server serves the one it loaded)
    timeout: float = 20.0  # seconds one answer may take before the account by rules is given instead
    max_tokens: int = 400  # tokens one answer may have (a paragraph)
    token_budget: int = 20_000  # tokens spent per budget_window at most (usage.total_tokens); 0: no limit
    budget_window: float = 3600.0  # seconds the budget counts back
    breaker_failures: int = 3  # failures in a row after which the endpoint is skipped...
    breaker_cooldown: float = 60.0  # ...for this many seconds
    cache_size: int = 128  # answers kept by their account's digest (the same facts are not asked twice)


def console_addr(listen: str) -> tuple[str, int]:
    """``console.listen`` as (host, port): a port alone is loopback's; ValueError if neither."""
    if listen.isascii() and listen.isdigit():
        listen = join_addr(CONSOLE_HOST, int(listen))
    return split_addr(listen)


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    engine: EngineSection = field(default_factory=EngineSection)
    storage: StorageSection = field(default_factory=StorageSection)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    explain: ExplainSection = field(default_factory=ExplainSection)
    # per-plugin settings tables ([plugin.NAME]); validated by each plugin at load
    plugin: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"

    # -- derived values a caller may rely on --------------------------------------------

    @property
    def name(self) -> str:
        return self.node.name or socket.gethostname()

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir or default_data_dir()).expanduser()

    @property
    def listen(self) -> tuple[str, int]:
        return split_addr(self.node.listen)

    @property
    def advertise(self) -> str:
        return self.node.advertise or self.node.listen

    @property
    def pub_listen(self) -> tuple[str, int]:
        if self.mesh.pub_listen:
            return split_addr(self.mesh.pub_listen)
        host, port = self.listen
        return host, port + 1

    @property
    def data_listen(self) -> tuple[str, int]:
        if self.mesh.data_listen:
            return split_addr(self.mesh.data_listen)
        host, port = self.listen
        return host, port + 2

    @property
    def data_advertise(self) -> str:
        """The data socket's address producers and peers dial: the advertised host, the data port."""
        host, _ = split_addr(self.advertise)
        _, port = self.data_listen
        return join_addr(host, port)

    @property
    def pub_advertise(self) -> str:
        """The PUB address peers dial: the advertised host with the PUB port."""
        host, _ = split_addr(self.advertise)
        _, port = self.pub_listen
        return join_addr(host, port)

    @property
    def sqlite_path(self) -> Path:
        return Path(self.storage.sqlite_path) if self.storage.sqlite_path else self.data_dir / "corec.db"

    @property
    def control_path(self) -> Path:
        return self.data_dir / "control.sock"


SECTIONS: dict[str, type] = {
    "node": NodeSection,
    "mesh": MeshSection,
    "engine": EngineSection,
    "storage": StorageSection,
    "plugins": PluginsSection,
    "security": SecuritySection,
    "metrics": MetricsSection,
    "console": ConsoleSection,
    "alerts": AlertsSection,
    "explain": ExplainSection,
}


def split_addr(addr: str) -> tuple[str, int]:
    """Parse ``host:port`` (``[v6]:port`` too); ValueError says what is wrong."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- loading --------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config: defaults < file < environment < ``overrides`` ("section.key": value)."""
    env = os.environ if env is None else env
    source = str(path) if path else "<defaults>"
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(source, "(file)", "an existing TOML file", "not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "(file)", "valid TOML", str(exc)) from None
        except OSError as exc:
            raise ConfigError(source, "(file)", "a readable file", exc.strerror) from None

    plugin_tables = raw.pop("plugin", {}) if isinstance(raw.get("plugin", {}), dict) else None
    if plugin_tables is None:
        raise ConfigError(source, "plugin", "a table of [plugin.NAME] tables")
    sections: dict[str, Any] = {}
    origins: dict[str, str] = {}  # "section.key" -> where its value came from, for error messages
    for section, cls in SECTIONS.items():
        values: dict[str, Any] = {}
        table = raw.pop(section, {})
        if not isinstance(table, dict):
            raise ConfigError(source, section, "a table", table)
        fields = typing.get_type_hints(cls)
        for key, value in table.items():
            if key not in fields:
                raise ConfigError(source, f"{section}.{key}", f"one of {', '.join(fields)}", "unknown key")
            values[key] = _coerce(value, fields[key], source, f"{section}.{key}", from_text=False)
            origins[f"{section}.{key}"] = source
        for key, hint in fields.items():
            env_name = f"{ENV_PREFIX}{section}_{key}".upper()
            if env_name in env:
                values[key] = _coerce(env[env_name], hint, env_name, f"{section}.{key}", from_text=True)
                origins[f"{section}.{key}"] = env_name
        for dotted, value in (overrides or {}).items():
            sec, _, key = dotted.partition(".")
            if sec == section and value is not None:
                if key not in fields:
                    raise ConfigError("command line", dotted, "a known key", "unknown key")
                values[key] = _coerce(value, fields[key], "command line", dotted, from_text=False)
                origins[dotted] = "command line"
        sections[section] = cls(**values)
    if raw:
        unknown = next(iter(raw))
        raise ConfigError(source, unknown, f"one of the sections {', '.join(SECTIONS)}, plugin", "unknown section")
    for name, table in plugin_tables.items():
        if not isinstance(table, dict):
            raise ConfigError(source, f"plugin.{name}", "a table of settings", table)
    config = Config(**sections, plugin=plugin_tables, source=source)
    validate(config, origins)
    return config


def _coerce(value: Any, hint: Any, source: str, key: str, *, from_text: bool) -> Any:
    """Check (and from environment text, parse) one value against its field type."""
    origin = typing.get_origin(hint)
    if origin is tuple and typing.get_args(hint)[0] is int:
        if from_text and isinstance(value, str):
            try:
                value = [int(item) for item in value.split(",") if item.strip()]
            except ValueError:
                raise ConfigError(source, key, "a list of integers", value) from None
        if not isinstance(value, (list, tuple)) or not all(type(v) is int for v in value):
            raise ConfigError(source, key, "a list of integers", value)
        return tuple(value)
    if origin is tuple:
        if from_text and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(source, key, "a list of strings", value)
        return tuple(value)
    if hint is bool:
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
        if not isinstance(value, bool):
            raise ConfigError(source, key, "true or false", value)
        return value
    if hint is int:
        if from_text and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(source, key, "an integer", value) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, "an integer", value)
        return value
    if hint is float:
        if from_text and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(source, key, "a number", value) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, "a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, "a string", value)
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")



def _validate_explain(e: ExplainSection, fail: typing.Callable[..., ConfigError]) -> None:
    if e.url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", e.url):
        raise fail("explain.url", "an http:// or https:// URL (the API's base, before /chat/completions)", e.url)
    if not e.api_key.isprintable() or any(c.isspace() for c in e.api_key):
        raise fail("explain.api_key", "a key without spaces or control characters")
    if not 0 < e.timeout <= 300:
        raise fail("explain.timeout", "seconds from 0 to 300", e.timeout)
    if not 1 <= e.max_tokens <= 100_000:
        raise fail("explain.max_tokens", "tokens from 1 to 100000", e.max_tokens)
    if e.token_budget < 0 or 0 < e.token_budget < e.max_tokens:
        raise fail("explain.token_budget", f"0 (no limit) or at least explain.max_tokens ({e.max_tokens})",
                   e.token_budget)
    if not e.budget_window > 0:
        raise fail("explain.budget_window", "a positive number of seconds", e.budget_window)
    if e.breaker_failures < 1:
        raise fail("explain.breaker_failures", "a positive number of failures", e.breaker_failures)
    if e.breaker_cooldown < 0:
        raise fail("explain.breaker_cooldown", "0 or more seconds", e.breaker_cooldown)
    if not 0 <= e.cache_size <= 100_000:
        raise fail("explain.cache_size", "answers from 0 (no cache) to 100000", e.cache_size)


def validate(config: Config, origins: Mapping[str, str]) -> None:
    """Checks across keys that types alone cannot express; errors name where the value came from."""

    def fail(key: str, expected: str, got: object = None) -> ConfigError:
        return ConfigError(origins.get(key, config.source), key, expected, got)

    for key, addr in (("node.listen", config.node.listen), ("node.advertise", config.node.advertise),
                      ("mesh.pub_listen", config.mesh.pub_listen), ("mesh.data_listen", config.mesh.data_listen),
                      ("metrics.listen", config.metrics.listen)):
        if addr:
            try:
                split_addr(addr)
            except ValueError:
                raise fail(key, "host:port", addr) from None
    for key, url in (("alerts.webhook", config.alerts.webhook), ("alerts.alertmanager", config.alerts.alertmanager)):
        if url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise fail(key, "an http:// or https:// URL", url)
    if not 0 < config.alerts.timeout <= 300:
        raise fail("alerts.timeout", "seconds from 0 to 300", config.alerts.timeout)
    _validate_explain(config.explain, fail)
    if config.console.listen:
        try:
            console_addr(config.console.listen)
        except ValueError:
            raise fail("console.listen", "host:port, or a port alone for 127.0.0.1", config.console.listen) from None
    for peer in config.mesh.join:
        try:
            split_addr(peer)
        except ValueError:
            raise fail("mesh.join", "a list of host:port", peer) from None
    if not config.mesh.join_timeout > 0:
        raise fail("mesh.join_timeout", "a positive number of seconds", config.mesh.join_timeout)
    if config.mesh.join_required and not config.mesh.join:
        raise fail("mesh.join_required", "peers to join in mesh.join (or --join)", "no peers")
    for tag in config.node.tags:
        key, sep, _value = tag.partition("=")
        if not sep or not TAG_KEY.fullmatch(key) or not tag.isprintable() or len(tag.encode()) > 255:
            raise fail("node.tags", "a list of key=value (key: letters, digits, '.', '_', '-'; 255 bytes at most)", tag)
    if len(config.node.tags) > 32 or len({t.partition("=")[0] for t in config.node.tags}) != len(config.node.tags):
        raise fail("node.tags", "at most 32 tags, each key once", ",".join(config.node.tags))
    if config.mesh.max_voters < 1:
        raise fail("mesh.max_voters", "a positive integer (3, 5 or 7 is usual)", config.mesh.max_voters)
    if not 0 < config.mesh.discovery_port < 65536:
        raise fail("mesh.discovery_port", "a UDP port 1..65535", config.mesh.discovery_port)
    if config.mesh.discovery:
        try:
            socket.inet_aton(config.mesh.discovery_addr)
        except OSError:
            raise fail("mesh.discovery_addr", "an IPv4 broadcast address", config.mesh.discovery_addr) from None
    if config.mesh.profile not in PROFILES:
        raise fail("mesh.profile", f"one of {', '.join(PROFILES)}", config.mesh.profile)
    if config.node.log_level not in LOG_LEVELS:
        raise fail("node.log_level", f"one of {', '.join(LOG_LEVELS)}", config.node.log_level)
    if not config.mesh.pub_listen and config.listen[1] >= 65535:
        raise fail("node.listen", "a port below 65535 (the PUB port is the next one)", config.node.listen)
    if not config.mesh.data_listen and config.listen[1] >= 65534:
        raise fail("node.listen", "a port below 65534 (the data port is listen + 2)", config.node.listen)
    if not 64 * 1024 <= config.mesh.max_message_bytes <= MAX_MESSAGE_BYTES:
        raise fail("mesh.max_message_bytes", f"65536 to {MAX_MESSAGE_BYTES} (the protocol's payload limit)",
                   config.mesh.max_message_bytes)
    if not config.node.cluster or len(config.node.cluster.encode()) > 64:
        raise fail("node.cluster", "a non-empty label of at most 64 bytes", config.node.cluster)
    if config.engine.tick_interval <= 0:
        raise fail("engine.tick_interval", "a positive number of seconds", config.engine.tick_interval)
    if not 1 <= config.engine.replicas <= 8:
        raise fail("engine.replicas", "copies of each block from 1 to 8 (the owner's included)", config.engine.replicas)
    if not 0 <= config.engine.min_insync <= config.engine.replicas:
        raise fail("engine.min_insync", f"from 0 (automatic) to engine.replicas ({config.engine.replicas})",
                   config.engine.min_insync)
    try:
        ttl_seconds(config.engine.ttl)
    except ValueError as exc:
        raise fail("engine.ttl", f'"CHANNEL:SECONDS" entries, channel 0-255, seconds > 0 ({exc})',
                   list(config.engine.ttl)) from None
    try:
        genome_genes(config.engine.genomes)
    except ValueError as exc:
        raise fail("engine.genomes", f'"CHANNEL:GENE=VALUE[;GENE=VALUE]" entries, channel 0-255, genes in range ({exc})',
                   list(config.engine.genomes)) from None
    if not 0 <= config.engine.copy_mb_per_s <= 1 << 20:
        raise fail("engine.copy_mb_per_s", "MiB/s from 0 (unpaced) to 1048576", config.engine.copy_mb_per_s)
    if not 0 <= config.engine.memory_limit_mb <= 1 << 24:
        raise fail("engine.memory_limit_mb", "MiB from 0 (the service's MemoryMax, if any) to 16777216",
                   config.engine.memory_limit_mb)
    if config.engine.tick_rows <= 0:
        raise fail("engine.tick_rows", "a positive number of rows", config.engine.tick_rows)
    if config.engine.evolve_every < 0:
        raise fail("engine.evolve_every", "a number of ticks (0: no evolution)", config.engine.evolve_every)
    intelligent = config.engine.intelligent
    if not all(0 <= c <= 255 for c in intelligent) or len(set(intelligent)) != len(intelligent):
        raise fail("engine.intelligent", "a list of channel numbers 0-255, each once", list(intelligent))
    if config.engine.intelligent_save_every < 1:
        raise fail("engine.intelligent_save_every", "a positive number of ticks", config.engine.intelligent_save_every)
    if config.engine.intelligent_train_every < 1:
        raise fail("engine.intelligent_train_every", "a positive number of ticks", config.engine.intelligent_train_every)
    if config.engine.block_size <= 0:
        raise fail("engine.block_size", "a positive integer", config.engine.block_size)
    if not 0 <= config.engine.max_errors <= 1:
        raise fail("engine.max_errors", "a rate between 0 and 1", config.engine.max_errors)
    if not 0 <= config.engine.min_fitness <= 1:
        raise fail("engine.min_fitness", "a fitness between 0 and 1", config.engine.min_fitness)
    if not 1 <= config.engine.ingest_queue_mb <= 65536:
        raise fail("engine.ingest_queue_mb", "a number of MiB from 1 to 65536", config.engine.ingest_queue_mb)
    for entry in config.security.allow:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise fail("security.allow", "a list of IP networks such as 10.0.0.0/8", entry) from None
    if not 0 <= config.plugins.memory_max_mb <= 1 << 24:
        raise fail("plugins.memory_max_mb", "MiB from 0 (no limit) to 16777216", config.plugins.memory_max_mb)
    try:
        plugin_memory_limits(config.plugins.memory_limits)
    except ValueError as exc:
        raise fail("plugins.memory_limits", f'"NAME:MB" entries ({exc})', list(config.plugins.memory_limits)) from None
    if not 1 <= config.plugins.memory_frames <= 64:
        raise fail("plugins.memory_frames", "frames from 1 to 64", config.plugins.memory_frames)
    if not 0.1 <= config.plugins.memory_interval <= 86400:
        raise fail("plugins.memory_interval", "seconds from 0.1 to 86400", config.plugins.memory_interval)
    if config.storage.history_retention < 0:
        raise fail("storage.history_retention", "0 (keep all) or a number of seconds", config.storage.history_retention)
    schema = config.storage.postgres_schema
    if not (schema and len(schema) <= 40 and schema[0].isalpha() and all(c.islower() or c.isdigit() or c == "_" for c in schema)):
        raise fail("storage.postgres_schema", "a lowercase SQL name of at most 40 characters", schema)
    if config.security.enabled and not (config.security.secret_key_file and config.security.public_keys_dir):
        raise fail("security.secret_key_file", "a key file and security.public_keys_dir when security.enabled is true")
    name = config.name
    if not name or len(name.encode()) > 255:
        raise fail("node.name", "a name of 1 to 255 bytes", name)
