"""pytest-asyncio running an unchanged async test module on ferroloop and on stock asyncio
(the oracle).

A small test module that knows nothing of ferroloop (``@pytest.mark.asyncio`` tests, async
fixtures, ``asyncio.gather`` and ``asyncio.timeout``, a TCP server from
``asyncio.start_server`` with ``open_connection`` clients, module-scoped loops shared by
tests and a fixture) runs with ``python -m pytest`` in a child process, on the loop each of
three configurations selects:

* ``loop_factories_hook``: a conftest.py implementing pytest-asyncio's
  ``pytest_asyncio_loop_factories`` hook (the documented way since 1.4);
* ``event_loop_policy_fixture``: a conftest.py overriding the ``event_loop_policy``
  fixture (the way before 1.4; deprecated since, still supported);
* ``command_line``: no configuration at all; ``python -m ferroloop -m pytest`` for
  ferroloop, plain ``python -m pytest`` (the default policy) for asyncio.

The child runs with every warning turned into an error (so a leaked transport's
ResourceWarning fails it too) and writes a JUnit XML report; the test checks that every
child test passed and, from what each child test recorded, which loop it ran on and which
tests shared a loop.  Nothing here measures time: the child's every wait is bounded by
``asyncio.timeout`` and the child itself by a subprocess timeout.

Needs: pytest-asyncio.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

# Last resort: a test that wedges (so that no subprocess timeout can fire) ends the pytest
# process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 180.0


pytestmark = pytest.mark.usefixtures("watchdog")


# The unchanged test module.  Each test records, through the file named by LOOP_RECORD,
# the running loop's class and which of the loops seen so far it is (the loops are kept
# alive, so a new loop never reuses an old one's number).
CHILD_TESTS = '''
"""Ordinary pytest-asyncio tests."""

import asyncio
import json
import os

import pytest
import pytest_asyncio

# Upper bound for one test's waits (a hang must fail, not block CI).
TIMEOUT = 20.0
# A deadline meant to expire.
EXPIRING = 0.05

LOOPS = []


def record(what):
    loop = asyncio.get_running_loop()
    if not any(seen is loop for seen in LOOPS):
        LOOPS.append(loop)
    number = next(i for i, seen in enumerate(LOOPS) if seen is loop)
    entry = {
        "what": what,
        "module": type(loop).__module__,
        "type": type(loop).__qualname__,
        "loop": number,
    }
    with open(os.environ["LOOP_RECORD"], "a") as file:
        file.write(json.dumps(entry) + "\\n")


@pytest.mark.asyncio
async def test_sleep_and_callbacks():
    async with asyncio.timeout(TIMEOUT):
        record("test_sleep_and_callbacks")
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, "called soon")
        assert await future == "called soon"
        later = loop.create_future()
        loop.call_later(0, later.set_result, "called later")
        assert await later == "called later"


@pytest_asyncio.fixture
async def resource():
    record("resource setup")
    queue = asyncio.Queue()
    await queue.put("from the fixture")
    yield queue
    assert queue.empty()
    record("resource teardown")


@pytest.mark.asyncio
async def test_async_fixture(resource):
    async with asyncio.timeout(TIMEOUT):
        record("test_async_fixture")
        assert await resource.get() == "from the fixture"


@pytest.mark.asyncio
async def test_gather_and_timeout():
    async with asyncio.timeout(TIMEOUT):
        record("test_gather_and_timeout")

        async def double(x):
            await asyncio.sleep(0)
            return 2 * x

        assert await asyncio.gather(*(double(i) for i in range(5))) == [0, 2, 4, 6, 8]

        async def fail():
            await asyncio.sleep(0)
            raise ValueError("failed")

        results = await asyncio.gather(double(1), fail(), return_exceptions=True)
        assert results[0] == 2 and isinstance(results[1], ValueError)

        never = asyncio.Event()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(EXPIRING):
                await never.wait()
        async with asyncio.timeout(TIMEOUT) as scope:
            await asyncio.sleep(0)
        assert not scope.expired()


@pytest.mark.asyncio
async def test_tcp_server():
    async with asyncio.timeout(TIMEOUT):
        record("test_tcp_server")
        handled = []

        async def handle(reader, writer):
            try:
                while line := await reader.readline():
                    writer.write(b"echo:" + line)
                    await writer.drain()
                handled.append(True)
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            host, port = server.sockets[0].getsockname()[:2]
            assert host == "127.0.0.1"

            async def client(i):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    answers = []
                    for j in range(3):
                        writer.write(f"client {i} line {j}\\n".encode())
                        await writer.drain()
                        answers.append(await reader.readline())
                    writer.write_eof()
                    assert await reader.read() == b""
                    return answers
                finally:
                    writer.close()
                    await writer.wait_closed()

            answers = await asyncio.gather(*(client(i) for i in range(4)))
            for i, lines in enumerate(answers):
                assert lines == [f"echo:client {i} line {j}\\n".encode() for j in range(3)]
            while len(handled) < 4:
                await asyncio.sleep(0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_state():
    record("shared_state setup")
    state = {"loop": asyncio.get_running_loop(), "visits": 0}
    yield state
    assert state["visits"] == 2
    record("shared_state teardown")


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_first(shared_state):
    async with asyncio.timeout(TIMEOUT):
        record("test_module_loop_first")
        assert asyncio.get_running_loop() is shared_state["loop"]
        shared_state["visits"] += 1
        # A task left running here is still there for the next test on this loop.
        shared_state["task"] = asyncio.get_running_loop().create_task(asyncio.Event().wait())


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_second(shared_state):
    async with asyncio.timeout(TIMEOUT):
        record("test_module_loop_second")
        assert asyncio.get_running_loop() is shared_state["loop"]
        shared_state["visits"] += 1
        task = shared_state.pop("task")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
'''

CHILD_TEST_NAMES = [
    "test_sleep_and_callbacks",
    "test_async_fixture",
    "test_gather_and_timeout",
    "test_tcp_server",
    "test_module_loop_first",
    "test_module_loop_second",
]

CHILD_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
"""

