"""Approximate token counts and deterministic completion text.

Token counting (no real tokenizer is loaded): the text is cut by the regular expression
``[^\\W\\d_]+|\\d{1,3}|\\S`` into words, groups of up to three digits and single other
characters (punctuation, symbols, underscore). A word of n letters is ``ceil(n / 6)`` tokens
(its 6-letter slices), every other piece one token; whitespace is free (BPE tokenizers glue
it to the next piece). This lands within about ±20% of Llama-3's tokenizer on English prose
and code. The tokens are kept as strings so prompts can be hashed block by block for the
simulated prefix cache.

Chat prompts follow the Llama-3 template: one begin-of-text token, then per message a header
of four tokens (start, role, end, blank line) plus its content plus one end-of-turn token,
then a four-token assistant header that opens the reply. Completion prompts get one
begin-of-text token, as vLLM adds it.

Completion text is a sequence of vocabulary pieces drawn from a seeded ``random.Random``;
its length until end-of-sequence follows a log-normal distribution (median and spread
configurable), unless ``ignore_eos`` is set.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

_PIECE = re.compile(r"[^\W\d_]+|\d{1,3}|\S")
FIRST_TOKEN_ID = 1000  # ids reported for vocabulary pieces (return_token_ids)
EOS_TOKEN_ID = 128001  # Llama-3 <|end_of_text|>

_WORDS = """ the of and to in is that for it as with was on be by this are or an at from which
    not have but all can has were more one their will also its been other new used when
    time there first only may some into these two such over most many then them system
    data model request token latency cost tenant queue cache memory batch engine replica
    GPU throughput budget metric trace window price hour second value result report signal
    service user key feature stream record sample slice node pool limit share load rate
    . , : ; ( ) - ' " ? !
    ing ed er ly tion s es al ment ness able ize ous ive ful less
    server client proxy gateway collector meter throttle dashboard export import config
    simple fast slow large small high low early late long short full empty open close
    run runs running start stop send read write parse build check count measure compute
    we you they he she our your his her my me us him
    about after before between during under above across through without within
    because although while where why how what who whose whom
    0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024
    """
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())
# Words take a leading space, as BPE pieces do; punctuation and suffixes do not.
_BARE = {".", ",", ":", ";", ")", "'", '"', "?", "!", "ing", "ed", "er", "ly", "tion", "s"}
PIECES: tuple[str, ...] = tuple(w if w in _BARE else " " + w for w in VOCABULARY)
# Each piece pre-encoded as a JSON string (quotes included) for the response hot path.
PIECES_JSON: tuple[bytes, ...] = tuple(orjson.dumps(p) for p in PIECES)


def text_units(text: str) -> list[str]:
    """The approximate tokens of ``text``, as strings (see module docstring)."""
    units: list[str] = []
    for piece in _PIECE.findall(text):
        if len(piece) > 6 and piece[0].isalpha():
            units.extend(piece[i : i + 6] for i in range(0, len(piece), 6))
        else:
            units.append(piece)
    return units


def count_text_tokens(text: str) -> int:
    """Approximate number of tokens ``text`` encodes to."""
    return len(text_units(text))


def completion_prompt_units(prompt: str | Sequence[int]) -> list[str]:
    """Tokens of a /v1/completions prompt (text, or token ids) with begin-of-text."""
    if isinstance(prompt, str):
        return ["<|begin_of_text|>", *text_units(prompt)]
    return [str(token) for token in prompt]


def chat_prompt_units(messages: Sequence[tuple[str, str]]) -> list[str]:
    """Tokens of a chat conversation of ``(role, text content)`` in the Llama-3 template."""
    units = ["<|begin_of_text|>"]
    for role, content in messages:
        units += ["<|start_header_id|>", role, "<|end_header_id|>", "\n\n"]
        units += text_units(content)
        units.append("<|eot_id|>")
    units += ["<|start_header_id|>", "assistant", "<|end_header_id|>", "\n\n"]
    return units


def completion_prompt_tokens(prompt: str) -> int:
    """Prompt tokens of a /v1/completions text prompt (begin-of-text included)."""
    return len(completion_prompt_units(prompt))


def chat_prompt_tokens(contents: Sequence[str]) -> int:
    """Prompt tokens of a chat conversation (user turns) given each message's content."""
    return len(chat_prompt_units([("user", c) for c in contents]))


