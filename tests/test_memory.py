"""Cancelled timers must not accumulate: peak RSS of 1,000,000 x
``call_later(3600, f).cancel()`` on ferroloop stays within 2x of stock asyncio's.

Both loop kinds run in child interpreters inside the same test so their peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) can be compared directly.
"""

from __future__ import annotations

import pytest

N_TIMERS = 1_000_000

CANCEL_TIMERS = """
import resource

def f():
    pass

async def main():
    lp = asyncio.get_running_loop()
    for i in range({n}):
        lp.call_later(3600, f).cancel()
        if {yield_every} and i % {yield_every} == 0:
            await asyncio.sleep(0)
    return len(asyncio.all_tasks())

loop = new_loop()
loop.run_until_complete(main())
loop.close()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "yield_every",
    [1000, 0],
    ids=["yielding-to-the-loop", "tight-loop"],
)
def test_cancelled_timers_peak_rss_within_2x_of_stock(snippet_for, yield_every):
    """1,000,000 x call_later(3600, f).cancel() inside a coroutine: ferroloop's peak RSS is
    at most twice stock asyncio's.  'yielding-to-the-loop' runs a loop iteration every 1000
    timers (stock purges cancelled timers then, staying near its baseline RSS);
    'tight-loop' never yields (stock keeps all cancelled handles until the next
    iteration)."""
    code = CANCEL_TIMERS.format(n=N_TIMERS, yield_every=yield_every)
    runners = {kind: snippet_for(kind) for kind in ("asyncio", "ferroloop")}
    rss = {}
    for kind, runner in runners.items():
        proc = runner.run(code, timeout=120)
        assert proc.returncode == 0, proc.stderr
        rss[kind] = int(proc.stdout.split()[-1])
    assert rss["ferroloop"] <= 2 * rss["asyncio"], rss
