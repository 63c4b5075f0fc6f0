"""Price a request in the policy's cost unit from its token counts.

Per-model prices come from metering's current figures (``GET /v1/rates``, refreshed in the
background by :mod:`infermeter.throttle.metering_rates`) when they are known, else from the policy's
``[models]`` table (``*`` as the catch-all): explicit per-token prices, or the price
catalog's GPU-second for the model's GPU divided by its tokens per GPU-second. A model
priced nowhere costs 0: it is limited by concurrency only, and counted in
``unpriced_models``.

Admission prices an *estimate*: prompt tokens (counted by the caller, or ``prompt_chars /
chars_per_token``) plus ``max_tokens`` completion tokens. Settle prices the *actual* usage;
cached prompt tokens cost ``cached_prompt_factor`` of a prompt token (no prefill work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infermeter.kernel.metering_wire import Rates
from infermeter.throttle.algorithms.costs import estimate_cost, usage_cost
from infermeter.throttle.policy import DEFAULT_MODEL, Policy


@dataclass(frozen=True, slots=True)
class Price:
    """Cost units per prompt token and per completion token, and where they came from."""

    prompt: float
    completion: float
    source: str  # metering | policy | none


def rates_from_metering(rates: Rates, unit: str) -> dict[str, Price]:
    """Metering's rates table (``GET /v1/rates``, parsed by the kernel) as prices in ``unit``
    (usd or gpu_s; a model without a GPU-second price has none in gpu_s)."""
    prices: dict[str, Price] = {}
    for model, rate in rates.models.items():
        prompt, completion = rate.usd_per_prompt_token, rate.usd_per_completion_token
        if unit == "gpu_s":
            per_s = rate.usd_per_gpu_second
            if per_s <= 0:
                continue
            prompt, completion = prompt / per_s, completion / per_s
        if math.isfinite(prompt) and math.isfinite(completion):
            prices[model] = Price(prompt, completion, "metering")
    return prices


class Pricer:
    """Prices per model; swap the metering table atomically with :meth:`set_metering`."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._metering: dict[str, Price] = {}
        self._cache: dict[str, Price] = {}
        self.metering_as_of: float | None = None
        self.unpriced_models: set[str] = set()
        self.epoch = 0  # bumped whenever a price may have changed

    def set_policy(self, policy: Policy) -> None:
        self._policy = policy
        self._cache = {}
        self.epoch += 1

    def set_metering(self, prices: dict[str, Price], as_of: float) -> None:
        self._metering = prices
        self.metering_as_of = as_of
        self._cache = {}
        self.epoch += 1

    def price(self, model: str) -> Price:
        """The price of ``model``: metering first, then the policy, else free."""
        found = self._cache.get(model)
        if found is not None:
            return found
        price = self._metering.get(model)
        if price is None:
            fallback = self._policy.fallback_rate(model)
            if fallback is not None and (fallback.prompt or fallback.completion):
                price = Price(fallback.prompt, fallback.completion, "policy")
            elif fallback is not None and fallback.gpu:
                key = model if model in self._policy.catalog_rates else DEFAULT_MODEL
                prompt, completion = self._policy.catalog_rates[key]
                price = Price(prompt, completion, "catalog")
            elif fallback is not None:
                price = Price(0.0, 0.0, "policy")
            else:
                price = Price(0.0, 0.0, "none")
                if len(self.unpriced_models) < 1000:
                    self.unpriced_models.add(model)
        if len(self._cache) < 10_000:
            self._cache[model] = price
        return price

    def prompt_tokens(self, prompt_tokens: int | None, prompt_chars: int | None) -> int:
        """Tokens as counted by the caller, else estimated from the prompt's characters."""
        if prompt_tokens is not None:
            return prompt_tokens
        if prompt_chars is None:
            return 0
        return math.ceil(prompt_chars / self._policy.doc.chars_per_token)

    def estimate(self, model: str, prompt_tokens: int, max_tokens: int) -> float:
        """The cost reserved at admission."""
        price = self.price(model)
        return estimate_cost(prompt_tokens, max_tokens, price.prompt, price.completion)

    def actual(self, model: str, prompt_tokens: int, cached: int, completion: int) -> float:
        """The cost of a finished request."""
        price = self.price(model)
        factor = self._policy.doc.cached_prompt_factor
        return usage_cost(prompt_tokens, cached, completion, price.prompt, price.completion, factor)
