#!/usr/bin/env python3
"""Run CPython's own ``test.test_asyncio`` suite on a chosen event loop.

Usage (from the repository root)::

    .venv/bin/python tests/conformance/run.py                      # all modules, ferroloop
    .venv/bin/python tests/conformance/run.py --loop asyncio       # the stock loop
    .venv/bin/python tests/conformance/run.py --loop uvloop
    .venv/bin/python tests/conformance/run.py --compare-stock --list-failures
    .venv/bin/python tests/conformance/run.py --require-core       # CI gate: exit 1 on regression
    .venv/bin/python tests/conformance/run.py --modules locks,test_queues --json out.json

Options: ``--loop {ferroloop,asyncio,uvloop}``, ``--modules a,b`` (with or without the
``test_`` prefix), ``--compare-stock``, ``--require-core``, ``--json PATH``,
``--list-failures``, ``--timeout SECONDS`` (per test, default 30), ``--jobs N``,
``--keep-logs DIR`` (keep each module's captured output).

The suite that runs is the one shipped with the interpreter running this script, so
``/root/.pyenv/versions/3.13.0/bin/python tests/conformance/run.py --loop asyncio`` runs the
3.13 tests.

How the loop under test is put in place (in each child process, before any test module is
imported):

* The default policy class is replaced by one whose loops are the loop under test, so
  ``set_event_loop_policy(None)`` (done by every module's ``tearDownModule`` and many tests)
  falls back to *our* policy, and ``asyncio.new_event_loop()`` / ``asyncio.run()`` /
  ``IsolatedAsyncioTestCase`` produce our loop.  Which name is replaced follows what
  ``asyncio.events._init_event_loop_policy`` imports: ``asyncio.DefaultEventLoopPolicy`` in
  3.11-3.13 (``from . import DefaultEventLoopPolicy``), ``unix_events._DefaultEventLoopPolicy``
  from 3.14 on.  3.14 deprecates the policy API: ``asyncio.DefaultEventLoopPolicy`` is then
  served (with a DeprecationWarning) by asyncio's module ``__getattr__``, so the harness must
  not assign it - it returns our class anyway - and installs policies with
  ``events._set_event_loop_policy``, as the 3.14 tests do.  The policy is also re-installed
  before every test if a test left another one.
* ``asyncio.EventLoop`` (3.13+, the platform's default loop class) is rebound to the loop
  under test before any test module is imported: 3.14's test_taskgroups binds it in a class
  body (``loop_factory = asyncio.EventLoop``) and test_tasks / test_eager_task_factory pass
  it to ``asyncio.run(loop_factory=...)``.  On the stock run it is a class that hands out
  stock loops marked as ours.  The tests in ``STOCK_EVENT_LOOP_TESTS``, which assert what
  the alias itself is, see asyncio's own class.
* Test classes that hard-code ``asyncio.SelectorEventLoop(...)`` in a loop-factory method
  (``create_event_loop`` / ``new_loop``: the Kqueue/EPoll/Poll/Select variants in
  test_events, test_sock_lowlevel, test_sendfile, and the Selector variants in test_server,
  test_buffered_proto, test_sslproto) are replaced by ONE generated variant per family,
  named by replacing the selector word with ``Target`` (``TargetEventLoopTests``,
  ``TargetStartServerTests``...), whose factory returns the loop under test.  Classes in
  ``SETUP_PATCH_CLASSES`` that build a ``SelectorEventLoop`` inside ``setUp``
  (test_unix_events, test_base_events, 3.14's test_events.UnixPipeObjectSupportTests), and
  in ``CUSTOM_VARIANTS`` that run on a mocked bare ``BaseEventLoop()`` (test_runners,
  test_pep492 - both core modules) get the same treatment (``TargetRunTests``,
  ``TargetCoroutineTests``...).  The generated names do not depend on ``--loop`` so test
  ids line up between runs (``--compare-stock``).
  (Checked on 3.14 and 3.15: every family, ``SETUP_PATCH_CLASSES`` and ``CUSTOM_VARIANTS``
  class still exists under the same name and still gets its Target variant.)

Honest accounting: ``asyncio.events._set_running_loop`` (and its re-exports
``asyncio._set_running_loop``, ``_asyncio._set_running_loop``, ``events._py__/_c__...``) is
wrapped to record every loop set running while a test runs.  A test counts as "ran on
<loop>" only if a loop of the loop under test was set running during it (in the test's
process or in one it forked: forked children inherit the event pipe), or (for the
generated Target variants) the test's own ``self.loop`` came from our factory - the latter
so that tests such as ``test_close`` that exercise the loop without running it still count.
For ``--loop asyncio`` "ours" means a loop created through the policy / Target factory (a
``WeakSet`` of them), NOT any SelectorEventLoop: tests that build ``SelectorEventLoop()`` or
``test_utils.TestLoop`` themselves are "not ours" on every loop, which keeps the stock and
ferroloop columns comparable.

Tests that are "not ours" on every loop, because they never run a loop, include: test_tools
(3.14+: pure functions that render task trees and tables from ``_remote_debugging``-shaped
data, no loop at all), test_runners' ``test_custom_factory`` (a ``Mock`` loop) and the
``STOCK_EVENT_LOOP_TESTS``, test_eager_task_factory's ``test_issue105987`` (a child
interpreter with a dummy loop), and the tests that only construct a loop or policy object.

Columns: ``ran on X`` = non-skipped tests that ran on X; ``passed``/``failed``/``errors``
are among those (errors also include class/module fixture and import failures, which stop a
whole class from running); ``skipped`` = all skipped tests; ``timeouts`` = every test that
hung (even one that hung before starting a loop) and ``errors`` also counts every crash;
``not ours`` = finished tests that never ran on X (their failures are listed with
``--list-failures``, tagged ``[not ours]``).

Isolation: every module runs in its own child process (``--jobs`` in parallel).  The parent
watches a pipe of per-test events; if a test exceeds ``--timeout`` it sends SIGUSR1 (the
child registered ``faulthandler`` on it, so the hung stack lands in the log), kills the
child's process group, records a timeout and restarts the module skipping every test that
already started.  A child that dies mid-test (segfault, abort) is handled the same way and
the test is recorded as an error ("crash"); one that dies or hangs between tests blames the
next test and moves on (at most ``MAX_RESTARTS`` restarts per module); one that dies before
it has listed the module's tests is reported with its output and started again, up to
``STARTUP_RETRIES`` times, then counted as an import error.  The event pipe is
moved to fd >= 1000 in the child so that a loop that double-closes low fds cannot break it.

Core set (``--require-core``): every test of every module, minus the deliberate
exclusions in ``CORE_EXCLUDED_TESTS``.  A core test is *required* when it passed on stock
asyncio AND ran on the stock loop there; it is a regression unless it also passed and ran
on the loop under test.  (The set grew with the loop: first the core modules, then
sockets; since transports, servers, streams, TLS, pipes and subprocesses run too, it is
the whole suite.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# ---------------------------------------------------------------------------------------
# Editable configuration
# ---------------------------------------------------------------------------------------

#: Modules of test_asyncio never run on Linux: Windows-only or proactor-only.
EXCLUDED_MODULES = frozenset({"test_windows_events", "test_windows_utils", "test_proactor_events"})

#: Full test ids taken out of the core set on purpose (e.g. a test that only checks an
#: implementation detail of the stock loop).  Every exclusion is a decision, with its why.
CORE_EXCLUDED_TESTS: frozenset[str] = frozenset(
    {
        # Patches and reads `loop._selector` (the stock selector's internals) to check
        # how the pure-Python loop rounds select() timeouts; ferroloop has no selector.
        # The behaviour it protects (a timer never fires early, no busy loop) is covered
        # by tests/test_ordering.py and the poller's cargo tests.
        "test.test_asyncio.test_events.TargetEventLoopTests.test_timeout_rounding",
        # Counts the selector loop's self-pipe sockets (`_internal_fds`, `_ssock`,
        # `_csock`) and skips itself on any other loop. ferroloop's wake-up channels are
        # native; that loop.close() releases them is in tests/test_loop_basics.py.
        "test.test_asyncio.test_events.TargetEventLoopTests.test_internal_fds",
        # 3.11-3.13: installs a mock child watcher through the policy and expects
        # create_subprocess_exec to ask it (is_active() False -> RuntimeError before the
        # child starts). ferroloop watches its children itself with pidfds on every
        # version and never consults the policy's watcher (a documented difference); its
        # child watching is tested in tests/test_subprocess.py.
        "test.test_asyncio.test_subprocess.GenericWatcherTests."
        "test_create_subprocess_fails_with_inactive_watcher",
        # 3.14+: forces the stock loop's threaded watcher and reads its private
        # `loop._watcher._threads`. What it protects (the fallback thread never reaps
        # before the loop publishes) holds for ferroloop's own fallback and is tested by
        # tests/test_subprocess.py::test_no_pidfd_waits_in_a_thread.
        "test.test_asyncio.test_subprocess.SubprocessThreadedWatcherTests."
        "test_pid_not_reaped_before_exit_published",
    }
)

#: Tests that must see asyncio's own ``asyncio.EventLoop`` (3.13+), which the harness
#: otherwise rebinds to the loop under test: they assert what the alias *is* (a fact about
#: asyncio's defaults, not about the loop), so on the loop under test they could only
#: fail by construction.  They run on the stock SelectorEventLoop, i.e. "not ours".
STOCK_EVENT_LOOP_TESTS: frozenset[str] = frozenset(
    {
        # asyncio.run(main(), loop_factory=asyncio.EventLoop), then
        # assertIsInstance(get_running_loop(), asyncio.SelectorEventLoop).
        "test.test_asyncio.test_runners.TargetRunTests.test_loop_factory_default_event_loop",
    }
)

#: Methods through which test classes obtain their loop; when a concrete TestCase defines
#: one of these and its source builds ``SelectorEventLoop(...)``, the class is a per-loop
#: variant and gets replaced by a generated Target variant.
LOOP_FACTORY_METHODS = ("create_event_loop", "new_loop")

#: Classes that build ``asyncio.SelectorEventLoop()`` directly in ``setUp`` but test public
#: loop behaviour; they get a Target variant whose setUp sees our factory instead.  (Not
#: listed on purpose: test_unix_events.SelectorEventLoopSignalTests, test_selector_events and
#: test_base_events.BaseLoopSockSendfileTests, which test selector-loop internals.)
SETUP_PATCH_CLASSES = {
    "test_unix_events": ("SelectorEventLoopUnixSocketTests",),
    "test_base_events": ("BaseEventLoopWithSelectorTests",),
    # 3.14+: which file types connect_read_pipe / connect_write_pipe accept or reject.
    "test_events": ("UnixPipeObjectSupportTests",),
}

#: Classes whose tests run on a bare ``asyncio.BaseEventLoop()`` with mocked internals; their
#: Target variant replaces the loop-providing method with one built by the named hook
#: (``_hook_*`` functions below), so these core tests exercise the loop under test.
CUSTOM_VARIANTS = {
    "test_runners": (("RunTests", "RunnerTests"), "new_loop", "_hook_runners_new_loop"),
    "test_pep492": (
        ("LockTests", "StreamReaderTests", "CoroutineTests"),
        "setUp",
        "_hook_pep492_setup",
    ),
}

#: Slow modules are started first so the parallel jobs finish together.
SLOW_MODULES_FIRST = (
    "test_events",
    "test_subprocess",
    "test_ssl",
    "test_tasks",
    "test_sslproto",
    "test_streams",
    "test_sendfile",
    "test_sock_lowlevel",
    "test_unix_events",
    "test_base_events",
)

#: Restarts of one module's child after hangs/crashes before giving up on the rest.
MAX_RESTARTS = 50
#: How many times a module's child may die before it lists its tests (an import or
#: start-up failure) and be started again; each such death is printed with its output.
#: A failure that repeats still fails the module, as an import error.
STARTUP_RETRIES = 2

#: How long a child may be silent outside a test (module import, setUpClass,
#: tearDownModule) before it is considered hung.
FIXTURE_GRACE = 60.0

LOOP_NAMES = ("ferroloop", "asyncio", "uvloop")
PASS, FAIL, ERROR, SKIP, TIMEOUT, CRASH, NOTRUN = (
    "pass",
    "fail",
    "error",
    "skip",
    "timeout",
    "crash",
    "notrun",
)
TEST_PACKAGE = "test.test_asyncio"

# Captured at import: tests mock.patch() these (e.g. test_unix_events patches os.write), and
# the harness must keep working while they do.
_os_write = os.write
_monotonic = time.monotonic


# ---------------------------------------------------------------------------------------
# Child side: runs one module on the loop under test and streams events to the parent
# ---------------------------------------------------------------------------------------


class _Harness:
    """Installs the loop under test and records which loops every test set running."""

    def __init__(self, loop_name: str, events_fd: int) -> None:
        self.loop_name = loop_name
        self._events_fd = events_fd
        self._write_lock = threading.Lock()
        self.current_id: str | None = None
        self.loops_seen: dict[str, bool] = {}  # type name -> ours, for the current test
        self.target_loop_created = False
        self._wrap_set_running_loop()
        self._install_loop()

    # -- event stream ------------------------------------------------------------------

    def emit(self, **event) -> None:
        """Write one JSON line to the parent; lines < PIPE_BUF are written atomically."""
        data = (json.dumps(event) + "\n").encode()
        with self._write_lock:
            try:
                while data:
                    n = _os_write(self._events_fd, data)
                    data = data[n:]
            except OSError:
                # The parent can no longer follow us (our fd was closed under us or the
                # parent is gone): stop at once so the current test is reported as crashed
                # instead of running the rest of the module unobserved.
                os._exit(70)

    # -- running-loop tracking ---------------------------------------------------------

    def _wrap_set_running_loop(self) -> None:
        """Wrap every spelling of ``_set_running_loop`` before anything captures it.

        BaseEventLoop looks up ``events._set_running_loop`` at call time, uvloop captures
        ``asyncio._set_running_loop`` when imported, and a native loop may fetch
        ``_asyncio._set_running_loop``; test_events' Test{Py,C}GetEventLoop swap in the
        ``_py__``/``_c__`` aliases during their tests.  Each alias keeps its own original.
        """
        import asyncio
        import asyncio.events as events

        try:
            import _asyncio
        except ImportError:  # pragma: no cover - pure-Python asyncio build
            _asyncio = None

        wrappers: dict[int, object] = {}

        def wrap(original):
            if id(original) not in wrappers:

                def _set_running_loop(loop, _original=original):
                    if loop is not None:
                        self._note_running(loop)
                    return _original(loop)

                _set_running_loop.__wrapped__ = original
                wrappers[id(original)] = _set_running_loop
            return wrappers[id(original)]

        for name in ("_set_running_loop", "_py__set_running_loop", "_c__set_running_loop"):
            if hasattr(events, name):
                setattr(events, name, wrap(getattr(events, name)))
        asyncio._set_running_loop = events._set_running_loop
        if _asyncio is not None and hasattr(_asyncio, "_set_running_loop"):
            _asyncio._set_running_loop = wrap(_asyncio._set_running_loop)

    def _note_running(self, loop) -> None:
        name = f"{type(loop).__module__}.{type(loop).__qualname__}"
        ours = self.is_ours(loop)
        if self.loops_seen.get(name, False) or (name in self.loops_seen and not ours):
            return  # nothing new for this test
        self.loops_seen[name] = ours
        if self.current_id is not None:
            # Streamed at once so that a test that later hangs is still attributed.
            self.emit(ev="loop", id=self.current_id, type=name, ours=ours)

    # -- loop under test ---------------------------------------------------------------

    def _install_loop(self) -> None:
        import asyncio
        import asyncio.unix_events as unix_events
        import weakref

        # 3.14 deprecated the policy API: ``asyncio.DefaultEventLoopPolicy`` is served by
        # asyncio's module ``__getattr__`` (which warns), ``_init_event_loop_policy``
        # imports ``unix_events._DefaultEventLoopPolicy`` and the tests reset with
        # ``events._set_event_loop_policy(None)``.  Patch what that import reads and leave
        # the deprecated names alone, so that their warnings still fire as on stock.
        deprecated_api = hasattr(unix_events, "_DefaultEventLoopPolicy")
        if deprecated_api:
            stock_policy = unix_events._DefaultEventLoopPolicy
        else:
            stock_policy = unix_events.DefaultEventLoopPolicy
        # Bound now: the SETUP_PATCH_CLASSES variants temporarily rebind the name.
        stock_loop_cls = asyncio.SelectorEventLoop
        if self.loop_name == "ferroloop":
            import ferroloop

            loop_cls = ferroloop.Loop
            if deprecated_api:
                # ferroloop.EventLoopPolicy derives from the deprecated public alias; the
                # same policy, built on the class asyncio itself uses from 3.14 on.
                self.policy_cls = type(
                    "FerroloopPolicy", (stock_policy,), {"_loop_factory": loop_cls}
                )
            else:
                self.policy_cls = ferroloop.EventLoopPolicy
            self.new_loop = ferroloop.new_event_loop
            self.is_ours = lambda loop: isinstance(loop, loop_cls)
            event_loop_cls = loop_cls
        elif self.loop_name == "uvloop":
            import uvloop

            loop_cls = uvloop.Loop
            # uvloop.EventLoopPolicy derives from BaseDefaultEventLoopPolicy and so lacks the
            # child-watcher API that the Unix test mixins call in setUp; give uvloop the
            # stock Unix policy with its loop factory so those tests measure the loop.
            self.policy_cls = type(
                "UvloopUnixPolicy", (stock_policy,), {"_loop_factory": uvloop.Loop}
            )
            self.new_loop = uvloop.new_event_loop
            self.is_ours = lambda loop: isinstance(loop, loop_cls)
            event_loop_cls = loop_cls
        else:
            ours = weakref.WeakSet()

            def new_stock_loop(*args, **kwargs):
                loop = stock_loop_cls(*args, **kwargs)
                ours.add(loop)
                return loop

            # A transparent subclass: same behaviour, but loops it creates are marked ours.
            self.policy_cls = type(
                "StockPolicy", (stock_policy,), {"_loop_factory": staticmethod(new_stock_loop)}
            )
            self.new_loop = new_stock_loop
            self.is_ours = lambda loop: loop in ours
            event_loop_cls = _factory_class("EventLoop", stock_loop_cls, new_stock_loop)

        if deprecated_api:
            unix_events._DefaultEventLoopPolicy = self.policy_cls
        else:
            asyncio.DefaultEventLoopPolicy = self.policy_cls
            unix_events.DefaultEventLoopPolicy = self.policy_cls
        # ``asyncio.EventLoop`` (3.13+) is the platform's default loop class; tests take it
        # as a ``loop_factory`` (3.14's test_taskgroups binds it in a class body, so this
        # must happen before any test module is imported).
        self.stock_event_loop = getattr(unix_events, "EventLoop", None)
        self.event_loop_cls = event_loop_cls if self.stock_event_loop is not None else None
        self._bind_event_loop(self.event_loop_cls)
        self._set_policy(self.policy_cls())

        probe = asyncio.new_event_loop()
        try:
            if not self.is_ours(probe):
                raise RuntimeError(
                    f"asyncio.new_event_loop() returned {type(probe)!r}, not the loop under test"
                )
        finally:
            probe.close()
        if self.event_loop_cls is not None:
            probe = asyncio.EventLoop()
            try:
                if not self.is_ours(probe):
                    raise RuntimeError(
                        f"asyncio.EventLoop() returned {type(probe)!r}, not the loop under test"
                    )
            finally:
                probe.close()

    def _bind_event_loop(self, cls) -> None:
        """Make ``asyncio.EventLoop`` ``cls`` (nothing to do before 3.13)."""
        import asyncio
        import asyncio.unix_events as unix_events

        if cls is not None:
            asyncio.EventLoop = unix_events.EventLoop = cls

    @staticmethod
    def _set_policy(policy) -> None:
        """Install ``policy`` without the deprecation warning 3.14 gives the public API."""
        import asyncio
        import asyncio.events as events

        setter = getattr(events, "_set_event_loop_policy", None) or asyncio.set_event_loop_policy
        setter(policy)

    def ensure_policy(self) -> None:
        """Re-install our policy if the previous test (or tearDownModule) replaced it."""
        import asyncio.events as events

        if not isinstance(getattr(events, "_event_loop_policy", None), self.policy_cls):
            self._set_policy(self.policy_cls())

    def begin_test(self, test_id: str) -> None:
        """Per-test set-up: our policy, and the ``asyncio.EventLoop`` the test should see."""
        self.ensure_policy()
        if self.event_loop_cls is not None:
            stock = test_id in STOCK_EVENT_LOOP_TESTS
            self._bind_event_loop(self.stock_event_loop if stock else self.event_loop_cls)

    def target_factory(self):
        """Loop factory used by the generated Target variants."""
        loop = self.new_loop()
        if self.is_ours(loop):
            self.target_loop_created = True
        return loop


def _factory_class(name: str, base: type, factory) -> type:
    """A subclass of ``base`` whose instantiation returns ``factory(*args, **kwargs)``.

    Stands in for ``asyncio.EventLoop`` on the stock run: a class (so that a class body's
    ``loop_factory = asyncio.EventLoop`` does not bind it as a method) that hands out real
    stock loops, marked as ours by ``factory``.  They are not instances of this subclass,
    so ``__init__`` does not run twice.
    """

    def __new__(cls, *args, **kwargs):
        return factory(*args, **kwargs)

    return type(name, (base,), {"__new__": __new__, "__module__": __name__})


def _target_name(name: str) -> str:
    """``EPollEventLoopTests`` -> ``TargetEventLoopTests``; ``RunTests`` -> ``TargetRunTests``."""
    new = re.sub(r"EPoll|Kqueue|Poll|Selector|Select", "Target", name, count=1)
    return new if new != name else f"Target{name}"


def _hook_runners_new_loop(harness: _Harness):
    """test_runners.BaseTest.new_loop, but returning our loop.

    BaseTest.tearDown asserts ``policy.loop.shutdown_ag_run``, which the original sets from
    a stub ``shutdown_asyncgens``; keep that flag but let the real method run too.
    """

    def new_loop(self):
        loop = harness.target_factory()
        loop.shutdown_ag_run = False
        real_shutdown_asyncgens = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await real_shutdown_asyncgens()

        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    return new_loop


def _hook_pep492_setup(harness: _Harness):
    """test_pep492.BaseTest.setUp, but with our loop instead of a mocked BaseEventLoop."""
    import importlib

    test_utils = importlib.import_module(f"{TEST_PACKAGE}.utils")

    def setUp(self):  # noqa: N802 - unittest API
        test_utils.TestCase.setUp(self)
        self.loop = harness.target_factory()
        self.set_event_loop(self.loop)

    return setUp


def _generate_variants(module, harness: _Harness) -> tuple[set[type], list[str]]:
    """Add Target variants to ``module``; return (replaced classes, generated names)."""
    import inspect
    import unittest

    replaced: set[type] = set()
    generated: list[str] = []
    families: dict[tuple, list[type]] = {}
    for obj in list(vars(module).values()):
        if not (
            isinstance(obj, type)
            and issubclass(obj, unittest.TestCase)
            and obj.__module__ == module.__name__
        ):
            continue
        for meth in LOOP_FACTORY_METHODS:
            fn = obj.__dict__.get(meth)
            if fn is None:
                continue
            try:
                source = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            if "SelectorEventLoop(" in source:
                families.setdefault((meth, obj.__bases__), []).append(obj)

    def make_factory():
        def factory(self):
            return harness.target_factory()

        return factory

    for (meth, _bases), members in families.items():
        # Prefer the EPoll variant: it is what the default loop uses on Linux, so any
        # per-variant overrides it carries are the relevant ones.
        members.sort(key=lambda c: (not c.__name__.startswith("EPoll"), c.__name__))
        rep = members[0]
        name = _target_name(rep.__name__)
        cls = type(
            name,
            (rep,),
            {meth: make_factory(), "__module__": module.__name__, "__qualname__": name},
        )
        setattr(module, name, cls)
        replaced.update(members)
        generated.append(name)

    short = module.__name__.rsplit(".", 1)[-1]
    for cls_name in SETUP_PATCH_CLASSES.get(short, ()):
        orig = getattr(module, cls_name, None)
        if orig is None:
            continue
        name = _target_name(cls_name)

        def setUp(self, _orig=orig):  # noqa: N802 - unittest API
            import asyncio

            saved = asyncio.SelectorEventLoop
            asyncio.SelectorEventLoop = harness.target_factory
            try:
                _orig.setUp(self)
            finally:
                asyncio.SelectorEventLoop = saved

        cls = type(
            name, (orig,), {"setUp": setUp, "__module__": module.__name__, "__qualname__": name}
        )
        setattr(module, name, cls)
        replaced.add(orig)
        generated.append(name)

    class_names, meth, hook_name = CUSTOM_VARIANTS.get(short, ((), "", ""))
    for cls_name in class_names:
        orig = getattr(module, cls_name, None)
        if orig is None:
            continue
        name = _target_name(cls_name)
        body = {
            meth: globals()[hook_name](harness),
            "__module__": module.__name__,
            "__qualname__": name,
        }
        setattr(module, name, type(name, (orig,), body))
        replaced.add(orig)
        generated.append(name)
    return replaced, generated


def _flatten(suite):
    import unittest

    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _make_result_class(harness: _Harness, log_file):
    import traceback
    import unittest

    class StreamingResult(unittest.TestResult):
        """Streams one event per test; outcome precedence error > fail > skip > pass."""

        def startTest(self, test):  # noqa: N802 - unittest API
            super().startTest(test)
            self._begin(test)

        def _begin(self, test):
            harness.begin_test(test.id())
            harness.loops_seen = {}
            harness.target_loop_created = False
            harness.current_id = test.id()
            self._outcome = None
            self._message = ""
            self._tb = ""
            self._t0 = _monotonic()
            harness.emit(ev="start", id=test.id())
            # Where a dumped traceback of a hang belongs, if the parent has to kill us.
            print(f"\n=== {test.id()}", file=log_file, flush=True)

        def _set(self, outcome, err=None, message=""):
            order = (PASS, SKIP, FAIL, ERROR)
            if self._outcome is None or order.index(outcome) > order.index(self._outcome):
                self._outcome = outcome
                if err is not None:
                    self._tb = "".join(traceback.format_exception(*err))[-6000:]
                    lines = traceback.format_exception_only(err[0], err[1])
                    self._message = lines[-1].strip() if lines else repr(err[1])
                else:
                    self._message = message

        def _fixture(self, test, outcome, err=None, reason=""):
            tb = "".join(traceback.format_exception(*err))[-6000:] if err else ""
            msg = reason
            if err is not None:
                lines = traceback.format_exception_only(err[0], err[1])
                msg = lines[-1].strip() if lines else repr(err[1])
            harness.emit(ev="fixture", id=test.id(), outcome=outcome, msg=msg, tb=tb)

        def _is_test(self, test):
            return isinstance(test, unittest.TestCase)

        def addSuccess(self, test):  # noqa: N802
            self._set(PASS)

        def addExpectedFailure(self, test, err):  # noqa: N802
            self._set(PASS)

        def addUnexpectedSuccess(self, test):  # noqa: N802
            self._set(FAIL, message="unexpected success")

        def addFailure(self, test, err):  # noqa: N802
            self._set(FAIL, err)

        def addError(self, test, err):  # noqa: N802
            if self._is_test(test) and harness.current_id == test.id():
                self._set(ERROR, err)
            else:
                self._fixture(test, ERROR, err)

        def addSkip(self, test, reason):  # noqa: N802
            if self._is_test(test) and harness.current_id != test.id():
                # 3.12+ reports skipped classes/methods without calling startTest.
                self._begin(test)
            if self._is_test(test):
                self._set(SKIP, message=reason)
            else:
                self._fixture(test, SKIP, reason=reason)

        def addSubTest(self, test, subtest, err):  # noqa: N802
            if err is not None:
                failed = issubclass(err[0], test.failureException)
                self._set(FAIL if failed else ERROR, err)

        def stopTest(self, test):  # noqa: N802
            super().stopTest(test)
            if harness.current_id != test.id():
                self._begin(test)
            loops = dict(harness.loops_seen)
            ours = any(loops.values()) or harness.target_loop_created
            harness.emit(
                ev="result",
                id=test.id(),
                outcome=self._outcome or PASS,
                ours=ours,
                loops=sorted(loops),
                dur=round(_monotonic() - self._t0, 3),
                msg=self._message[:500],
                tb=self._tb,
            )
            harness.current_id = None

    return StreamingResult


def child_main(args: argparse.Namespace) -> int:
    """Run one module (minus already-started tests) and stream events on ``events_fd``."""
    import faulthandler
    import traceback

    log_file = sys.stderr
    faulthandler.enable(file=log_file, all_threads=True)
    # The parent sends SIGUSR1 before killing a hung child: dump where every thread is.
    faulthandler.register(signal.SIGUSR1, file=log_file, all_threads=True)
    # A runner started in the background by a shell without job control (CI scripts,
    # `cmd &`) inherits SIGINT ignored, and then Python installs no KeyboardInterrupt
    # handler: test_runners' interrupt tests (`_thread.interrupt_main()`) hang on every
    # loop. The suite assumes an interpreter started normally, so give it that.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # Move the event pipe far above the fds tests use: descriptors are allocated lowest
    # first, so a loop that double-closes a (low) fd cannot close or reuse ours.
    import fcntl

    events_fd = fcntl.fcntl(args.events_fd, fcntl.F_DUPFD_CLOEXEC, 1000)
    os.close(args.events_fd)
    harness = _Harness(args.loop, events_fd)
    module_name = f"{TEST_PACKAGE}.{args.child}"
    skip = set()
    if args.skip_file:
        with open(args.skip_file) as f:
            skip = set(json.load(f))

    import importlib
    import unittest

    try:
        module = importlib.import_module(module_name)
    except unittest.SkipTest as exc:
        harness.emit(ev="fixture", id=f"import ({module_name})", outcome=SKIP, msg=str(exc), tb="")
        harness.emit(ev="done")
        return 0
    except Exception as exc:  # noqa: BLE001 - report any import failure as an error
        harness.emit(
            ev="fixture",
            id=f"import ({module_name})",
            outcome=ERROR,
            msg=f"{type(exc).__name__}: {exc}",
            tb=traceback.format_exc()[-6000:],
        )
        harness.emit(ev="done")
        return 0

    replaced, generated = _generate_variants(module, harness)
    loader = unittest.TestLoader()
    tests = [t for t in _flatten(loader.loadTestsFromModule(module)) if type(t) not in replaced]
    harness.emit(
        ev="list",
        ids=[t.id() for t in tests],
        generated=generated,
        replaced=sorted(c.__name__ for c in replaced),
    )
    suite = unittest.TestSuite([t for t in tests if t.id() not in skip])
    result = _make_result_class(harness, log_file)()
    suite.run(result)
    harness.emit(ev="done")
    return 0


# ---------------------------------------------------------------------------------------
# Parent side: scheduling, watchdog, restarts
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class TestRecord:
    """Outcome of one test (or of a fixture such as setUpClass) on one loop."""

    id: str
    outcome: str
    ours: bool = False
    loops: list[str] = dataclasses.field(default_factory=list)
    dur: float = 0.0
    msg: str = ""
    tb: str = ""
    fixture: bool = False


@dataclasses.dataclass
class ModuleResult:
    """All records of one module run, in the order they were reported."""

    module: str
    loop: str
    records: dict[str, TestRecord] = dataclasses.field(default_factory=dict)
    generated: list[str] = dataclasses.field(default_factory=list)
    replaced: list[str] = dataclasses.field(default_factory=list)
    restarts: int = 0
    wall: float = 0.0


class ModuleRunner:
    """Runs one module in child processes, killing and resuming after hangs or crashes."""

    def __init__(self, module: str, loop: str, opts: argparse.Namespace, log_dir: str):
        self.module = module
        self.loop = loop
        self.opts = opts
        self.log_path = os.path.join(log_dir, f"{module}.{loop}.log")
        self.result = ModuleResult(module, loop)
        self.listed: list[str] = []
        self.started: set[str] = set()

    def run(self) -> ModuleResult:
        t0 = time.monotonic()
        workdir = tempfile.mkdtemp(prefix=f"conformance-{self.module}-")
        startup_deaths = 0
        try:
            while True:
                state = self._run_child(workdir)
                if state["done"]:
                    break
                if not self.listed and startup_deaths < STARTUP_RETRIES:
                    startup_deaths += 1
                    self._report_startup_death(state["reason"])
                    continue
                self.result.restarts += 1
                remaining = [t for t in self.listed if t not in self.started]
                if not self.listed or not remaining or self.result.restarts > MAX_RESTARTS:
                    self._record_unrun(remaining, state)
                    break
                if not state["progress"]:
                    # Died or hung before the next test reported its start (in setUpClass,
                    # or in unittest's machinery): blame that test so the retry moves on.
                    # A broken setUpClass thus costs one restart per test of its class.
                    nxt = remaining[0]
                    self.started.add(nxt)
                    self._add(
                        TestRecord(
                            nxt,
                            CRASH,
                            msg=f"{state['reason']} before this test started",
                            tb=self._log_tail("")[-3000:],
                        )
                    )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self._expand_fixture_failures()
        self.result.wall = time.monotonic() - t0
        return self.result

    def _run_child(self, workdir: str) -> dict:
        """Run one child; return {'done', 'progress', 'reason'}."""
        skip_file = os.path.join(workdir, "skip.json")
        with open(skip_file, "w") as f:
            json.dump(sorted(self.started), f)
        read_fd, write_fd = os.pipe()
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            self.module,
            "--loop",
            self.loop,
            "--events-fd",
            str(write_fd),
            "--skip-file",
            skip_file,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,  # tests write TESTFN files into the cwd
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,  # so a kill also reaches the test's own children
                env=env,
            )
        os.close(write_fd)
        state = {"done": False, "progress": False, "reason": ""}
        current: str | None = None
        current_loops: dict[str, bool] = {}
        t_start = t_last = time.monotonic()
        buf = b""
        eof = False
        try:
            while not eof:
                ready, _, _ = select.select([read_fd], [], [], 0.5)
                if ready:
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        eof = True
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        ev = json.loads(line)
                        t_last = time.monotonic()
                        kind = ev["ev"]
                        if kind == "list":
                            if not self.listed:
                                self.listed = ev["ids"]
                                self.result.generated = ev["generated"]
                                self.result.replaced = ev["replaced"]
                        elif kind == "start":
                            current, current_loops, t_start = ev["id"], {}, t_last
                            self.started.add(current)
                            state["progress"] = True
                        elif kind == "loop":
                            if ev["id"] == current:
                                prev = current_loops.get(ev["type"])
                                current_loops[ev["type"]] = prev or ev["ours"]
                        elif kind == "result":
                            # "loop" events also come from processes the test forked
                            # (they inherit the pipe): a loop of ours that ran there
                            # ran for this test, though the test's own process never
                            # saw it (test_unix_events.TestFork's asyncio.run in a
                            # multiprocessing 'fork' child).
                            self._add(
                                TestRecord(
                                    ev["id"],
                                    ev["outcome"],
                                    ev["ours"] or any(current_loops.values()),
                                    sorted(set(ev["loops"]) | set(current_loops)),
                                    ev["dur"],
                                    ev["msg"],
                                    ev["tb"],
                                )
                            )
                            current = None
                        elif kind == "fixture":
                            self._add(
                                TestRecord(
                                    ev["id"],
                                    ev["outcome"],
                                    msg=ev["msg"],
                                    tb=ev["tb"],
                                    fixture=True,
                                )
                            )
                        elif kind == "done":
                            state["done"] = True
                    continue
                now = time.monotonic()
                if current is not None and now - t_start > self.opts.timeout:
                    self._kill(proc)
                    self._add(
                        TestRecord(
                            current,
                            TIMEOUT,
                            any(current_loops.values()),
                            sorted(current_loops),
                            round(now - t_start, 3),
                            f"timed out after {self.opts.timeout:g}s",
                            self._log_tail(current),
                        )
                    )
                    return state
                if current is None and now - t_last > self.opts.timeout + FIXTURE_GRACE:
                    self._kill(proc)
                    state["reason"] = "child hung outside a test (fixture or import)"
                    return state
                if proc.poll() is not None and not ready:
                    # Exited; drain whatever is left in the pipe on the next iteration.
                    ready2, _, _ = select.select([read_fd], [], [], 0.2)
                    if not ready2:
                        break
        finally:
            os.close(read_fd)
            if proc.poll() is None:
                # 'done' was sent; give the interpreter a moment to finish shutting down.
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._kill(proc)
            proc.wait()
        if not state["done"]:
            code = proc.returncode
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            if current is not None:
                self._add(
                    TestRecord(
                        current,
                        CRASH,
                        any(current_loops.values()),
                        sorted(current_loops),
                        round(time.monotonic() - t_start, 3),
                        f"child process died ({why}) during the test",
                        self._log_tail(current),
                    )
                )
            state["reason"] = f"child process died ({why})"
        return state

    def _report_startup_death(self, reason: str) -> None:
        """Say, with its output, that a child died before it listed the module's tests."""
        output = self._log_tail("")[-3000:].rstrip() or "(no output)"
        print(
            f"  [{self.loop:9}] {self.module}: the child process died before listing its "
            f"tests ({reason}); starting it again. Its output:\n"
            + "\n".join("      " + line for line in output.splitlines()),
            file=sys.stderr,
            flush=True,
        )

    def _kill(self, proc: subprocess.Popen) -> None:
        """Dump the hung child's stacks (SIGUSR1 -> faulthandler), then kill its group."""
        try:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def _log_tail(self, test_id: str) -> str:
        """Return the child's output since ``test_id`` started (includes the stack dump)."""
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        marker = f"\n=== {test_id}\n"
        pos = text.rfind(marker)
        return text[pos + len(marker) :][-6000:] if pos >= 0 else text[-6000:]

    def _add(self, rec: TestRecord) -> None:
        self.result.records[rec.id] = rec

    def _record_unrun(self, remaining: list[str], state: dict) -> None:
        reason = state.get("reason") or "child process made no progress"
        if not self.listed and not self.result.records:
            self._add(
                TestRecord(
                    f"import ({TEST_PACKAGE}.{self.module})",
                    ERROR,
                    msg=reason,
                    tb=self._log_tail("")[-3000:],
                    fixture=True,
                )
            )
        tail = self._log_tail("")[-3000:]
        for test_id in remaining:
            if test_id not in self.result.records:
                # The child's last output (e.g. a traceback) is kept once, on the first one.
                self._add(TestRecord(test_id, NOTRUN, msg=reason, tb=tail))
                tail = ""

    def _expand_fixture_failures(self) -> None:
        """Give tests that never started because of a setUp{Class,Module} failure its outcome.

        unittest reports such a failure once (as "setUpClass (module.Class)") and silently
        skips the class; attributing it to each test keeps stock/loop comparisons per test.
        """
        never = [t for t in self.listed if t not in self.result.records]
        if not never:
            return
        for rec in list(self.result.records.values()):
            m = re.fullmatch(r"(setUpClass|setUpModule|import) \((.+)\)", rec.id)
            if not (rec.fixture and m):
                continue
            scope = m.group(2) + "."
            hit = [t for t in never if t.startswith(scope)]
            for test_id in hit:
                self._add(
                    TestRecord(
                        test_id,
                        rec.outcome,
                        msg=f"{m.group(1)} {rec.outcome}: {rec.msg}",
                        tb=rec.tb,
                    )
                )
            if hit:
                # Counted through the tests it stopped; keep it in JSON only.
                rec.outcome = f"{rec.outcome}-expanded"
            never = [t for t in never if t not in self.result.records]
        for test_id in never:
            self._add(TestRecord(test_id, NOTRUN, msg="test never started"))


