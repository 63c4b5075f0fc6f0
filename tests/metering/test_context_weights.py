"""Context weights from the model's architecture (metering/context_weights.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from infermeter.capacity.profiles import resolve_model
from infermeter.kernel.errors import ConfigError
from infermeter.kernel.records import UsageRecord
from infermeter.metering.context_weights import ContextWeightBook, ModelSettings
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings, ReplicaSettings
from tests.conftest import ManualClock
from tests.metering.conftest import T0, ingest

REPLICAS = {"r1": ReplicaSettings(gpu="h100-sxm", model="llama-3.1-8b", since=T0)}


def test_a_known_model_gets_its_attention_and_kv_weights_from_its_architecture() -> None:
    weights = ContextWeightBook()("llama-3.1-8b")
    model = resolve_model("llama-3.1-8b")
    # 32 layers x 32 heads x 128 wide: 4 L H D FLOPs per context token against 2 P
    assert weights.attention == pytest.approx(4 * 32 * 32 * 128 / (2 * model.params))
    # 2 (K and V) x 32 layers x 8 KV heads x 128 x 2 bytes against 8.03e9 bf16 parameters
    assert weights.kv == pytest.approx(2 * 32 * 8 * 128 * 2 / (model.params * 2))
    assert weights.source == "profile llama-3.1-8b (bf16)"


def test_served_names_match_a_profile_by_their_last_path_part() -> None:
    assert ContextWeightBook()("meta/Llama-3.1-8B").kv > 0


def test_an_unknown_model_weighs_every_token_alike_and_says_so() -> None:
    weights = ContextWeightBook()("tiny-llama")
    assert (weights.attention, weights.kv) == (0.0, 0.0)
    assert weights.to_json()["source"].startswith("unknown model")


def test_a_configured_model_names_its_profile_and_quantization() -> None:
    book = ContextWeightBook({"chat": ModelSettings(profile="llama-3.1-8b", quantization="fp8")})
    bf16 = ContextWeightBook()("llama-3.1-8b")
    assert book("chat").kv == pytest.approx(2 * bf16.kv)  # half the weight bytes
    assert book("chat").source == "profile llama-3.1-8b (fp8)"


def test_a_configured_model_with_an_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"metering\.models\.chat"):
        ContextWeightBook({"chat": ModelSettings(profile="no-such-model")})


def test_the_models_table_is_part_of_the_metering_settings() -> None:
    settings = MeteringSettings.model_validate({"models": {"chat": {"profile": "mistral-7b"}}})
    assert settings.models["chat"].profile == "mistral-7b"
    with pytest.raises(ValueError, match="extra"):
        MeteringSettings.model_validate({"models": {"chat": {"profil": "x"}}})


def test_an_allocation_says_which_weights_it_used_per_model() -> None:
    clock = ManualClock(start=(T0 + timedelta(minutes=30)).timestamp())
    settings = MeteringSettings(storage="duckdb:///:memory:", replicas=REPLICAS, allocate_every_s=0)
    service = MeteringService(settings, now=clock)
    try:
        start = T0 + timedelta(minutes=1)
        ingest(service.ingestor, [
            UsageRecord(f"cw-{model}", "acme", model, start, start + timedelta(seconds=2),
                        replica="r1", prompt_tokens=3000, completion_tokens=40,
                        first_token_at=start + timedelta(milliseconds=300))
            for model in ("llama-3.1-8b", "in-house-model")
        ])  # fmt: skip
        result = service.allocate(since=T0, until=T0 + timedelta(minutes=10)).to_json()
    finally:
        service.stop()
    used = result["context_weights"]
    assert used["llama-3.1-8b"]["source"] == "profile llama-3.1-8b (bf16)"
    assert used["llama-3.1-8b"]["kv_per_token"] > 0
    assert used["in-house-model"]["source"].startswith("unknown model")
