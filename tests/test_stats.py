"""``loop.stats()`` against workloads whose counts are known (ferroloop only; the
``slow_callback_duration`` attribute it shares with asyncio is checked on both loops)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from conftest import import_ferroloop

KEYS = {
    "iterations",
    "callbacks",
    "timers_scheduled",
    "timers_fired",
    "timers_cancelled",
    "io_events",
    "poll_seconds",
    "callback_seconds",
    "slow_callbacks",
    "longest_callback_seconds",
    "longest_callback",
    "bytes_read",
    "bytes_written",
    "transports",
    "servers",
    "tasks",
}


@pytest.fixture
def floop():
    loop = import_ferroloop().new_event_loop()
    yield loop
    if not loop.is_closed():
        loop.close()


def test_keys_and_a_fresh_loop(floop):
    stats = floop.stats()
    assert set(stats) == KEYS
    assert all(stats[k] == 0 for k in KEYS - {"longest_callback"})
    assert stats["longest_callback"] is None


def test_callbacks_and_iterations(floop):
    n = 1000
    ran = []
    for i in range(n):
        floop.call_soon(ran.append, i)
    floop.call_soon(floop.stop)
    floop.run_forever()
    assert len(ran) == n
    stats = floop.stats()
    assert stats["callbacks"] == n + 1
    assert stats["iterations"] >= 1
    # Cancelled handles are skipped, not counted as run.
    handles = [floop.call_soon(ran.append, -1) for _ in range(10)]
    for handle in handles:
        handle.cancel()
    floop.call_soon(floop.stop)
    floop.run_forever()
    assert floop.stats()["callbacks"] == n + 2


def test_timers(floop):
    n, cancelled = 200, 50
    fired = []

    async def main():
        loop = asyncio.get_running_loop()
        handles = [loop.call_later(0.001 * (i % 10), fired.append, i) for i in range(n)]
        for handle in handles[:cancelled]:
            handle.cancel()
        while len(fired) < n - cancelled:
            await asyncio.sleep(0.005)

    before = floop.stats()
    floop.run_until_complete(main())
    stats = floop.stats()
    sleeps = stats["timers_scheduled"] - before["timers_scheduled"] - n
    assert sleeps >= 1  # the asyncio.sleep() calls are timers too
    assert stats["timers_fired"] == n - cancelled + sleeps
    assert stats["timers_cancelled"] == cancelled


def test_cancelled_timers_still_in_the_heap(floop):
    handles = [floop.call_later(3600, print) for _ in range(10)]
    for handle in handles[:4]:
        handle.cancel()
    stats = floop.stats()
    assert (stats["timers_scheduled"], stats["timers_cancelled"], stats["timers_fired"]) == (
        10,
        4,
        0,
    )
    floop.close()
    assert floop.stats()["timers_cancelled"] == 4


def test_io_events_and_poll_time(floop):
    a, b = socket.socketpair()
    got = []
    try:

        async def main():
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def readable():
                got.append(a.recv(10))
                loop.remove_reader(a)
                done.set_result(None)

            loop.add_reader(a, readable)
            loop.call_later(0.2, b.send, b"ping")
            await done

        floop.run_until_complete(main())
    finally:
        a.close()
        b.close()
    assert got == [b"ping"]
    stats = floop.stats()
    assert stats["io_events"] >= 1
    # It slept in the poller for most of the 0.2 s (generously: some of it).
    assert stats["poll_seconds"] > 0.05
    assert stats["callback_seconds"] >= 0


def test_slow_callback_counted_and_named(floop):
    floop.slow_callback_duration = 0.1

    def sluggish():
        time.sleep(0.25)
        floop.call_soon(floop.stop)

    floop.call_soon(sluggish)
    floop.run_forever()
    stats = floop.stats()
    assert stats["slow_callbacks"] == 1
    assert "sluggish" in stats["longest_callback"]
    assert stats["longest_callback_seconds"] > 0.1
    assert stats["callback_seconds"] > 0.1


def test_slow_batch_counts_once(floop):
    """Callbacks that ran in the same iteration are measured together (see the README)."""
    floop.slow_callback_duration = 0.1
    floop.call_soon(time.sleep, 0.15)
    floop.call_soon(time.sleep, 0.15)
    floop.call_soon(floop.stop)
    floop.run_forever()
    stats = floop.stats()
    assert stats["slow_callbacks"] == 1
    assert stats["longest_callback"] == "3 callbacks in 1 iterations"


def test_fast_callbacks_are_not_slow(floop):
    floop.slow_callback_duration = 1.0

    async def main():
        for _ in range(1000):
            await asyncio.sleep(0)

    floop.run_until_complete(main())
    assert floop.stats()["slow_callbacks"] == 0


def test_transports_servers_tasks(floop):
    async def main():
        loop = asyncio.get_running_loop()

        async def handle(reader, writer):
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        waiters = [asyncio.create_task(asyncio.sleep(30)) for _ in range(3)]
        await asyncio.sleep(0.01)
        during = loop.stats()
        writer.write(b"x" * 10)
        assert await reader.read(100) == b"x" * 10
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await asyncio.sleep(0.01)
        return during, loop.stats()

    during, after = floop.run_until_complete(main())
    assert during["servers"] == 1 and during["transports"] == 2
    assert during["tasks"] >= 5  # main, the handler, the three sleepers
    assert after["servers"] == 0 and after["transports"] == 0
    assert after["tasks"] == 1  # main itself


def test_bytes_echoed_over_a_transport(floop):
    n = 100_000

    async def main():
        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"y" * n)
        writer.write_eof()
        received = 0
        while data := await reader.read(65536):
            received += len(data)
        writer.close()
        server.close()
        await server.wait_closed()
        return received

    assert floop.run_until_complete(main()) == n
    stats = floop.stats()
    # Each byte crosses two transports each way: client out, server in, server out, client in.
    assert stats["bytes_read"] == 2 * n
    assert stats["bytes_written"] == 2 * n


def test_bytes_of_datagrams_and_pipes(floop):
    """Datagram and pipe transports count their bytes too."""

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    async def main():
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        got = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.set_result(data)

        client, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname")
        )
        client.sendto(b"d" * 1000)
        assert await got == b"d" * 1000
        client.close()
        server.close()
        before = floop.stats()
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate(b"p" * 5000)
        assert out == b"p" * 5000
        return before

    before = floop.run_until_complete(main())
    after = floop.stats()
    # A datagram each way through the two endpoints: 2 sends, 2 receives.
    assert before["bytes_read"] == 2000 and before["bytes_written"] == 2000
    assert after["bytes_read"] - before["bytes_read"] == 5000
    assert after["bytes_written"] - before["bytes_written"] == 5000


def test_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 2
    assert loop.slow_callback_duration == 2
    assert type(loop.slow_callback_duration) is int
