"""Pure decision arithmetic: no I/O, no clock of their own (``now`` is always an argument).

- :mod:`.gcra`: cost-weighted GCRA (a token bucket kept as one timestamp);
- :mod:`.leases`: concurrency slots held as leases that expire;
- :mod:`.budgets`: daily / monthly budget windows and checks;
- :mod:`.fairshare`: Virtual Token Counter fair share (Sheng et al., OSDI 2024);
- :mod:`.autoscale`: the Kubernetes HPA replica rule with tolerance and stabilisation.

They are the reference implementation: the memory storage inlines them in its fast path and
the Redis Lua scripts implement the same arithmetic; the contract and parity tests hold both
backends to them.
"""
