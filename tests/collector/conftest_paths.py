"""Paths the collector tests read (real vLLM output kept in tests/vllm_0_32_captures)."""

from __future__ import annotations

from tests.conftest import VLLM_ARTIFACTS

ARTIFACTS = VLLM_ARTIFACTS
