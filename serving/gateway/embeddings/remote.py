"""Embeddings from a serving endpoint's ``POST /v1/embeddings`` (vLLM, or another gateway)."""

from __future__ import annotations

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson

from infermeter.serving.gateway.errors import EmbeddingError


class HttpEmbedder:
    """Call an OpenAI-compatible embeddings endpoint; vectors are L2-normalised here."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        timeout_s: float = 5.0,
        truncate_prompt_tokens: int = 0,
    ) -> None:
        self.name = f"http:{model}"
        self._session = session
        self._url = base_url.rstrip("/") + "/v1/embeddings"
        self._model = model
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # vLLM rejects inputs longer than the model's context unless asked to truncate
        # (sentence-transformers truncates to 256 tokens); 0 leaves the field out.
        self._truncate = truncate_prompt_tokens

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One unit-length row per text, in input order."""
        request: dict[str, object] = {"model": self._model, "input": texts}
        if self._truncate:
            request["truncate_prompt_tokens"] = self._truncate
        body = orjson.dumps(request)
        try:
            async with self._session.post(
                self._url, data=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise EmbeddingError(f"{self._url} answered {resp.status}: {raw[:200]!r}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise EmbeddingError(f"{self._url} unreachable: {exc}") from exc
        try:
            data = sorted(orjson.loads(raw)["data"], key=lambda d: d["index"])
            vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"{self._url} returned an unexpected body: {exc}") from exc
        if vectors.shape[0] != len(texts):
            raise EmbeddingError(f"{self._url} returned {vectors.shape[0]} of {len(texts)}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        result: npt.NDArray[np.float32] = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
        return result
