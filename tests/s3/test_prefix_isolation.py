"""A hot prefix driven into SlowDown does not slow a quiet prefix of the same bucket.

S3 limits requests per key prefix, so runferry keeps one limiter per prefix. Here the front
limits every prefix to 10 writes/s with a 2 s bucket (20 requests at once): the hot prefix gets
60 objects written by 16 workers and is throttled; the quiet prefix, once the hot one is backing
off, gets 10 objects, fewer than its bucket holds, so the front never throttles it whatever the
timing. Asserted with counts, not time: the quiet limiter never throttled, never paced, never
made a request wait; the front admitted every quiet request first time; all bytes come back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from adapters.s3 import S3Config, S3Store, S3Url
from core.protocols import AdapterContext
from ratelimit import LimiterRegistry
from tests.servers.s3front import S3Stack

from .conftest import Events

HOT_OBJECTS, QUIET_OBJECTS = 60, 10


def body(prefix: str, number: int) -> bytes:
    return f"{prefix}-{number}:".encode() * (number * 37 + 1)


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_hot_prefix_in_slowdown_never_delays_a_quiet_one(front: S3Stack, bucket: str) -> None:
    front.configure(write_rate=10.0, burst_seconds=2.0)
    hot_throttled = anyio.Event()
    registry = LimiterRegistry(seed=11)
    events = Events()

    def watch(name: str, **fields: object) -> None:
        events(name, **fields)
        if name == "throttle" and str(fields["endpoint"]).endswith(f"/{bucket}/hot"):
            hot_throttled.set()

    config = S3Config(endpoint_url=front.front_url, max_attempts=50)
    async with S3Store(config, AdapterContext(events=watch, limiters=registry)) as s3:
        hot = s3.limiter_for(S3Url(bucket, "hot/x"))
        quiet = s3.limiter_for(S3Url(bucket, "quiet/x"))
        assert hot is not quiet

        async def write(prefix: str, number: int) -> None:
            data = body(prefix, number)
            result = await s3.put_stream(f"s3://{bucket}/{prefix}/obj-{number}", one(data), size=len(data))
            assert result.size == len(data)

        async def quiet_writer() -> None:
            await hot_throttled.wait()  # the hot prefix is backing off from here on
            assert hot.statistics().throttles > 0
            for number in range(QUIET_OBJECTS):
                await write("quiet", number)

        async with anyio.create_task_group() as tg:
            tg.start_soon(quiet_writer)
            for number in range(HOT_OBJECTS):
                tg.start_soon(write, "hot", number)

        served = front.stats()
        hot_stats, quiet_stats = hot.statistics(), quiet.statistics()
        # the hot prefix was throttled, paced and made requests wait ...
        assert served[f"{bucket}/hot"]["throttled"] == hot_stats.throttles > 0
        assert served[f"{bucket}/hot"]["accepted"] == HOT_OBJECTS == hot_stats.successes
        assert hot_stats.rate_limit is not None and hot_stats.delayed > 0
        # ... the quiet one never: every request admitted at once and served first time
        assert served[f"{bucket}/quiet"] == {**served[f"{bucket}/quiet"], "accepted": QUIET_OBJECTS, "throttled": 0}
        assert (quiet_stats.throttles, quiet_stats.retries, quiet_stats.delayed) == (0, 0, 0)
        assert (quiet_stats.successes, quiet_stats.rate_limit, quiet.state.w_max) == (QUIET_OBJECTS, None, None)
        assert quiet_stats.paused_for == 0.0
        assert all(f["endpoint"] != quiet.endpoint for f in events.fields if "endpoint" in f)

        # both finish exact
        for prefix, count in (("hot", HOT_OBJECTS), ("quiet", QUIET_OBJECTS)):
            listed = [info async for info in s3.list(f"s3://{bucket}/{prefix}/")]
            assert sorted(info.url.key for info in listed) == sorted(f"{prefix}/obj-{n}" for n in range(count))
            for number in range(count):
                got = b"".join([piece async for piece in s3.get_stream(f"s3://{bucket}/{prefix}/obj-{number}")])
                assert got == body(prefix, number)
        assert (quiet.statistics().throttles, quiet.statistics().delayed) == (0, 0)
