"""explain: the account by rules from hand-made rows (pure), the rows read from a real
SQLite store, the [explain] config, and the endpoint client against a small OpenAI-style
HTTP server on loopback (timeout, HTTP errors, breaker, token budget, cache)."""

from __future__ import annotations

import http.server
import json
import re
import threading
from dataclasses import replace

import pytest

from corec_node import explain as ex
from corec_node.config import ConfigError, ExplainSection, load_config
from corec_node.shell.control import CommandError, check_params
from corec_node.shell.explain_facts import UnknownSubject, read_alert, read_block
from corec_node.shell.explain_llm import Refiner
from corec_node.storage import LocalStore

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
B = (1 << 32) | 7  # block 1:7
STRONG = (1 << 32) | 3


def audit(ts, kind, reason, term=None, subject="block 1:7", **details):
    return {"uid": f"u{ts}", "ts": ts, "kind": kind, "subject": subject, "reason": reason, "term": term,
            "details": details}


def alert(ts, uid="ab" * 16, kind="audit_anomaly", block=B, node="b", message="block 1:7: mean +6.0 sigma"):
    return {"uid": uid, "ts": ts, "kind": kind, "severity": "warning", "block": block, "message": message,
            "details": {"tick": 40}, "node": node}


ROW = {"block": B, "channel": 1, "owner": "a", "tick": 57, "count": 1000, "active": 990, "mean": 20.01,
       "error_rate": 0.002, "fitness": 0.91}
TENURES = [{"owner": "a", "since": T0, "until": T0 + 30, "ticks": 31, "first_tick": 0, "last_tick": 30},
           {"owner": "a", "since": T0 + 100, "until": T0 + 150, "ticks": 51, "first_tick": 100, "last_tick": 150}]
AUDIT = [audit(T0 + 10, "regenerate", "2 errors in a row", entities=3, block=B),
         audit(T0 + 20, "audit_flag", "mean +6.0 sigma against channel 1's recent blocks", score=0.31, block=B),
         audit(T0 + 40, "fusion", "fitness 0.120 < min_fitness 0.2", term=4, into=STRONG, entities=1000),
         audit(T0 + 120, "genome_replaced", "challenger forecast better", current="g1", challenger="g2",
               generation=2, current_mase=0.9, challenger_mase=0.6, judged=30)]


def account(**kw):
    args = dict(now=T0 + 151, node="a", row=ROW, held_here=True, tenures=TENURES, audit=AUDIT,
                alerts=[alert(T0 + 21)], genome={"id": "g2", "generation": 2, "parents": ["g1"], "params": {}},
                placement={"owner": "a", "term": 4, "updated_at": T0 + 5})
    args.update(kw)
    return ex.block_account(B, **args)


def test_a_block_account_says_what_happened_from_the_rows():
    a = account()
    assert (a["kind"], a["subject"], a["name"], a["source"]) == ("block", "block 1:7", "1:7", "rules")
    s = a["summary"]
    for words in ("Block 1:7 is block 7 of channel 1", "Its owner now is a: 1,000 entities (990 active)",
                  "a holds it as its owner", "82 ticks of it", "2 stretches",
                  "repaired 1 time (3 entities regenerated)", "fused into 1:3 (term 4)",
                  "flagged by the audit 1 time", "ran 1 genome trial (1 replaced its genome)",
                  "1 alert about it is kept here", "audit_anomaly (warning) from b",
                  "Its genome is g2 (generation 2; parents: g1)", "nucleus of term 4 confirmed a"):
        assert words in s, words
    whats = [f["what"] for f in a["facts"]]
    assert whats == ["owner", "placement", "repair", "audit_flag", "alert", "fusion", "owner", "genome"]  # by time
    fusion = next(f for f in a["facts"] if f["what"] == "fusion")
    assert fusion["term"] == 4 and "fused into block 1:3" in fusion["text"]
    assert a["facts"][6]["text"] == "a started computing its aggregates (still does)"
    ended = [f for f in a["facts"] if f["what"] == "owner" and "until" in f["text"]]
    assert len(ended) == 1 and "31 ticks, ticks 0..30" in ended[0]["text"]


def test_the_digest_covers_the_facts_not_the_live_aggregates():
    a = account()
    assert account(row={**ROW, "mean": 25.0, "tick": 58})["digest"] == a["digest"]
    assert account(audit=AUDIT + [audit(T0 + 151, "regenerate", "again", entities=1)])["digest"] != a["digest"]
    # the ongoing stretch grows with every tick without changing the facts
    grown = [TENURES[0], {**TENURES[1], "until": T0 + 160, "ticks": 61, "last_tick": 160}]
    assert account(tenures=grown, now=T0 + 161)["digest"] == a["digest"]


