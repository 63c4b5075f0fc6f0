"""The engine: a continuous-batching scheduler in the image of vLLM V1, in virtual time.

Each :meth:`Engine.schedule` builds one step: running requests first (one decode token
each, or the next chunk of a prefill), then waiting requests in arrival order while there
are free sequence slots (``max_num_seqs``), token budget (``max_num_batched_tokens``, so
long prompts are prefilled in chunks) and KV-cache blocks. When a running request needs a
block and none is free, the most recently admitted running request is preempted: its blocks
are freed and it goes back to the front of the queue to recompute its prompt and the tokens
it had generated (vLLM's recompute preemption). With prefix caching (``kv_cache``), a
request whose first prompt blocks are cached starts with them computed: only the rest is
prefilled. The step's duration comes from the performance model; :meth:`Engine.complete`
then advances virtual time to the step's end, emits one token for every request whose
computed tokens caught up, and finishes requests.

``lookahead`` (used when the simulator runs without waiting) holds back a request whose
client has not yet been sent its last ``lookahead`` tokens, so a fast engine cannot race
past its readers and a client abort still cuts a stream short.

Time: with ``clock=None`` the engine runs in pure virtual time (arrivals happen at the end
of the last step; steps follow each other without gaps). With a clock, a step starts at
``max(clock(), end of last step)``, so idle periods come from the clock. Nothing here
sleeps: :mod:`infermeter.serving.simulator.loop` paces the steps in real time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from infermeter.capacity.perf_model import PerformanceModel, StepCost
from infermeter.serving.simulator.kv_cache import KvCache
from infermeter.serving.simulator.ledger import StepLedger
from infermeter.serving.simulator.metrics import VllmMetrics, observe_many
from infermeter.serving.simulator.text import CompletionPlan

WAITING, RUNNING, FINISHED, ABORTED = "waiting", "running", "finished", "aborted"


class SimRequest:
    """One request as the engine sees it: token counts, plan, state and timestamps."""

    __slots__ = (
        "arrival",
        "block_hashes",
        "blocks",
        "cached_tokens",
        "delivered",
        "finished_at",
        "first_scheduled",
        "first_token",
        "last_token",
        "ledger_key",
        "max_tokens",
        "num_computed",
        "num_output",
        "on_progress",
        "plan",
        "preemptions",
        "prompt_tokens",
        "request_id",
        "shared",
        "status",
        "streaming",
        "target",
    )

    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        plan: CompletionPlan,
        max_tokens: int,
        on_progress: Callable[[], None] | None = None,
        block_hashes: Sequence[int] = (),
        streaming: bool = True,
    ) -> None:
        self.request_id = request_id
        self.ledger_key = request_id  # how the ledger names it (the client's id, if it sent one)
        self.prompt_tokens = prompt_tokens
        self.plan = plan
        self.max_tokens = max_tokens
        self.target = len(plan.pieces)  # output tokens it will generate
        self.on_progress = on_progress  # called after new tokens (if streaming) and at the end
        self.streaming = streaming
        self.status = WAITING
        self.arrival = 0.0
        self.num_computed = 0  # tokens whose KV is in the cache
        self.num_output = 0  # tokens generated
        self.blocks = 0  # private KV blocks
        self.block_hashes = block_hashes  # chained hashes of its full prompt blocks
        self.shared: list[int] = []  # prefix-cache blocks it holds
        self.cached_tokens = 0  # prompt tokens found in the prefix cache when first scheduled
        self.first_scheduled: float | None = None
        self.first_token: float | None = None
        self.last_token = 0.0
        self.finished_at: float | None = None
        self.preemptions = 0
        self.delivered = 1 << 62  # tokens the client has been sent (streaming handlers set it)

    @property
    def finish_reason(self) -> str:
        return self.plan.finish_reason


@dataclass
class Step:
    """One scheduled step: which requests compute how many tokens, and when it ends."""

    start: float
    end: float
    scheduled: list[tuple[SimRequest, int]]
    cost: StepCost
    # per scheduled request: attention pairs and KV context read (the ledger's split)
    pairs: list[float] = field(default_factory=list)
    context: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class Engine:
    """Waiting queue, running batch, KV blocks and the metrics they drive."""

    def __init__(
        self,
        perf: PerformanceModel,
        metrics: VllmMetrics,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        clock: Callable[[], float] | None = None,
        lookahead: int | None = None,
        prefix_caching: bool = True,
        ledger: StepLedger | None = None,
    ) -> None:
        self.perf = perf
        self.ledger = ledger
        self.lookahead = lookahead
        self.metrics = metrics
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_size = perf.block_size
        self.total_blocks = perf.num_gpu_blocks
        self.kv = KvCache(perf.num_gpu_blocks, prefix_caching=prefix_caching)
        self.clock = clock
        self.time = clock() if clock is not None else 0.0
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.steps = 0

    # -- requests -----------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return self.kv.free

    def now(self) -> float:
        """Current engine time: the clock's, or the end of the last step in virtual time."""
        return self.time if self.clock is None else max(self.clock(), self.time)

    def add(self, req: SimRequest) -> None:
        """Queue a request; it arrives now."""
        req.arrival = self.now()
        req.status = WAITING
        self.waiting.append(req)
        self._update_gauges()

    def abort(self, req: SimRequest) -> None:
        """Drop a request (client went away): free its KV; tokens so far stay counted."""
        if req.status == WAITING:
            self.waiting.remove(req)
        elif req.status == RUNNING:
            self.running.remove(req)
            self._free(req)
        else:
            return
        req.status = ABORTED
        self._update_gauges()

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- stepping -----------------------------------------------------------------------
    def step(self) -> Step | None:
        """Schedule and complete one step at once (for virtual-time use and tests)."""
        step = self.schedule()
        if step is not None:
            self.complete(step)
        return step

    def schedule(self) -> Step | None:
        """Pick this step's tokens and price it; None when there is nothing to run."""
        if not self.running and not self.waiting:
            return None
        # A busy engine runs its next step right after the last one (the GPU does not wait for
        # the simulator's own event loop); an idle one starts when work arrives.
        start = self.time if self.running else self.now()
        budget = self.max_num_batched_tokens
        block = self.block_size
        scheduled: list[tuple[SimRequest, int]] = []
        req_pairs: list[float] = []
        req_context: list[int] = []
        preempted = False
        running = self.running
        kv = self.kv
        lookahead = self.lookahead
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if lookahead is not None and req.num_output - req.delivered >= lookahead:
                i += 1  # its client is this far behind: let it catch up first
                continue
            n = min(req.prompt_tokens + req.num_output - req.num_computed, budget)
            extra = -(-(req.num_computed + n) // block) - req.blocks - len(req.shared)
            if extra > kv.free:
                while extra > kv.free:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is req:
                        break
                if req.status != RUNNING:
                    break
            if extra > 0:
                kv.allocate(extra)
                req.blocks += extra
            scheduled.append((req, n))
            req_pairs.append(n * req.num_computed + n * (n + 1) / 2)
            req_context.append(req.num_computed)
            budget -= n
            i += 1
        if not preempted:
            waiting = self.waiting
            while waiting and len(running) < self.max_num_seqs and budget > 0:
                req = waiting[0]  # not running: it holds no blocks, computed nothing
                hits = kv.lookup(req.block_hashes, (req.prompt_tokens - 1) // block)
                cached = len(hits) * block
                n = min(req.prompt_tokens + req.num_output - cached, budget)
                extra = -(-(cached + n) // block) - len(hits)
                if extra > kv.free_after_taking(hits):
                    break
                waiting.popleft()
                running.append(req)
                req.status = RUNNING
                kv.take(hits)
                kv.allocate(extra)
                req.shared = hits
                req.blocks = extra
                req.num_computed = cached
                if req.arrival > start:  # it arrived while the last step ran: wait for it
                    start = req.arrival
                if req.first_scheduled is None:
                    req.first_scheduled = start
                    req.cached_tokens = cached
                scheduled.append((req, n))
                req_pairs.append(n * cached + n * (n + 1) / 2)
                req_context.append(cached)
                budget -= n
        if not scheduled:
            return None
        cost = self.perf.step(
            self.max_num_batched_tokens - budget, sum(req_pairs), sum(req_context)
        )
        return Step(start, start + cost.seconds, scheduled, cost, req_pairs, req_context)

    def complete(self, step: Step) -> list[SimRequest]:
        """End ``step``: advance time, emit tokens, finish requests; returns the finished."""
        end = step.end
        self.time = end
        self.steps += 1
        if self.ledger is not None:
            self.ledger.record(
                step.start,
                end,
                [req.ledger_key for req, _ in step.scheduled],
                [n for _, n in step.scheduled],
                step.pairs,
                step.context,
            )
        m = self.metrics
        prompt_done = 0
        cached_done = 0
        generated = 0
        finished: list[SimRequest] = []
        itls: dict[float, int] = {}  # inter-token latency -> sequences that had it
        for req, n in step.scheduled:
            if req.status != RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            if len(req.shared) < len(req.block_hashes):
                self._register_prompt_blocks(req)
            if req.num_computed < req.prompt_tokens + req.num_output:
                continue  # a prefill chunk: no token yet
            if req.num_output == 0:
                req.first_token = end
                m.ttft.observe(end - req.arrival)
                prompt_done += req.prompt_tokens
                cached_done += req.cached_tokens
            else:
                gap = end - req.last_token
                itls[gap] = itls.get(gap, 0) + 1
            req.last_token = end
            req.num_output += 1
            generated += 1
            if req.num_output >= req.target:
                finished.append(req)
            elif req.streaming and req.on_progress is not None:
                req.on_progress()
        for gap, count in itls.items():
            observe_many(m.itl, gap, count)
        cost = step.cost
        m.flops.inc(cost.flops)
        m.read_bytes.inc(cost.read_bytes)
        m.write_bytes.inc(cost.write_bytes)
        if prompt_done:
            m.prompt_tokens.inc(prompt_done)
            m.prompt_tokens_local.inc(prompt_done - cached_done)
            m.prefix_queries.inc(prompt_done)
            if cached_done:
                m.cache_hit_tokens(cached_done)
        if generated:
            m.generation_tokens.inc(generated)
        if prompt_done or generated:
            m.iteration_tokens.observe(prompt_done + generated)
        if finished:
            done = set(map(id, finished))
            self.running = [r for r in self.running if id(r) not in done]
            for req in finished:
                self._finish(req, end)
        self._update_gauges()
        return finished

    # -- internals ----------------------------------------------------------------------
    def _free(self, req: SimRequest) -> None:
        self.kv.release(req.blocks, req.shared)
        req.blocks = 0
        req.shared = []

    def _register_prompt_blocks(self, req: SimRequest) -> None:
        """Cache the full prompt blocks ``req`` has computed so far."""
        full = min(req.num_computed, req.prompt_tokens) // self.block_size
        if full > len(req.shared) and self.kv.prefix_caching:
            new = req.block_hashes[len(req.shared) : full]
            req.blocks -= self.kv.register(new)
            req.shared.extend(new)

    def _preempt(self, req: SimRequest) -> None:
        self._free(req)
        req.num_computed = 0
        req.status = WAITING
        req.preemptions += 1
        self.metrics.preemptions.inc()
        self.waiting.appendleft(req)

    def _finish(self, req: SimRequest, end: float) -> None:
        self._free(req)
        req.status = FINISHED
        req.finished_at = end
        m = self.metrics
        first_scheduled = req.first_scheduled if req.first_scheduled is not None else end
        first_token = req.first_token if req.first_token is not None else end
        decode = end - first_token
        m.finished(req.finish_reason).inc()
        m.e2e.observe(end - req.arrival)
        m.queue.observe(first_scheduled - req.arrival)
        m.inference.observe(end - first_scheduled)
        m.prefill.observe(first_token - first_scheduled)
        m.decode.observe(decode)
        m.tpot.observe(decode / (req.num_output - 1) if req.num_output > 1 else 0.0)
        m.request_prompt_tokens.observe(req.prompt_tokens)
        m.request_generation_tokens.observe(req.num_output)
        m.max_generation_tokens.observe(req.max_tokens)
        m.params_n.observe(1)
        m.params_max_tokens.observe(req.max_tokens)
        m.request_preemptions.observe(req.preemptions)
        m.prefill_kv_tokens.observe(req.prompt_tokens - req.cached_tokens)
        if req.on_progress is not None:
            req.on_progress()

    def _update_gauges(self) -> None:
        m = self.metrics
        m.running.set(len(self.running))
        m.waiting.set(len(self.waiting))
        m.waiting_capacity.set(len(self.waiting))
        m.kv_usage.set(self.kv.usage())
