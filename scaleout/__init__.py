"""Scale-out: one migration across many machines, on Ray.

The driver (``scaleout.executor``) plans once, writes the shards down in a shared ledger store
(``engine.ledger_store``), and leases them to async worker actors (``scaleout.worker``), each
running today's pipeline unchanged on its shard (``scaleout.shards.ShardSource``). Per-endpoint
limits hold cluster-wide through one named limiter actor (``scaleout.limiter``). Only the modules
that need Ray import it, so the rest of runferry runs without it.
"""