# ---------------------------------------------------------------------------------------
# Aggregation and reporting
# ---------------------------------------------------------------------------------------

COUNT_KEYS = ("ran", "passed", "failed", "errors", "skipped", "timeouts", "not_ours")


def count(records) -> dict[str, int]:
    """Table counters for an iterable of TestRecord (see the module docstring)."""
    c = dict.fromkeys(COUNT_KEYS, 0)
    for r in records:
        if r.fixture:
            if r.outcome == ERROR:
                c["errors"] += 1
            continue
        if r.outcome == SKIP:
            c["skipped"] += 1
            continue
        if r.outcome == TIMEOUT:
            c["timeouts"] += 1
            if r.ours:
                c["ran"] += 1
            continue
        if r.outcome in (NOTRUN, CRASH):
            # Always an error, even when no loop had started: the child died or never
            # reached the test, which is exactly what must not go unnoticed.
            c["errors"] += 1
            if r.ours:
                c["ran"] += 1
            continue
        if not r.ours:
            c["not_ours"] += 1
            continue
        c["ran"] += 1
        if r.outcome == PASS:
            c["passed"] += 1
        elif r.outcome == FAIL:
            c["failed"] += 1
        else:  # error, crash
            c["errors"] += 1
    return c


def passed_on(rec: TestRecord | None) -> bool:
    """A test passed on a loop: it passed AND actually ran on that loop."""
    return rec is not None and not rec.fixture and rec.outcome == PASS and rec.ours