def block_hashes(units: Sequence[str], block_size: int) -> list[int]:
    """Chained hashes of the full ``block_size``-token blocks of a prompt (prefix caching).

    Block i's hash covers every token up to the end of block i, as vLLM's block hashes do,
    so two prompts share cached blocks exactly as far as their token prefixes agree.
    """
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(units) - block_size + 1, block_size):
        previous = hash((previous, *units[start : start + block_size]))
        hashes.append(previous)
    return hashes


@dataclass(frozen=True)
class OutputLength:
    """Log-normal distribution of the number of tokens before end-of-sequence."""

    median: float = 256.0
    sigma: float = 0.8

    def draw(self, rng: random.Random) -> int:
        return max(1, int(rng.lognormvariate(math.log(self.median), self.sigma)))


@dataclass
class CompletionPlan:
    """What a request will generate: one text piece per output token, and why it ends."""

    pieces: list[int]  # indices into PIECES; -1 = empty (end-of-sequence token)
    finish_reason: str  # "length" or "stop"
    stop_reason: str | None = None  # the matched stop string, when one ended it
    last_text: str | None = None  # replaces the last piece's text (cut at a stop string)

    def text(self, index: int) -> str:
        """Text of output token ``index``."""
        if index == len(self.pieces) - 1 and self.last_text is not None:
            return self.last_text
        piece = self.pieces[index]
        return "" if piece < 0 else PIECES[piece]

    def json_text(self, index: int) -> bytes:
        """Text of output token ``index`` as a JSON string literal."""
        if index == len(self.pieces) - 1 and self.last_text is not None:
            return orjson.dumps(self.last_text)
        piece = self.pieces[index]
        return b'""' if piece < 0 else PIECES_JSON[piece]

    def token_id(self, index: int) -> int:
        """A stable token id for output token ``index`` (end-of-sequence: EOS_TOKEN_ID)."""
        piece = self.pieces[index]
        return EOS_TOKEN_ID if piece < 0 else FIRST_TOKEN_ID + piece

    def full_text(self) -> str:
        return "".join(self.text(i) for i in range(len(self.pieces)))


def plan_completion(
    rng: random.Random,
    max_tokens: int,
    *,
    ignore_eos: bool = False,
    stop: Sequence[str] = (),
    length: OutputLength | None = None,
) -> CompletionPlan:
    """Draw a completion of at most ``max_tokens`` tokens."""
    eos_at = max_tokens + 1 if ignore_eos else (length or OutputLength()).draw(rng)
    count = min(max_tokens, eos_at)
    pieces = rng.choices(range(len(PIECES)), k=count)
    plan = CompletionPlan(pieces, "length")
    if eos_at <= max_tokens:
        pieces[-1] = -1  # the end-of-sequence token: counted, but it has no text
        plan.finish_reason = "stop"
    if stop:
        _apply_stop(plan, [s for s in stop if s])
    return plan


def _apply_stop(plan: CompletionPlan, stops: list[str]) -> None:
    """Cut the plan at the first stop string (which is not part of the output)."""
    if not stops:
        return
    texts = [plan.text(i) for i in range(len(plan.pieces))]
    full = "".join(texts)
    hits = [(full.find(s), s) for s in stops if s in full]
    if not hits:
        return
    pos, matched = min(hits)
    end = pos + len(matched)
    consumed = 0
    for index, piece_text in enumerate(texts):
        consumed += len(piece_text)
        if consumed >= end:
            kept_before = consumed - len(piece_text)
            del plan.pieces[index + 1 :]
            plan.last_text = full[kept_before:pos] if pos > kept_before else ""
            plan.finish_reason = "stop"
            plan.stop_reason = matched
            return