# The configuration's conftest.py, per loop kind; None for no conftest.py.
CONFTESTS = {
    "loop_factories_hook": {
        "asyncio": """
            import asyncio

            def pytest_asyncio_loop_factories(config, item):
                return {"asyncio": asyncio.SelectorEventLoop}
        """,
        "ferroloop": """
            import ferroloop

            def pytest_asyncio_loop_factories(config, item):
                return {"ferroloop": ferroloop.new_event_loop}
        """,
    },
    "event_loop_policy_fixture": {
        "asyncio": """
            import asyncio
            import pytest

            @pytest.fixture(scope="session")
            def event_loop_policy():
                return asyncio.DefaultEventLoopPolicy()
        """,
        "ferroloop": """
            import ferroloop
            import pytest

            @pytest.fixture(scope="session")
            def event_loop_policy():
                return ferroloop.EventLoopPolicy()
        """,
    },
    "command_line": {"asyncio": None, "ferroloop": None},
}

# pytest-asyncio's own deprecation of the fixture override; any other warning is an error.
POLICY_FIXTURE_DEPRECATION = (
    'ignore:Overriding the "event_loop_policy" fixture is deprecated'
    ":pytest.PytestDeprecationWarning"
)


# asyncio's (and ferroloop's) deprecation of the policy API, 3.14+.
POLICY_API_DEPRECATION = (
    "ignore:.* is deprecated and slated for removal in Python 3.16:DeprecationWarning"
)


@pytest.mark.parametrize("configuration", list(CONFTESTS))
def test_pytest_asyncio_module(loop_kind, run_python, tmp_path, configuration):
    """Every test of the unchanged module passes, on the loop under test."""
    project = tmp_path / "project"
    project.mkdir()
    ini = CHILD_INI
    if configuration == "event_loop_policy_fixture":
        ini += f"    {POLICY_FIXTURE_DEPRECATION}\n"
        if sys.version_info >= (3, 14):
            # The fixture hands pytest-asyncio a policy, an API 3.14 deprecates: the
            # fixture's asyncio.DefaultEventLoopPolicy / ferroloop.EventLoopPolicy and
            # the plugin's set_event_loop_policy() calls warn, on both loops alike.
            ini += f"    {POLICY_API_DEPRECATION}\n"
    (project / "pytest.ini").write_text(ini)
    conftest_source = CONFTESTS[configuration][loop_kind]
    if conftest_source is not None:
        (project / "conftest.py").write_text(textwrap.dedent(conftest_source))
    (project / "test_unchanged.py").write_text(CHILD_TESTS)
    record = tmp_path / "loops.jsonl"
    report = tmp_path / "report.xml"

    pytest_args = ("-p", "no:cacheprovider", "-v", f"--junitxml={report}", "test_unchanged.py")
    if configuration == "command_line" and loop_kind == "ferroloop":
        argv = ("-m", "ferroloop", "-m", "pytest", *pytest_args)
    else:
        argv = ("-m", "pytest", *pytest_args)
    proc = run_python(*argv, cwd=str(project), env={"LOOP_RECORD": str(record)})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    # pytest-asyncio ran the module, and saw the configuration.
    version = importlib.metadata.version("pytest-asyncio")
    assert f"asyncio-{version}" in output, output
    assert "asyncio_default_fixture_loop_scope=function" in output, output

    suite = ET.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": len(CHILD_TEST_NAMES), "failures": 0, "errors": 0, "skipped": 0}
    assert sorted(case.get("name") for case in suite.iter("testcase")) == sorted(
        CHILD_TEST_NAMES
    ), output

    entries = [json.loads(line) for line in record.read_text().splitlines()]
    for entry in entries:
        if loop_kind == "ferroloop":
            assert entry["module"].startswith("ferroloop"), entry
            assert entry["type"] == "Loop", entry
        else:
            assert entry["module"] == "asyncio.unix_events", entry
            assert entry["type"] == "_UnixSelectorEventLoop", entry
    loops = {entry["what"]: entry["loop"] for entry in entries}
    assert [entry["what"] for entry in entries] == [
        "test_sleep_and_callbacks",
        "resource setup",
        "test_async_fixture",
        "resource teardown",
        "test_gather_and_timeout",
        "test_tcp_server",
        "shared_state setup",
        "test_module_loop_first",
        "test_module_loop_second",
        "shared_state teardown",
    ]
    # Function-scoped loops: one per test, shared with that test's fixtures.
    assert loops["resource setup"] == loops["test_async_fixture"] == loops["resource teardown"]
    function_loops = [
        loops[name]
        for name in (
            "test_sleep_and_callbacks",
            "test_async_fixture",
            "test_gather_and_timeout",
            "test_tcp_server",
        )
    ]
    # A module-scoped loop: shared by the module's tests and fixture that ask for it.
    module_loop = loops["shared_state setup"]
    assert (
        loops["test_module_loop_first"]
        == loops["test_module_loop_second"]
        == loops["shared_state teardown"]
        == module_loop
    )
    assert sorted(function_loops + [module_loop]) == list(range(5))