def test_a_block_held_elsewhere_with_nothing_recorded_says_so():
    a = ex.block_account(B, now=T0, node="c", row={**ROW, "owner": "a"})
    assert "c does not hold it" in a["summary"]
    assert "No repair, fusion, audit flag, genome trial or alert about it is recorded here." in a["summary"]
    assert a["facts"] == [] and a["genome"] is None
    gone = ex.block_account(B, now=T0, node="c", state={**ROW, "ts": T0 - 60})
    assert "do not list it now; this node last stored its row at 2023-11-14 22:12:20 UTC" in gone["summary"]


def test_the_strong_side_of_a_fusion_reads_as_absorbing():
    row = audit(T0, "fusion", "fitness 0.1 < 0.2", term=3, subject="block 1:9", into=B, entities=12)
    a = ex.block_account(B, now=T0, node="a", audit=[row])
    assert "absorbed 1 weaker block" in a["summary"]
    assert a["facts"][0]["text"].startswith("absorbed block 1:9 (12 entities)")


def test_an_alert_account_puts_the_audit_around_it():
    al = alert(T0 + 100)
    rows = [audit(T0 + 100 - 2000, "audit_flag", "too old to matter", score=0.2),
            audit(T0 + 90, "audit_flag", "mean +6.0 sigma", score=0.3),
            audit(T0 + 95, "block_repair", "error rate 0.4 > max_errors 0.1", entities=50),
            audit(T0 + 160, "regenerate", "2 errors in a row", entities=2)]
    others = [alert(T0 + 10, uid="cd" * 16), al, alert(T0 + 50, uid="ef" * 16, kind="probe_hot")]
    a = ex.alert_account(al, now=T0 + 200, node="a", audit=rows, alerts=others, row=ROW)
    s = a["summary"]
    assert a["kind"] == "alert" and a["name"] == "1:7" and a["subject"] == f"alert {'ab' * 16}"
    assert f"Alert {'ab' * 16} (audit_anomaly, warning) was raised by b at 2023-11-14 22:15:00 UTC (1 minute ago)" in s
    assert "the audit flagged the block 1 time (the last: mean +6.0 sigma)" in s
    assert "Before it, here: block repaired: error rate 0.4 > max_errors 0.1" in s
    assert "After it, here: entities regenerated: 2 errors in a row" in s
    assert "1 other alert of kind audit_anomaly" in s  # probe_hot is another kind
    assert "too old" not in json.dumps(a["facts"])
    assert [f["what"] for f in a["facts"]].count("alert") == 2


def test_an_alert_about_no_block():
    a = ex.alert_account(alert(T0, block=None, node="a", kind="memory_full", message="memory 90 %"), now=T0, node="a")
    assert "raised by a (this node)" in a["summary"] and "about no block" in a["summary"] and a["name"] is None


def test_render_and_prompt():
    a = account()
    text = ex.render(a)
    assert text.startswith(a["summary"]) and "timeline:" in text and "[term 4]" in text
    assert "(by rules: timeout)" in ex.render({**a, "refined": False, "fallback": "timeout"})
    refined = ex.render({**a, "refined": True, "model": "m1", "text": "It went fine."})
    assert refined.startswith("It went fine.") and "reworded by m1" in refined and a["summary"] in refined
    messages = ex.prompt(a)
    assert messages[0]["role"] == "system" and "Use only the facts given" in messages[0]["content"]
    body = json.loads(messages[1]["content"])
    assert body["subject"] == "block 1:7" and len(body["facts"]) == len(a["facts"]) and "time" in body["facts"][0]


def test_explain_params_on_the_control_socket():
    assert check_params("explain", {"block": "1:7"}) == {"cmd": "explain", "block": B}
    assert check_params("explain", {"alert": "ABCD", "refine": False}) == {"cmd": "explain", "alert": "abcd",
                                                                            "refine": False}
    for bad in ({"alert": "abc"}, {"alert": "xyz1"}, {"block": "1:x"}, {"refine": "no"}):
        with pytest.raises(CommandError):
            check_params("explain", bad)


# -- config -------------------------------------------------------------------------------


