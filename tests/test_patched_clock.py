"""A replaced ``loop.time()`` drives the scheduler, as on stock asyncio.

Test suites control time this way: ``mock.patch.object(loop, "time")``, a loop subclass
with its own ``time()``, fake-clock plugins that swap the loop's class. Stock asyncio's
``call_later`` and ``_run_once`` ask ``self.time()``, so timers follow the replacement.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest


def run_one_iteration(loop) -> None:
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_instance_patch_fires_a_timer_due_on_the_patched_clock(loop):
    """With time() patched 1001 s ahead, a timer 1000 s ahead is due at once."""
    fired = []
    now = loop.time()
    loop.call_at(now + 1000, fired.append, "late")
    loop.call_at(now + 2000, fired.append, "later")
    with mock.patch.object(loop, "time", return_value=now + 1001):
        run_one_iteration(loop)
    assert fired == ["late"]


def test_real_clock_returns_after_the_patch(loop):
    """Once the patch is undone the loop's own clock applies again."""
    fired = []
    now = loop.time()
    with mock.patch.object(loop, "time", return_value=now):
        run_one_iteration(loop)
    loop.call_at(now + 1000, fired.append, "late")
    run_one_iteration(loop)
    assert fired == []
    assert abs(loop.time() - now) < 100


def test_call_later_uses_the_patched_clock(loop):
    """call_later(delay) is scheduled at time() + delay of the patched clock."""
    with mock.patch.object(loop, "time", return_value=5000.0):
        handle = loop.call_later(2.5, lambda: None)
    assert handle.when() == 5002.5
    handle.cancel()


def test_patched_time_is_asked_every_iteration(loop):
    """The scheduler calls the replacement (a Mock records the calls)."""
    now = loop.time()
    clock = mock.Mock(return_value=now)
    with mock.patch.object(loop, "time", clock):
        run_one_iteration(loop)
    assert clock.call_count >= 1


def test_advancing_fake_clock_runs_timers_in_order(loop):
    """A clock advanced by hand between iterations fires timers as it passes them."""
    fired = []
    start = loop.time()
    elapsed = [0]
    with mock.patch.object(loop, "time", side_effect=lambda: start + elapsed[0]):
        for delay in (30, 10, 20):
            loop.call_later(delay, fired.append, delay)
        for step in (5, 10, 10, 10):
            elapsed[0] += step
            run_one_iteration(loop)
            fired.append(("at", elapsed[0]))
    assert fired == [("at", 5), 10, ("at", 15), 20, ("at", 25), 30, ("at", 35)]


def test_asyncio_sleep_follows_a_patched_clock(loop):
    """asyncio.sleep(1000) ends as soon as the patched clock passes its deadline."""

    async def main():
        now = loop.time()
        task = asyncio.ensure_future(asyncio.sleep(1000, "slept"))
        await asyncio.sleep(0)
        with mock.patch.object(loop, "time", return_value=now + 1001):
            return await asyncio.wait_for(task, 5000)

    assert loop.run_until_complete(main()) == "slept"


def test_subclass_time_drives_timers(loop_factory):
    """A loop subclass whose time() runs ahead fires timers by that clock."""
    base = type(loop_factory())
    base_loop = loop_factory()
    base_loop.close()

    class AheadLoop(base):
        def time(self):
            return super().time() + 1000

    loop = AheadLoop()
    try:
        fired = []
        loop.call_at(base.time(loop) + 999, fired.append, "due")
        run_one_iteration(loop)
        assert fired == ["due"]
    finally:
        loop.close()


def test_class_swap_drives_timers(loop):
    """Assigning a subclass with its own time() to loop.__class__ (what some fake-clock
    plugins do) changes the clock the scheduler reads, and swapping back restores it."""
    original = type(loop)
    offset = [0.0]

    class FakeClockLoop(original):
        def time(self):
            return original.time(self) + offset[0]

    fired = []
    now = loop.time()
    loop.call_at(now + 500, fired.append, "swapped")
    loop.__class__ = FakeClockLoop
    try:
        offset[0] = 1000.0
        run_one_iteration(loop)
        assert fired == ["swapped"]
        offset[0] = 0.0
        loop.call_at(now + 500, fired.append, "after")
    finally:
        loop.__class__ = original
    run_one_iteration(loop)
    assert fired == ["swapped"]


@pytest.mark.parametrize("where", ["instance", "class"])
def test_patch_applies_to_a_running_loop(loop, where):
    """A patch made by a callback while the loop runs takes effect for the next
    iteration's timers."""
    fired = []
    now = loop.time()
    target = loop if where == "instance" else type(loop)
    patcher = mock.patch.object(target, "time", return_value=now + 100)

    def start_patch():
        patcher.start()

    loop.call_at(now + 50, fired.append, "due")
    loop.call_soon(start_patch)
    try:
        run_one_iteration(loop)
        run_one_iteration(loop)
    finally:
        patcher.stop()
    assert fired == ["due"]
