"""Pure functions that turn the services' JSON into the tables and series the pages show.

Nothing here does I/O; every function takes the decoded JSON of one endpoint (or a scrape)
and returns a :class:`pandas.DataFrame` with stable, human-readable column names, empty (but
with those columns) when the JSON holds no rows. One module per page of the app
(``views/<page>.py``), over shared building blocks:

    base        the empty-safe table constructor, UTC timestamps, the (since, until) clip
                and the wide pivot a line chart takes
    fleet       latency percentiles and rates, per-replica load, GPU series and summary
    costs       cost by key, totals and $/Mtok, idle cost, buy vs build, cache savings
    tenants     the tenant table (spend, budgets, live limits) and throttle's decisions
    capacity    autoscale recommendations and their signals, engine signals per pool
    lookup      one request's headline figures and its cost per allocation window
"""
