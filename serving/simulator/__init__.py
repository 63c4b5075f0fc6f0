"""A vLLM-compatible inference simulator driven by a performance model of continuous batching.

Modules: ``profiles`` (GPU and model data sheets), ``perf_model`` (step times, KV capacity),
``text`` (approximate tokenizer, seeded completion text), ``engine`` (scheduler in virtual
time), ``metrics`` (vLLM's Prometheus families), ``validation`` (OpenAI request checks),
``responses`` (response bytes), ``loop`` (the paced step loop), ``server`` (raw ASGI app),
``settings`` and ``cli``.
"""