def test_explain_config_keys_and_their_checks(tmp_path):
    c = load_config(env={"COREC_EXPLAIN_URL": "http://127.0.0.1:11434/v1", "COREC_EXPLAIN_API_KEY": "sk-secret"})
    assert (c.explain.url, c.explain.api_key, c.explain.timeout) == ("http://127.0.0.1:11434/v1", "sk-secret", 20.0)
    assert "sk-secret" not in repr(c)
    f = tmp_path / "c.toml"
    f.write_text('[explain]\nurl = "https://openrouter.ai/api/v1"\nmodel = "m"\ntoken_budget = 5000\n')
    assert load_config(f, env={}).explain.token_budget == 5000
    for key, value, words in (("url", "ftp://x", "http:// or https://"), ("timeout", 0, "seconds from 0"),
                              ("token_budget", 10, "at least explain.max_tokens"),
                              ("breaker_failures", 0, "positive number of failures"),
                              ("cache_size", -1, "from 0 (no cache)"), ("nope", 1, "unknown key")):
        f.write_text(f"[explain]\n{key} = {json.dumps(value)}\n")
        with pytest.raises(ConfigError, match=re.escape(words)) as err:
            load_config(f, env={})
        assert f"explain.{key}" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(env={"COREC_EXPLAIN_API_KEY": "sk secret"})
    assert "sk secret" not in str(err.value)


# -- the rows, from a real store ------------------------------------------------------------


def _row(tick, owner="a", block=B):
    return {"block": block, "channel": 1, "owner": owner, "tick": tick, "count": 10, "active": 9, "mean": 20.0,
            "min": 1.0, "max": 40.0, "std": 2.0, "error_rate": 0.0, "fitness": 1.0}


async def test_rows_are_read_from_the_store(tmp_path):
    store = await LocalStore.open(tmp_path / "corec.db", node="a")
    try:
        for t in range(5):  # ticks 0-4, then a gap of 100 s, then ticks 5-7 under another owner
            await store.record_tick([_row(t), _row(t, block=STRONG)], T0 + t)
        for t in range(5, 8):
            await store.record_tick([_row(t, owner="b")], T0 + 100 + t)
        await store.add_audit("regenerate", "block 1:7", "2 errors in a row", details={"block": B, "entities": 3})
        await store.add_audit("fusion", "block 1:3", "weak", term=2, details={"into": B, "entities": 10})
        await store.add_audit("fusion", "block 1:5", "weak", term=2, details={"into": STRONG})
        await store.add_audit("placement", "b", "membership changed", details={"records": 5})
        uid = await store.add_alert("probe_hot", "too hot", block=B)
        await store.add_alert("probe_hot", "too hot", block=B, uid=uid[:4] + "0" * 28, node="b")
        await store.record_placement(2, {B: "b"})

        rows = await read_block(store.path, B, gap=30.0, node="a")
        assert [(t["owner"], t["ticks"], t["first_tick"], t["last_tick"]) for t in rows.tenures] == [
            ("a", 5, 0, 4), ("b", 3, 5, 7)]
        assert [r["kind"] for r in rows.audit] == ["regenerate", "fusion"]  # its own, and the fusion into it
        assert rows.audit[1]["details"] == {"into": B, "entities": 10}
        assert [(r["uid"], r["node"]) for r in rows.alerts] == [(uid, "a"), (uid[:4] + "0" * 28, "b")]
        assert rows.state["owner"] == "b" and rows.placement["owner"] == "b" and rows.placement["term"] == 2
        assert not rows.empty() and (await read_block(store.path, (2 << 32), gap=30.0, node="a")).empty()

        found = await read_alert(store.path, uid, node="a")
        assert found.alert["uid"] == uid and found.alert["node"] == "a"
        assert [r["kind"] for r in found.audit] == ["regenerate", "fusion"] and len(found.alerts) == 2
        assert (await read_alert(store.path, uid[:12], node="a")).alert["uid"] == uid
        with pytest.raises(UnknownSubject, match="ambiguous"):
            await read_alert(store.path, uid[:4], node="a")
        with pytest.raises(UnknownSubject, match="no alert"):
            await read_alert(store.path, "ffff" if not uid.startswith("ffff") else "eeee", node="a")
    finally:
        await store.close()


# -- the endpoint -----------------------------------------------------------------------------


