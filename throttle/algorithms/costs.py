"""The cost of a request from its token counts and per-token prices."""

from __future__ import annotations


def usage_cost(
    prompt_tokens: int,
    cached_prompt_tokens: int,
    completion_tokens: int,
    prompt_price: float,
    completion_price: float,
    cached_factor: float,
) -> float:
    """Cached prompt tokens (no prefill work) cost ``cached_factor`` of a prompt token."""
    cached = min(cached_prompt_tokens, prompt_tokens)
    prompt_cost = ((prompt_tokens - cached) + cached * cached_factor) * prompt_price
    return prompt_cost + completion_tokens * completion_price


def estimate_cost(
    prompt_tokens: int, max_tokens: int, prompt_price: float, completion_price: float
) -> float:
    """The cost reserved at admission: the whole prompt plus ``max_tokens`` of completion."""
    return prompt_tokens * prompt_price + max_tokens * completion_price
