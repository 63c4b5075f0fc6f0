"""What a token's context adds to its engine work, from the model's architecture.

Two requests that put the same number of tokens through a step do not cost the step the same
when their contexts differ:

- a *prefill* token's attention multiplies it against every earlier token of its sequence:
  ``4·L·H·D`` FLOPs per context token against ``2·P`` for the rest of the model, so its work,
  in units of a context-free token, is ``1 + attention·context`` with
  ``attention = 4·L·H·D / (2·P)`` (L layers, H attention heads of width D, P parameters);
- a *decode* step is bound by memory: it reads the weights once for the whole batch and each
  sequence's KV cache for that sequence alone, so a sequence's part of it is
  ``weights / batch + kv_bytes·context``, in units of a batch member's share of the weights
  ``1 + kv·batch·context`` with ``kv = kv_bytes_per_token / weight_bytes``.

These are facts of the model (its ``config.json``: layers, heads, head width, KV heads,
parameters, weight dtype), not of any engine's timing: no FLOP rate, bandwidth, efficiency or
overhead enters, and a model metering does not know gets zero weights (every token alike) and
says so (:class:`ContextWeights.source` appears in each allocation result). Known models are
the capacity planner's profiles (:mod:`infermeter.capacity.profiles`), matched by the served
model's name or named per model in ``[metering.models.<name>]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from infermeter.capacity.errors import ProfileError
from infermeter.capacity.profiles import MODELS, resolve_model, resolve_quantization
from infermeter.kernel.errors import ConfigError


class ModelSettings(BaseModel):
    """``[metering.models.<served name>]``: which architecture a served model has."""

    model_config = ConfigDict(extra="forbid")

    profile: str = ""  # a capacity profile name (default: the served name itself)
    quantization: str = "bf16"
    kv_dtype_bytes: float = 2.0


@dataclass(frozen=True, slots=True)
class ContextWeights:
    """Per-context-token work of a prefill token (``attention``) and of a decode token per
    batch member (``kv``); ``source`` says where they come from."""

    attention: float = 0.0
    kv: float = 0.0
    source: str = "unknown model: every token weighs the same"

    def to_json(self) -> dict[str, object]:
        return {"attention_per_token": self.attention, "kv_per_token": self.kv,
                "source": self.source}  # fmt: skip


def _weights(profile: str, settings: ModelSettings) -> ContextWeights:
    model = resolve_model(profile)
    quant = resolve_quantization(settings.quantization)
    attention = 4.0 * model.layers * model.attention_heads * model.head_dim / (2.0 * model.params)
    kv = model.kv_bytes_per_token(settings.kv_dtype_bytes) / (model.params * quant.bytes_per_param)
    return ContextWeights(attention, kv, f"profile {model.name} ({quant.name})")


class ContextWeightBook:
    """Context weights per served model name (resolved once per name)."""

    def __init__(self, models: Mapping[str, ModelSettings] | None = None) -> None:
        self.models = dict(models or {})
        for name, settings in self.models.items():
            try:
                _weights(settings.profile or name, settings)
            except ProfileError as exc:
                raise ConfigError(f"metering.models.{name}: {exc}") from exc
        self._cache: dict[str, ContextWeights] = {}

    def __call__(self, served: str) -> ContextWeights:
        found = self._cache.get(served)
        if found is None:
            found = self._cache[served] = self._resolve(served)
        return found

    def _resolve(self, served: str) -> ContextWeights:
        settings = self.models.get(served)
        if settings is not None:
            return _weights(settings.profile or served, settings)
        key = served.strip().lower().rsplit("/", 1)[-1]
        if key in MODELS:
            return _weights(key, ModelSettings())
        return ContextWeights()
