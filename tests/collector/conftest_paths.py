"""Paths the collector tests read (shared, read-only vLLM artifacts)."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[3] / "shared" / "vllm-cpu" / "artifacts"