def is_core(test_id: str) -> bool:
    """Whether ``test_id`` is required (see the module docstring): all but exclusions."""
    return test_id not in CORE_EXCLUDED_TESTS


def discover_modules() -> list[str]:
    """Every test module of the running interpreter's test.test_asyncio, minus exclusions."""
    import importlib.util

    spec = importlib.util.find_spec(TEST_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{TEST_PACKAGE} is not installed for {sys.executable}")
    names = set()
    for location in spec.submodule_search_locations:
        for fn in os.listdir(location):
            if fn.startswith("test_") and fn.endswith(".py"):
                names.add(fn[:-3])
    return sorted(names - EXCLUDED_MODULES)


def schedule(modules: list[str]) -> list[str]:
    """Slow modules first so the parallel jobs end at about the same time."""
    slow = [m for m in SLOW_MODULES_FIRST if m in modules]
    return slow + [m for m in modules if m not in slow]


def check_loop_importable(loop: str) -> str | None:
    """Return an error message if the loop package cannot be used by a child."""
    code = {
        # The harness builds its own policy where the policy API is deprecated (3.14+).
        "ferroloop": "import ferroloop; ferroloop.Loop; ferroloop.new_event_loop"
        + ("" if sys.version_info >= (3, 14) else "; ferroloop.EventLoopPolicy"),
        "uvloop": "import uvloop; uvloop.Loop",
        "asyncio": "import asyncio",
    }[loop]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    if proc.returncode:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "import failed"
    return None


def run_all(loops: list[str], modules: list[str], opts) -> dict[str, dict[str, ModuleResult]]:
    """Run every (loop, module) pair on a pool of ``opts.jobs`` worker threads."""
    log_dir = opts.keep_logs or tempfile.mkdtemp(prefix="conformance-logs-")
    os.makedirs(log_dir, exist_ok=True)
    results: dict[str, dict[str, ModuleResult]] = {loop: {} for loop in loops}
    jobs = [(loop, m) for m in schedule(modules) for loop in loops]
    progress_lock = threading.Lock()

    def work(job):
        loop, module = job
        res = ModuleRunner(module, loop, opts, log_dir).run()
        with progress_lock:
            c = count(res.records.values())
            print(
                f"  [{loop:9}] {module:24} {res.wall:6.1f}s  ran {c['ran']:4}  "
                f"pass {c['passed']:4}  fail {c['failed']:3}  err {c['errors']:3}  "
                f"skip {c['skipped']:3}  timeout {c['timeouts']:2}  not ours {c['not_ours']:3}"
                + (f"  (restarts: {res.restarts})" if res.restarts else ""),
                file=sys.stderr,
                flush=True,
            )
        return res

    try:
        with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            for res in pool.map(work, jobs):
                results[res.loop][res.module] = res
    finally:
        if not opts.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
    return results


def print_table(loop: str, modules: list[str], results, stock_results=None) -> dict[str, int]:
    """Print the per-module table; return the totals."""
    headers = [f"ran on {loop}", "passed", "failed", "errors", "skipped", "timeouts", "not ours"]
    if stock_results is not None:
        headers += ["stock ran", "stock passed"]
    width = max([len(m) for m in modules] + [len("TOTAL")]) + 2
    widths = [max(len(h), 6) for h in headers]
    print(
        "module".ljust(width) + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    )
    print("-" * (width + sum(widths) + 2 * (len(widths) - 1)))
    totals = dict.fromkeys(COUNT_KEYS, 0)
    stock_totals = dict.fromkeys(COUNT_KEYS, 0)

    def row(name, c, sc):
        vals = [c[k] for k in COUNT_KEYS]
        if sc is not None:
            vals += [sc["ran"], sc["passed"]]
        print(
            name.ljust(width)
            + "  ".join(str(v).rjust(w) for v, w in zip(vals, widths, strict=True))
        )

    for m in sorted(modules):
        c = count(results[m].records.values())
        sc = count(stock_results[m].records.values()) if stock_results is not None else None
        for k in COUNT_KEYS:
            totals[k] += c[k]
            if sc is not None:
                stock_totals[k] += sc[k]
        row(m, c, sc)
    print("-" * (width + sum(widths) + 2 * (len(widths) - 1)))
    row("(sum)", totals, stock_totals if stock_results is not None else None)
    line = (
        f"TOTAL  ran on {loop}: {totals['ran']}  passed: {totals['passed']}  "
        f"failed: {totals['failed']}  errors: {totals['errors']}  "
        f"skipped: {totals['skipped']}  timeouts: {totals['timeouts']}"
    )
    if stock_results is not None:
        line += f"   (stock: ran {stock_totals['ran']}, passed {stock_totals['passed']})"
    print()
    print(line)
    return totals


def first_line(rec: TestRecord | None) -> str:
    if rec is None:
        return "(not collected)"
    return (rec.msg or rec.outcome).splitlines()[0] if (rec.msg or rec.outcome) else ""


def regressions(loop_results, stock_results, modules) -> list[tuple[str, str, bool, TestRecord]]:
    """Tests that passed (and ran) on stock but did not pass (or did not run) on the loop."""
    out = []
    for m in modules:
        recs = loop_results[m].records
        for test_id, srec in stock_results[m].records.items():
            if passed_on(srec) and not passed_on(recs.get(test_id)):
                out.append((m, test_id, is_core(test_id), recs.get(test_id)))
    out.sort(key=lambda r: (not r[2], r[1]))  # core regressions first
    return out


def describe(rec: TestRecord | None) -> str:
    if rec is None:
        return "missing"
    if rec.outcome == PASS and not rec.ours:
        return "passed but not on the loop under test"
    return rec.outcome


def list_failures(loop: str, modules: list[str], results) -> None:
    """Print every failing test id with the first line of its error."""
    print(f"\nFailures / errors / timeouts on {loop}:")
    for m in sorted(modules):
        for rec in results[m].records.values():
            if rec.outcome in (FAIL, ERROR, CRASH, TIMEOUT, NOTRUN):
                tag = "" if rec.ours or rec.fixture else " [not ours]"
                print(f"  {rec.outcome.upper():7} {rec.id}{tag}: {first_line(rec)}")


def write_json(opts: argparse.Namespace, results, regs) -> None:
    """Write per-test outcomes of every loop that ran (and the regressions) to opts.json."""
    payload = {
        "python": sys.version,
        "executable": sys.executable,
        "loop": opts.loop,
        "timeout": opts.timeout,
        "runs": {
            loop: {
                m: {
                    "wall": round(r.wall, 2),
                    "restarts": r.restarts,
                    "generated": r.generated,
                    "replaced": r.replaced,
                    "counts": count(r.records.values()),
                    "tests": {
                        tid: {k: v for k, v in dataclasses.asdict(rec).items() if k != "id"}
                        for tid, rec in r.records.items()
                    },
                }
                for m, r in per_loop.items()
            }
            for loop, per_loop in results.items()
        },
        "regressions": [
            {"id": tid, "core": core, "outcome": describe(rec), "msg": first_line(rec)}
            for _m, tid, core, rec in regs
        ],
    }
    with open(opts.json, "w") as f:
        json.dump(payload, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run CPython's test.test_asyncio on an event loop "
        "(see the module docstring for the accounting rules)."
    )
    parser.add_argument("--loop", choices=LOOP_NAMES, default="ferroloop")
    parser.add_argument("--modules", help="comma-separated subset, e.g. locks,test_queues")
    parser.add_argument("--compare-stock", action="store_true")
    parser.add_argument("--require-core", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--list-failures", action="store_true")
    parser.add_argument("--timeout", type=float, default=30.0, help="per test, seconds")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep-logs", metavar="DIR", help="keep child output in DIR")
    # Internal: child mode.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--events-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-file", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.child:
        return child_main(opts)

    all_modules = discover_modules()
    if opts.modules:
        modules = []
        for name in opts.modules.split(","):
            name = name.strip()
            if not name:
                continue
            name = name if name.startswith("test_") else f"test_{name}"
            if name not in all_modules:
                parser.error(f"unknown module {name!r}; known: {', '.join(all_modules)}")
            modules.append(name)
    else:
        modules = all_modules

    compare = (opts.compare_stock or opts.require_core) and opts.loop != "asyncio"
    loops = [opts.loop] + (["asyncio"] if compare else [])
    for loop in loops:
        err = check_loop_importable(loop)
        if err:
            print(f"error: --loop {loop} is not usable with {sys.executable}: {err}")
            return 2

    print(
        f"Python {sys.version.split()[0]} ({sys.executable}); loop: {opts.loop}"
        + ("; compared with stock asyncio" if compare else "")
        + f"; timeout {opts.timeout:g}s/test; jobs {opts.jobs}; {len(modules)} modules",
        flush=True,
    )
    t0 = time.monotonic()
    results = run_all(loops, modules, opts)
    elapsed = time.monotonic() - t0
    print()
    loop_res = results[opts.loop]
    stock_res = results["asyncio"] if compare else None
    print_table(opts.loop, modules, loop_res, stock_res)
    print(f"wall time {elapsed:.0f}s")

    if opts.list_failures:
        list_failures(opts.loop, modules, loop_res)

    exit_code = 0
    regs: list = []
    if compare:
        regs = regressions(loop_res, stock_res, modules)
        core = [r for r in regs if r[2]]
        print(
            f"\nPassed on stock asyncio but not on {opts.loop}: {len(regs)} "
            f"({len(core)} in the core set; CORE = regression)"
        )
        for _module, test_id, in_core, rec in regs:
            flag = "CORE " if in_core else "     "
            print(f"  {flag}{test_id} -> {describe(rec)}: {first_line(rec)}")
        if opts.require_core:
            print(f"\n--require-core: {len(core) or 'no'} core regression(s)")
            exit_code = 1 if core else 0
    elif opts.require_core:
        print("\n--require-core: nothing to compare, the loop under test is stock asyncio")

    if opts.json:
        write_json(opts, results, regs)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
