"""A small asyncio program run on ferroloop: the README's "main job".

It exercises what most programs use — tasks and TaskGroup, timers and timeouts, a
queue-based pipeline, contextvars, a thread pool and ``asyncio.to_thread``, and a TCP
server with streams clients — and prints what it observed, so a reader can see
ferroloop is the loop doing the work.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time

import ferroloop

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def checksum(data: bytes) -> str:
    """A blocking function, run in the default executor."""
    return hashlib.sha256(data).hexdigest()[:12]


async def worker(name: str, queue: asyncio.Queue[int], results: list[tuple[str, int]]) -> None:
    while True:
        item = await queue.get()
        request_id.set(f"{name}:{item}")
        await asyncio.sleep(0.001)
        results.append((request_id.get(), item * item))
        queue.task_done()


async def pipeline() -> list[tuple[str, int]]:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=8)
    results: list[tuple[str, int]] = []
    workers = [asyncio.create_task(worker(f"w{i}", queue, results)) for i in range(4)]
    for item in range(40):
        await queue.put(item)
    await queue.join()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return results


async def handle_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A line-based upper-casing server: one reply per line, until the client's EOF."""
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port: int, name: str, lines: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(lines):
        writer.write(f"{name} line {i}\n".encode())
    await writer.drain()
    writer.write_eof()
    replies = [reply async for reply in reader]
    writer.close()
    await writer.wait_closed()
    return replies


async def tcp_round_trip() -> int:
    server = await asyncio.start_server(handle_client, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        replies = await asyncio.gather(*(client(port, f"c{n}", 100) for n in range(20)))
    for n, lines in enumerate(replies):
        assert lines == [f"C{n} LINE {i}\n".encode() for i in range(100)]
    return sum(map(len, replies))


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(f"running on {type(loop).__module__}.{type(loop).__qualname__}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        sleepers = [group.create_task(asyncio.sleep(0.05, result=i)) for i in range(100)]
    elapsed = time.perf_counter() - started
    print(f"100 concurrent 50 ms sleeps finished in {elapsed * 1000:.0f} ms")
    assert [t.result() for t in sleepers] == list(range(100))

    try:
        async with asyncio.timeout(0.02):
            await asyncio.sleep(10)
    except TimeoutError:
        print("asyncio.timeout fired on time")

    results = await pipeline()
    assert sorted(value for _, value in results) == [i * i for i in range(40)]
    print(f"pipeline processed {len(results)} items with 4 workers; first: {results[0]}")

    digests = await asyncio.gather(
        loop.run_in_executor(None, checksum, b"ferroloop"),
        asyncio.to_thread(checksum, b"asyncio"),
    )
    print(f"executor results: {digests}")

    fired: list[float] = []
    for delay in (0.03, 0.01, 0.02):
        loop.call_later(delay, fired.append, delay)
    await asyncio.sleep(0.05)
    print(f"timers fired in deadline order: {fired}")
    assert fired == [0.01, 0.02, 0.03]

    started = time.perf_counter()
    replies = await tcp_round_trip()
    elapsed = time.perf_counter() - started
    print(f"TCP server: 20 stream clients, {replies} lines echoed in {elapsed * 1000:.0f} ms")


if __name__ == "__main__":
    ferroloop.run(main())