class _Endpoint(http.server.BaseHTTPRequestHandler):
    """OpenAI's chat completions by path: /ok, /slow (answers after the test lets it),
    /fail (500), /junk (not JSON), /greedy (reports 5000 tokens), /nousage."""

    requests: list[tuple[str, dict, dict]] = []
    release = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = self.path.split("/")[1]
        self.requests.append((kind, dict(self.headers), body))
        if kind == "slow":
            self.release.wait(10)
        if kind == "fail":
            self.send_response(500)
            self.end_headers()
            return
        answer = {"model": body.get("model", "served-model"),
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": f" Reworded ({kind}). "}}]}
        if kind != "nousage":
            answer["usage"] = {"total_tokens": 5000 if kind == "greedy" else 321}
        data = b"{not json" if kind == "junk" else json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint():
    _Endpoint.requests = []
    _Endpoint.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Endpoint.release.set()
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def settings(base: str, path: str, **kw) -> ExplainSection:
    return replace(ExplainSection(url=f"{base}/{path}/v1", api_key="sk-test", model="m1", timeout=2.0), **kw)


async def test_the_endpoint_rewords_and_the_cache_answers_again(endpoint):
    r = Refiner(settings(endpoint, "ok"))
    a = account()
    out = await r.refine(a)
    assert (out["refined"], out["model"], out["text"], out["cached"]) == (True, "m1", "Reworded (ok).", False)
    assert out["summary"] == a["summary"] and out["facts"] == a["facts"]  # the facts by rules stay
    (kind, headers, body), = _Endpoint.requests
    assert headers["Authorization"] == "Bearer sk-test" and body["model"] == "m1" and body["max_tokens"] == 400
    assert body["messages"] == ex.prompt(a)
    again = await r.refine(account(row={**ROW, "mean": 30.0}))  # the same facts: the same digest
    assert again["cached"] is True and again["text"] == "Reworded (ok)." and len(_Endpoint.requests) == 1
    assert r.tokens_spent() == 321
    other = await r.refine(account(alerts=[]))
    assert other["cached"] is False and len(_Endpoint.requests) == 2


async def test_no_endpoint_configured_is_the_account_by_rules():
    out = await Refiner(ExplainSection()).refine(account())
    assert out["refined"] is False and out["fallback"] == "no endpoint configured (explain.url)"


@pytest.mark.parametrize("path, words", [
    ("slow", "no answer from http://127.0.0.1:{port}/slow/v1 within 0.3 s"),
    ("fail", "answered HTTP 500"),
    ("junk", "not JSON"),
])
async def test_a_failing_endpoint_falls_back_to_the_rules(endpoint, path, words):
    r = Refiner(settings(endpoint, path, timeout=0.3))
    out = await r.refine(account())
    assert out["refined"] is False and words.format(port=endpoint.rsplit(":", 1)[1]) in out["fallback"]
    assert out["summary"] == account()["summary"] and "text" not in out
    assert r.failures == 1 and not r.cache


async def test_the_breaker_opens_after_failures_in_a_row_and_tries_again_after_the_cooldown(endpoint):
    clock = Clock()
    r = Refiner(settings(endpoint, "fail", breaker_failures=2, breaker_cooldown=60.0), clock=clock)
    first = await r.refine(account())
    second = await r.refine(account())
    assert "HTTP 500" in first["fallback"] and "skipped for 60 s after 2 failures" in second["fallback"]
    third = await r.refine(account())
    assert "breaker open for 60 s more" in third["fallback"] and len(_Endpoint.requests) == 2  # not asked
    clock.t += 61
    r.s = replace(r.s, url=f"{endpoint}/ok/v1")  # the endpoint is back
    out = await r.refine(account())
    assert out["refined"] is True and r.failures == 0 and len(_Endpoint.requests) == 3


async def test_the_token_budget_stops_requests_until_the_window_passes(endpoint):
    clock = Clock()
    r = Refiner(settings(endpoint, "greedy", token_budget=6000, budget_window=3600.0), clock=clock)
    assert (await r.refine(account()))["refined"] is True
    spent = await r.refine(account(alerts=[]))  # other facts: not cached, and 5000 + this one's share > 6000
    assert spent["refined"] is False and "token budget spent: 5,000 of 6,000 tokens" in spent["fallback"]
    assert len(_Endpoint.requests) == 1 and r.failures == 0  # a budget is not a failure of the endpoint
    clock.t += 3601
    assert (await r.refine(account(alerts=[])))["refined"] is True and len(_Endpoint.requests) == 2


async def test_tokens_are_estimated_when_the_endpoint_reports_none(endpoint):
    r = Refiner(settings(endpoint, "nousage", model=""))
    out = await r.refine(account())
    assert out["refined"] is True and out["model"] == "served-model"  # no model sent: the server's own
    assert "model" not in _Endpoint.requests[0][2]
    assert 0 < r.tokens_spent() < 2000
