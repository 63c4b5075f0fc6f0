"""Prompt tokens of a request the engine never reported usage for (a client abort, a stream
cut mid-way): asked of the engine's own tokenizer, off the request path.

vLLM reports usage only at the end of a stream, so an aborted stream's record would carry no
prompt tokens and its prefill would be charged to everyone else. The record pipeline asks the
upstream's ``POST /tokenize`` (vLLM's route: the same tokenizer and, for chat messages, the
same chat template as the request) for the count, and marks the record's tags so reports can
tell measured from derived counts: ``infermeter.prompt_tokens = tokenize`` and
``infermeter.completion_tokens = stream`` (the generation frames the collector counted). An
upstream without the route (405, or a 404 that is not an OpenAI error body: a 404 *naming*
something, such as an unknown model, is that request's failure only) is remembered and not
asked again.
"""

from __future__ import annotations

import logging

import aiohttp
import orjson

from infermeter.collector.record import RequestRecord

log = logging.getLogger(__name__)
DERIVED_PROMPT = "infermeter.prompt_tokens"
DERIVED_COMPLETION = "infermeter.completion_tokens"
_FIELDS = ("messages", "prompt", "add_generation_prompt", "chat_template", "tools")


class PromptCounter:
    """Counts prompt tokens with the upstream engine's ``/tokenize``."""

    def __init__(self, session: aiohttp.ClientSession, upstream: str, timeout_s: float = 5.0):
        self.session = session
        self.url = upstream.rstrip("/") + "/tokenize"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.unsupported = False
        self.counted = 0
        self.failures = 0

    def wanted(self, rec: RequestRecord) -> bool:
        """Whether ``rec`` lacks engine-reported prompt tokens but has a body to count."""
        return rec.prompt_tokens is None and bool(rec.body) and not self.unsupported

    async def fill(self, rec: RequestRecord) -> None:
        """Set ``rec.prompt_tokens`` from ``/tokenize`` (leaves it unset on any failure)."""
        try:
            request = orjson.loads(rec.body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(request, dict):
            return
        query = {k: request[k] for k in _FIELDS if k in request}
        query["model"] = request.get("model", rec.model)
        if isinstance(query.get("prompt"), list):  # a batch of prompts: not one request's
            return
        try:
            async with self.session.post(self.url, json=query, timeout=self.timeout) as resp:
                body = await resp.read()
                if resp.status == 405 or (resp.status == 404 and not _is_error_body(body)):
                    self.unsupported = True
                    log.warning("%s: no /tokenize route; aborted requests keep 0", self.url)
                    return
                if resp.status != 200:  # incl. a 404 naming the request's model: this one only
                    self.failures += 1
                    return
        except (TimeoutError, aiohttp.ClientError):
            self.failures += 1
            return
        try:
            count = orjson.loads(body).get("count")
        except (orjson.JSONDecodeError, AttributeError):
            self.failures += 1
            return
        if isinstance(count, int) and count >= 0:
            rec.prompt_tokens = count
            rec.tags[DERIVED_PROMPT] = "tokenize"
            if rec.completion_tokens is None:
                rec.tags[DERIVED_COMPLETION] = "stream"
            self.counted += 1


def _is_error_body(body: bytes) -> bool:
    """Whether ``body`` is an OpenAI error object (the engine judged the request)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
