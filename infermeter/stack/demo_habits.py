"""What each demo tenant sends, and when: the pure, seeded half of the demo traffic.

A :class:`Habit` turns a seeded ``random.Random`` into the next :class:`Action` of its
tenant: how long to wait, then which requests to send (chat completions or async jobs).
Nothing here does I/O or reads a clock, so the same seed always yields the same traffic.

Habits (the tenants of :data:`infermeter.stack.demo_stack.TENANTS`):

- ``chatty``: short questions, streamed, often (acme).
- ``summaries``: a long generated document to summarise, now and then (globex).
- ``batch``: bursts of large requests, more at once than the free tier's concurrency cap,
  so some are refused with 429 (initech).
- ``jobs``: long-form work submitted as async jobs (umbrella).
- ``repeats``: the same few questions, paraphrased, at temperature 0, so the gateway's
  semantic cache answers most of them (hooli).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SHORT_QUESTIONS = (
    "What is the capital of Portugal?",
    "Give me a synonym for 'quick'.",
    "How many days are in a leap year?",
    "Translate 'good morning' into Spanish.",
    "What does HTTP 429 mean?",
    "Suggest a name for a golden retriever.",
    "Is 97 a prime number?",
    "What is the boiling point of water in Fahrenheit?",
)
# Each list: one question and its paraphrases; the cache should answer the later ones.
REPEATED_QUESTIONS = (
    ("How do I reset my password?", "How can I reset my password?"),
    ("What are your support hours?", "When are your support hours?"),
    ("How do I export my invoices as CSV?", "How can I export my invoices as CSV?"),
    ("Where can I change my billing address?", "Where do I change my billing address?"),
)
JOB_TASKS = (
    "Write a detailed incident report for a 40-minute database outage.",
    "Draft a product requirements document for a team calendar feature.",
    "Write release notes for version 2.3 of a mobile banking app.",
)
_WORDS = (
    "revenue",
    "quarter",
    "customer",
    "platform",
    "latency",
    "contract",
    "renewal",
    "region",
    "pipeline",
    "margin",
    "forecast",
    "inventory",
    "supplier",
    "shipment",
    "audit",
    "compliance",
    "policy",
    "incident",
    "deployment",
    "capacity",
    "budget",
    "headcount",
    "roadmap",
    "milestone",
    "feedback",
    "churn",
    "onboarding",
    "support",
    "invoice",
)


@dataclass(frozen=True)
class Request:
    """One request to send through the gateway."""

    kind: str  # "chat" (POST /v1/chat/completions) or "job" (POST /v1/jobs)
    body: dict[str, Any]
    tags: str = ""  # X-Infermeter-Tags

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass(frozen=True)
class Action:
    """Wait ``delay_s``, then send ``requests`` at once."""

    delay_s: float
    requests: tuple[Request, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Sizing:
    """Request sizes and pace; shrunk for small-context engines (the CPU vLLM build)."""

    model: str
    max_model_len: int = 8192
    rate: float = 3.0  # requests per second over all tenants, on average

    @property
    def document_words(self) -> int:
        return max(40, min(1200, self.max_model_len // 4))

    def max_tokens(self, wanted: int) -> int:
        return max(8, min(wanted, self.max_model_len // 4))


Habit = Callable[[random.Random, Sizing], Action]
# share of the overall rate each habit uses (requests, not bursts)
SHARES = {"chatty": 0.35, "summaries": 0.1, "batch": 0.3, "jobs": 0.1, "repeats": 0.15}
BATCH_SIZE = 6


def _wait(rng: random.Random, sizing: Sizing, share: float, requests: int = 1) -> float:
    """Exponential inter-arrival time for ``requests`` at ``share`` of the overall rate."""
    return rng.expovariate(max(sizing.rate * share, 1e-6) / requests)


def _chat(sizing: Sizing, content: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": sizing.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": sizing.max_tokens(max_tokens),
        **extra,
    }


def chatty(rng: random.Random, sizing: Sizing) -> Action:
    body = _chat(sizing, rng.choice(SHORT_QUESTIONS), rng.randint(16, 64), stream=True)
    body["temperature"] = 0.7
    return Action(_wait(rng, sizing, SHARES["chatty"]), (Request("chat", body, "feature=chat"),))


def document(rng: random.Random, words: int) -> str:
    """A deterministic pseudo-document of ``words`` words in sentences."""
    out: list[str] = []
    while len(out) < words:
        sentence = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
        sentence[0] = sentence[0].capitalize()
        out.extend(sentence)
        out[-1] += "."
    return " ".join(out[:words])


def summaries(rng: random.Random, sizing: Sizing) -> Action:
    text = document(rng, sizing.document_words)
    body = _chat(sizing, f"Summarise this report in five bullet points:\n\n{text}", 200)
    body["temperature"] = 0.3
    request = Request("chat", body, "feature=summarize")
    return Action(_wait(rng, sizing, SHARES["summaries"]), (request,))


def batch(rng: random.Random, sizing: Sizing) -> Action:
    requests = tuple(
        Request(
            "chat",
            _chat(
                sizing,
                f"Classify support ticket #{rng.randint(1000, 9999)}: "
                + document(rng, sizing.document_words // 4),
                512,
            ),
            "feature=batch-classify",
        )
        for _ in range(BATCH_SIZE)
    )
    return Action(_wait(rng, sizing, SHARES["batch"], BATCH_SIZE), requests)


def jobs(rng: random.Random, sizing: Sizing) -> Action:
    body = _chat(sizing, rng.choice(JOB_TASKS), 384)
    return Action(_wait(rng, sizing, SHARES["jobs"]), (Request("job", body, "feature=reports"),))


def repeats(rng: random.Random, sizing: Sizing) -> Action:
    question = rng.choice(rng.choice(REPEATED_QUESTIONS))
    body = _chat(sizing, question, 64, temperature=0)
    return Action(_wait(rng, sizing, SHARES["repeats"]), (Request("chat", body, "feature=faq"),))


HABITS: dict[str, Habit] = {
    "chatty": chatty,
    "summaries": summaries,
    "batch": batch,
    "jobs": jobs,
    "repeats": repeats,
}


def tenant_rng(seed: int, tenant: str) -> random.Random:
    """The random source of one tenant: independent of the others, fixed by the seed."""
    return random.Random(f"{seed}:{tenant}")
