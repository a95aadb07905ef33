"""protocol/SPEC.md against the code: what the text says is what the node and the producer
client do (the golden vectors check the bytes; this checks the rules around them).

Each test names the SPEC section it holds to. A failure means the code and the text
disagree: change whichever is wrong, and the vectors with them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import threading
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from corec_node.client import Client
from corec_node.config import Config, NodeSection
from corec_node.engine import producers
from corec_node.engine.host import EngineHost
from corec_node.engine.placement import members_digest
from corec_node.engine.repair import Fusion
from corec_node.shell import data_plane as data_plane_module
from corec_node.shell import learning as learning_module
from corec_node.shell import routing
from corec_node.shell.control_plane import ClusterView
from corec_node.shell.data_plane import DataPlane
from corec_node.shell.traffic import Outbox, Traffic
from corec_node.wire import (
    ENTITY_DTYPE,
    FEATURES,
    PROTOCOL_MINOR,
    SCHEMAS,
    BatchReply,
    EntityBatch,
    FusionPlan,
    Owner,
    Ping,
    Placement,
    PlacementRequest,
    decode_batch,
    decode_message,
    encode_entities,
    encode_message,
    make_batch,
)
from corec_node.wire.topics import TOPIC_DIRECT

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "protocol" / "SPEC.md").read_text(encoding="utf-8")
MESSAGES = json.loads((ROOT / "protocol" / "vectors" / "messages.json").read_text(encoding="utf-8"))


def _generator():
    spec = importlib.util.spec_from_file_location("corec_vectors_generate_conf", ROOT / "protocol" / "vectors" / "generate.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


GEN = _generator()


def section(number: str) -> str:
    """The text of SPEC section ``number`` ("15", "9.2"), up to the next heading of its level or above."""
    sub = "." in number  # "## 9. Engine messages", "### 9.2 Messages"
    heading = rf"^### {re.escape(number)} " if sub else rf"^## {re.escape(number)}\. "
    start = re.search(heading + ".*$", SPEC, re.MULTILINE)
    assert start is not None, f"no section {number}"
    rest = SPEC[start.end():]
    nxt = re.search(r"^###? \d" if sub else r"^## \d", rest, re.MULTILINE)
    return rest[: nxt.start()] if nxt else rest


def _vector(name: str) -> dict:
    return next(v for v in MESSAGES["valid"] if v["name"] == name)


# -- the text's own examples are the vectors (17, 10.1) ----------------------------------


def test_the_worked_example_is_the_ping_vector() -> None:
    text = section("17")
    block = text.split("```")[1]
    frames: list[bytes] = []
    for line in block.splitlines():
        m = re.match(r"^(frame \d)?\s+((?:[0-9a-f]{2}\s+)+)", line + " ")
        if not m or not m.group(2).strip():
            continue
        hexes = bytes.fromhex("".join(re.findall(r"\b[0-9a-f]{2}\b", m.group(2))))
        if m.group(1):
            frames.append(hexes)
        else:
            frames[-1] += hexes
    assert [f.hex() for f in frames] == _vector("ping")["frames"]
    record = re.search(r"A record `\(id 1, channel 7, value 1\.5, active\)`: `([0-9a-f ]+)`", text)
    assert record is not None
    rec = np.array([(1, 7, 1.5, True)], dtype=ENTITY_DTYPE)
    assert bytes.fromhex(record.group(1).replace(" ", "")) == encode_entities(rec)


# -- the tables name what the codec checks (6, 15) ----------------------------------------


def test_every_body_field_is_in_the_type_table_in_canonical_order() -> None:
    table = section("6")
    for msg_type, schema in SCHEMAS.items():
        row = re.search(rf"^\| {int(msg_type)} \| {msg_type.name} \|.*$", table, re.MULTILINE)
        assert row is not None, f"{msg_type.name} has no row in section 6"
        fields_col = row.group(0).rstrip(" |").rsplit("|", 1)[1]
        named = re.findall(r"`([a-z_]+)`", fields_col)
        wanted = [name for name, _kind, _seg in schema.body.kinds]
        assert named == wanted, f"section 6 lists {named} for {msg_type.name}, the codec {wanted}"


def test_the_optional_fields_are_the_ones_with_defaults() -> None:
    text = section("6")
    para = text[text.index("The optional fields are"):]
    para = para[: para.index("\n\n")] if "\n\n" in para else para
    optional = {name for schema in SCHEMAS.values() for name in schema.body.defaults}
    optional |= set(_member_defaults())
    for name in optional:
        assert f"`{name}`" in para, f"optional field {name} not listed in section 6"


def _member_defaults() -> list[str]:
    from corec_node.wire.fields import _MEMBER
    return list(_MEMBER.defaults)


def test_every_reason_the_codec_gives_is_in_the_reason_table() -> None:
    table = section("15")
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    given: set[str] = set()
    for path in (ROOT / "corec_node" / "wire").glob("*.py"):
        src = path.read_text(encoding="utf-8")
        given |= set(re.findall(r'(?:WireError|_Bad)\(\s*"([a-z_]+)"', src))
        given |= set(re.findall(r'reason_hi="([a-z_]+)"', src))
    assert given, "no reasons found: the pattern is stale"
    assert given <= listed, f"reasons missing from section 15: {sorted(given - listed)}"
    assert listed <= given | {"truncated"}, f"section 15 lists reasons the codec never gives: {sorted(listed - given)}"


def test_the_batch_reply_reasons_are_in_9_4() -> None:
    text = section("9.4")
    src = Path(data_plane_module.__file__).read_text(encoding="utf-8")
    for reason in ("busy", "too_large", "malformed"):
        assert f'"{reason}"' in src and f"`{reason}`" in text, reason
    assert data_plane_module.REPLY_MINOR == 4 and "`m` is 4 or more" in text


# -- 4, 14: every message carries its sender's minor ---------------------------------------


def test_every_message_carries_the_senders_own_minor() -> None:
    assert f"`{PROTOCOL_MINOR}` for this document" in section("4")
    for vector in MESSAGES["valid"]:
        if vector["canonical"]:
            assert vector["header"]["minor"] == PROTOCOL_MINOR, vector["name"]
    frames = encode_message(Ping(1, "b", "h:1"), sender="a", seq=0)
    assert decode_message(frames)[1].minor == PROTOCOL_MINOR


# -- 4.1, 9.2: rows and fusion maps in canonical order --------------------------------------


def test_engine_rows_have_the_spec_keys_in_order_with_their_types() -> None:
    keys = GEN.AGG_ROW_KEYS
    assert ", ".join(keys) in " ".join(section("4").split()), "section 4.1 lists another row order"
    table = [line.split("|")[1] for line in section("9.2").splitlines() if line.startswith("  | `")]
    assert re.findall(r"`([a-z_]+)`", "".join(table)) == list(keys), "the row table of 9.2"
    host = EngineHost("node-a", block_size=1000, max_errors=0.5, tick_rows=10_000)
    recs = np.zeros(5, dtype=ENTITY_DTYPE)
    recs["id"] = [1, 2, 3, 1001, 1002]
    recs["channel"] = 7
    recs["value"] = [1.0, 2.0, 3.0, 4.0, 5.0]
    recs["active"] = [1, 1, 0, 0, 0]  # block 7:1 has no active entity
    host.ingest(recs, sweep=False)
    rows, _ = host.tick()
    assert len(rows) == 2
    ints = {"block", "channel", "count", "active", "tick", "epoch"}
    adaptive = ("forecast", "forecast_error", "generation", "genome", "genome_spec", "anomaly")  # 1.10, section 9.8
    assert ", ".join(adaptive[:5]) + "` and since 1.11 `anomaly" in " ".join(section("4").split()), \
        "section 4.1 lists the adaptive keys"
    optional = {adaptive[:4] + extra for extra in ((), ("genome_spec",), ("anomaly",), ("genome_spec", "anomaly"))}
    for row in rows:
        assert tuple(row)[: len(keys)] == keys and tuple(row)[len(keys):] in optional
        for key in ints:
            assert type(row[key]) is int, key
        assert type(row["owner"]) is str
        for key in ("mean", "min", "max", "std", "error_rate", "fitness"):
            assert row[key] is None or type(row[key]) is float, key
        frames = encode_message(GEN.Aggregates(tick=1, rows=(row,)), sender="node-a", seq=0)
        assert decode_message(frames)[1].msg.rows[0] == row
    idle = next(r for r in rows if r["active"] == 0)
    assert (idle["mean"], idle["min"], idle["max"], idle["std"], idle["fitness"]) == (None, None, None, None, 0.0)
    busy = next(r for r in rows if r["active"])
    assert busy["fitness"] == pytest.approx(GEN._fitness(busy["count"], busy["active"], busy["error_rate"],
                                                         busy["mean"], busy["std"]))


def test_the_nucleus_writes_fusion_maps_in_spec_order() -> None:
    sent: list = []
    fake = SimpleNamespace(
        engine=SimpleNamespace(plan=lambda _min: [Fusion((7 << 32) | 3, (7 << 32) | 1, 7, "fitness low")]),
        config=SimpleNamespace(min_fitness=0.2), view=SimpleNamespace(term=9),
        outbox=SimpleNamespace(publish=sent.append), _apply_fusions=lambda plan, term: None)
    DataPlane._plan_fusions(fake)  # type: ignore[arg-type]
    (plan,) = sent
    assert isinstance(plan, FusionPlan)
    assert tuple(plan.fusions[0]) == GEN.FUSION_KEYS
    assert "`weak, strong, channel, reason`" in " ".join(section("4").split())


# -- 5: printable, digests ------------------------------------------------------------------


_NOT_PRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}


def test_printable_is_the_category_rule_of_section_5() -> None:
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        by_text = c == " " or unicodedata.category(c) not in _NOT_PRINTABLE
        assert c.isprintable() == by_text, f"U+{cp:04X}"
    major, minor, _ = unicodedata.unidata_version.split(".")
    assert f"{major}.{minor} on Python {sys.version_info.major}.{sys.version_info.minor}" in " ".join(section("5").split())


def test_the_placement_digest_is_16_lowercase_hex_digits() -> None:
    digest = members_digest(["node-a", "node-b"])
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert "16 lowercase hex digits" in section("5")


# -- 9.5, 11, 12: the producer ------------------------------------------------------------


def test_the_default_label_is_corec_for_node_client_and_send() -> None:
    from corec_node.cli import build_parser

    assert NodeSection().cluster == "corec"
    assert Client.__init__.__kwdefaults__["cluster"] == "corec"
    args = build_parser().parse_args(["send", "--to", "127.0.0.1:7400", "--channel", "3", "--count", "1"])
    assert args.cluster == "corec"
    assert "`corec` unless" in section("12") and "`corec` unless" in section("9.5")


@pytest.fixture
def router():
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, port
    sock.close(0)


def test_the_client_writes_a_producer_batch_as_9_5_says(router) -> None:
    """The 1.4 path: a node that does not answer the map request (older than 1.5) gets
    every batch on its direct socket, under one q counter with the request."""
    sock, port = router
    recs = np.zeros(6, dtype=ENTITY_DTYPE)
    recs["id"] = np.arange(6)
    recs["channel"] = [3, 3, 5, 5, 5, 3]
    recs["active"] = 1
    seen = []
    with Client(f"127.0.0.1:{port}", reply_timeout=5.0, map_timeout=0.2) as client:
        client.send(recs)
        while sum(env.msg.count for _, env in seen if isinstance(env.msg, EntityBatch)) < 6:
            assert sock.poll(5000), "the client's batches did not arrive"
            identity, *frames = sock.recv_multipart()
            topic, env, _payload = decode_message(frames, cluster="corec")
            seen.append((topic, env))
            if isinstance(env.msg, EntityBatch):
                answer = BatchReply(seq=env.seq, accepted=env.msg.count)
                sock.send_multipart([identity, *encode_message(answer, sender="node-a", seq=len(seen), cluster="corec")])
    request, *batches = seen
    assert request[0] == TOPIC_DIRECT and request[1].msg == PlacementRequest()  # no map held: epoch 0
    assert [t for t, _ in batches] == [b"ent.003", b"ent.005"]  # its channel's topic on a direct socket, never dir
    assert [env.seq for _, env in seen] == [1, 2, 3]  # one counter for every message, every channel
    for _, env in seen:
        assert (env.minor, env.cluster) == (PROTOCOL_MINOR, "corec")
        assert env.sender.startswith("client-")
    msgs = [env.msg for _, env in batches]
    assert msgs[0].producer == msgs[1].producer != 0  # 9.6: one id, never the anonymous 0
    assert [m.pseq for m in msgs] == [1, 2]  # rising
    assert [(m.epoch, m.hops, m.acks) for m in msgs] == [(0, 0, 1)] * 2  # not split; producers never write hops
    assert client.accepted == 6 and not client.routed


def _spec_owner(names: list[str], block: int) -> str:
    """SPEC 9.1's rendezvous rule written from the text alone (not the engine's numpy code)."""
    import hashlib

    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    def score(name: str) -> int:
        seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, person=b"corec-placement").digest(), "big")
        return mix(mix((block + 0x9E3779B97F4A7C15) & mask) ^ seed)

    return min(names, key=lambda n: (-score(n), n.encode()))


def test_the_routing_example_of_9_6_is_the_reference_placement() -> None:
    text = section("9.6")
    placement = _vector("placement")["body"]
    names = [o["name"] for o in placement["owners"]]
    roots = {f["block"]: f["root"] for f in placement["fusions"]}
    assert placement["block_size"] == GEN.BLOCK_SIZE and placement["digest"] == members_digest(names)
    rows = re.findall(r"^  \| \((\d+), (\d+)\) \| (\d+):(\d+) = (\d+) \| (\d+):(\d+)[^|]*\| `([^`]+)`", text, re.MULTILINE)
    assert len(rows) == len(GEN.ROUTING_EXAMPLE) == 5, "the table of section 9.6"
    for channel, id_, b_ch, b_no, b_dec, r_ch, r_no, owner in (tuple(map(str, r)) for r in rows):
        block = int(channel) << 32 | int(id_) // placement["block_size"]
        assert (int(b_ch) << 32 | int(b_no)) == block == int(b_dec)
        root = roots.get(block, block)
        assert (int(r_ch) << 32 | int(r_no)) == root
        assert owner == _spec_owner(names, root) == GEN.owner_of(int(channel), int(id_))
    fused = (7 << 32) | 2
    assert _spec_owner(names, fused) != _spec_owner(names, roots[fused])  # the example shows the root matters
    # the vectors' parts go where the map says
    for name, owner in (("entity_batch_owner_routed", "node-b"), ("entity_batch_forwarded", "node-c")):
        for rec in _vector(name)["records"]:
            assert _spec_owner(names, rec["channel"] << 32 | rec["id"] // placement["block_size"]) == owner, name


def test_the_owner_routing_rules_of_9_6_are_the_codes() -> None:
    text, answers = " ".join(section("9.6").split()), " ".join(section("9.4").split())
    for reason in (routing.NOT_OWNER, routing.UNCONFIRMED, routing.BUSY, producers.DUPLICATE, producers.OUT_OF_ORDER):
        assert f"`{reason}`" in answers and f"`{reason}`" in text, reason
    assert routing.FORWARD_WAIT == 8.0 and "8 s after it was sent" in text
    assert Config().data_listen[1] == Config().listen[1] + 2
    assert "direct port + 2" in section("1") and "direct port + 2" in text and "`mesh.data_listen`" in section("1")
    assert "owner_routing" in FEATURES and "`owner_routing` 1.5" in " ".join(section("5").split())
    assert learning_module.SEQUENCE_ROWS <= 10_000 and f"{learning_module.SEQUENCE_ROWS:,}" in text
    assert EntityBatch(channel=0, count=0, compressed=False).acks == 1 and "`acks`, whose absence means 1" in " ".join(section("6").split())


@pytest.fixture
def routers():
    socks = []

    def make():
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        socks.append(sock)
        return sock, sock.bind_to_random_port("tcp://127.0.0.1")

    yield make
    for sock in socks:
        sock.close(0)


def test_the_client_routes_by_owner_as_9_6_says(routers) -> None:
    """Ask the given node for the map, split by owner with the fusions and the rendezvous
    rule, send each part to its owner's data socket with the map's epoch; fetch the map
    again when an answer names a higher epoch."""
    given, given_port = routers()
    owners = {name: routers() for name in ("node-a", "node-b", "node-c")}
    epoch = GEN._EPOCH

    def placement(e: int) -> Placement:
        return Placement(epoch=e, digest=members_digest(owners), block_size=GEN.BLOCK_SIZE,
                         owners=tuple(Owner(n, f"127.0.0.1:{port}") for n, (_, port) in owners.items()),
                         fusions=GEN.FUSIONS)

    requests: list = []
    answer_maps = iter([placement(epoch), placement(epoch + 1)])

    def node() -> None:  # the given node: answers two map requests on their connection
        for _ in range(2):
            if not given.poll(10_000):
                return
            identity, *frames = given.recv_multipart()
            _topic, env, _ = decode_message(frames, cluster="corec")
            requests.append(env)
            given.send_multipart([identity, *encode_message(next(answer_maps), sender="node-a", seq=len(requests),
                                                            cluster="corec")])

    thread = threading.Thread(target=node, daemon=True)
    thread.start()
    recs = np.zeros(len(GEN.ROUTING_EXAMPLE), dtype=ENTITY_DTYPE)
    recs["channel"] = [c for c, _ in GEN.ROUTING_EXAMPLE]
    recs["id"] = [i for _, i in GEN.ROUTING_EXAMPLE]
    recs["active"] = 1
    got: list = []  # (owner, env, records)

    def take(want: int, reply_epoch: int) -> None:
        while sum(len(r) for _, _, r in got) < want:
            ready = zmq.select([s for s, _ in owners.values()], [], [], 5.0)[0]
            assert ready, "the client's parts did not arrive"
            for name, (sock, _) in owners.items():
                if sock in ready:
                    identity, *frames = sock.recv_multipart()
                    _topic, env, payload = decode_message(frames, cluster="corec")
                    got.append((name, env, decode_batch(env.msg, payload)))
                    reply = BatchReply(seq=env.seq, accepted=env.msg.count, epoch=reply_epoch)
                    sock.send_multipart([identity, *encode_message(reply, sender=name, seq=len(got), cluster="corec")])

    with Client(f"127.0.0.1:{given_port}", reply_timeout=5.0, map_timeout=5.0) as client:
        client.send(recs)
        take(len(recs), epoch + 1)  # the owners' answers say the map is stale
        client.flush(5.0)
        client.send(recs[:1])
        take(len(recs) + 1, 0)
    thread.join(5.0)
    assert [r.msg for r in requests] == [PlacementRequest(), PlacementRequest(epoch=epoch)]
    first, last = got[:-1], got[-1]
    for name, env, records in got:
        for rec in records:
            assert GEN.owner_of(int(rec["channel"]), int(rec["id"])) == name
        assert env.msg.hops == 0 and env.msg.acks == 1 and env.msg.producer == first[0][1].msg.producer != 0
    assert {e.msg.epoch for _, e, _ in first} == {epoch} and last[1].msg.epoch == epoch + 1
    seqs = [e.seq for _, e, _ in got] + [r.seq for r in requests]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))  # one q counter for every message
    by_q = sorted(got, key=lambda g: g[1].seq)
    pseqs = [e.msg.pseq for _, e, _ in by_q]
    assert pseqs == sorted(pseqs) and len(set(pseqs)) == len(pseqs)  # rising across every owner
    assert client.routed and client.accepted == len(recs) + 1


def test_a_node_tells_a_producer_from_a_member_by_its_name() -> None:
    node = SimpleNamespace(name="node-a", view=ClusterView(
        members={"node-a": "h:1", "node-b": "h:2", "node-gone": "h:3"}, live=("node-a", "node-b"),
        leader="node-a", term=1))
    assert DataPlane.is_handoff(node, "node-b")  # type: ignore[arg-type]
    assert DataPlane.is_handoff(node, "node-gone")  # type: ignore[arg-type]  # any status it remembers
    assert not DataPlane.is_handoff(node, "client-gw1-4242")  # type: ignore[arg-type]
    assert not DataPlane.is_handoff(node, "node-a")  # type: ignore[arg-type]  # its own name: a producer


def test_direct_messages_share_one_counter_and_pub_topics_one_each() -> None:
    outbox = Outbox(None, Traffic(), name="node-a", cluster="corec")  # type: ignore[arg-type]
    header, payload = make_batch(np.zeros(0, dtype=ENTITY_DTYPE), 3)
    ping = outbox.frames(Ping(1, "node-b", "h:1"), TOPIC_DIRECT)
    handoff = outbox.frames(header, TOPIC_DIRECT, payload)  # as ReplicaSide._hand_off sends it
    reply = outbox.frames(BatchReply(seq=1, accepted=0), TOPIC_DIRECT)
    republished = outbox.frames(header, b"ent.003", payload)  # as DataPlane._republish sends it
    assert [decode_message(f)[1].seq for f in (ping, handoff, reply)] == [0, 1, 2]
    assert handoff[0] == b"ent.003"
    assert decode_message(republished)[1].seq == 0
    src = Path(learning_module.__file__).read_text(encoding="utf-8")
    assert "self.outbox.frames(header, TOPIC_DIRECT, payload)" in src  # handoffs on the dir counter
    assert isinstance(header, EntityBatch)
