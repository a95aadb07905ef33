"""An OpenAI-compatible endpoint that rewords ``explain``'s account (``[explain]`` config):
OpenRouter, Ollama (``http://127.0.0.1:11434/v1``), a llama.cpp server, anything that
answers ``POST {url}/chat/completions``.

Optional and never trusted with the facts: the account by rules is always built first and
kept beside the reworded text, and any failure gives it back with ``fallback`` saying why.
Asked only from the ``explain`` control command (never on the tick path), in a worker
thread (urllib: no new dependency), with:

- a timeout (``explain.timeout``) on the whole request;
- a breaker: after ``breaker_failures`` failures in a row the endpoint is not asked for
  ``breaker_cooldown`` seconds; then one request tries it again;
- a token budget: ``token_budget`` tokens (the answers' ``usage.total_tokens``, or an
  estimate of 4 characters a token when an endpoint reports none) per ``budget_window``
  seconds; a request that could pass it is not sent;
- a cache of ``cache_size`` answers by the account's digest (``explain.py`` rule 2).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from corec_node import log
from corec_node.explain import prompt

MAX_TEXT = 4000  # characters of an endpoint's answer kept (an account is a paragraph)
MAX_BODY = 1 << 20  # bytes of an endpoint's response read at most
CHARS_PER_TOKEN = 4  # the usual estimate, for endpoints that report no usage


class RefineFailed(Exception):
    """Why the endpoint gave no usable answer, in words for ``fallback``."""


class Refiner:
    """The endpoint with its breaker, budget and cache; one per node, used on the loop."""

    def __init__(self, settings: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.s = settings  # config.ExplainSection
        self.clock = clock
        self.failures = 0  # in a row
        self.open_until = 0.0  # breaker open until this clock time
        self.spent: collections.deque[tuple[float, int]] = collections.deque()  # (when, tokens)
        self.cache: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()  # digest -> text, model
        self.requests = 0  # sent to the endpoint

    @property
    def url(self) -> str:
        return self.s.url.rstrip("/") + "/chat/completions"

    def tokens_spent(self) -> int:
        cutoff = self.clock() - self.s.budget_window
        while self.spent and self.spent[0][0] <= cutoff:
            self.spent.popleft()
        return sum(n for _, n in self.spent)

    async def refine(self, account: Mapping[str, Any]) -> dict[str, Any]:
        """``account`` reworded (``refined`` true, ``model``, ``text``), or as it is with
        ``refined`` false and ``fallback`` saying why. Never raises for the endpoint."""
        if not self.s.url:
            return {**account, "refined": False, "fallback": "no endpoint configured (explain.url)"}
        key = account["digest"]
        if key in self.cache:
            self.cache.move_to_end(key)
            text, model = self.cache[key]
            return {**account, "refined": True, "model": model, "text": text, "cached": True}
        try:
            text, model = await self._ask(account)
        except RefineFailed as exc:
            log.event("explain_fallback", subject=account["subject"], reason=str(exc))
            return {**account, "refined": False, "fallback": str(exc)}
        if self.s.cache_size > 0:
            self.cache[key] = (text, model)
            while len(self.cache) > self.s.cache_size:
                self.cache.popitem(last=False)
        return {**account, "refined": True, "model": model, "text": text, "cached": False}

    async def _ask(self, account: Mapping[str, Any]) -> tuple[str, str]:
        now = self.clock()
        if now < self.open_until:
            raise RefineFailed(f"endpoint skipped after {self.failures} failures in a row "
                               f"(breaker open for {self.open_until - now:.0f} s more)")
        messages = prompt(account)
        need = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN + self.s.max_tokens
        spent = self.tokens_spent()
        if self.s.token_budget and spent + need > self.s.token_budget:
            raise RefineFailed(f"token budget spent: {spent:,} of {self.s.token_budget:,} tokens in the last "
                               f"{self.s.budget_window:g} s, and this account may take {need:,}")
        body: dict[str, Any] = {"messages": messages, "max_tokens": self.s.max_tokens, "temperature": 0.2}
        if self.s.model:
            body["model"] = self.s.model
        self.requests += 1
        try:
            answer = await asyncio.wait_for(asyncio.to_thread(self._post, body), self.s.timeout)
            text, model, tokens = self._parse(answer, need)
        except TimeoutError:  # asyncio.wait_for's, since 3.11 the builtin
            raise self._failed(f"no answer from {self.s.url} within {self.s.timeout:g} s") from None
        except RefineFailed as exc:
            raise self._failed(str(exc)) from None
        self.failures = 0
        self.spent.append((self.clock(), tokens))
        return text, model

    def _failed(self, why: str) -> RefineFailed:
        self.failures += 1
        if self.failures >= self.s.breaker_failures:
            self.open_until = self.clock() + self.s.breaker_cooldown
            why += f"; endpoint skipped for {self.s.breaker_cooldown:g} s after {self.failures} failures in a row"
        return RefineFailed(why)

    def _post(self, body: dict[str, Any]) -> Any:
        """In the worker thread: the request, and the decoded JSON of a 2xx answer."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.s.api_key:
            headers["Authorization"] = f"Bearer {self.s.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.s.timeout) as resp:
                raw = resp.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            raise RefineFailed(f"{self.s.url} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                raise RefineFailed(f"no answer from {self.s.url} within {self.s.timeout:g} s") from None
            raise RefineFailed(f"cannot reach {self.s.url}: {reason}") from None
        if len(raw) > MAX_BODY:
            raise RefineFailed(f"{self.s.url} answered more than {MAX_BODY:,} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise RefineFailed(f"{self.s.url} answered something that is not JSON") from None

    def _parse(self, answer: Any, estimate: int) -> tuple[str, str, int]:
        """The text, the model and the tokens of an OpenAI-style chat completion."""
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RefineFailed(f"{self.s.url} answered JSON without choices[0].message.content") from None
        if not isinstance(text, str) or not text.strip():
            raise RefineFailed(f"{self.s.url} answered an empty text")
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        tokens = usage.get("total_tokens")
        if type(tokens) is not int or tokens < 0:
            tokens = estimate - self.s.max_tokens + len(text) // CHARS_PER_TOKEN
        model = answer.get("model") if isinstance(answer.get("model"), str) else self.s.model
        return text.strip()[:MAX_TEXT], model or "", tokens
