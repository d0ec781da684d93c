"""ferroloop runs under valgrind, as programs being debugged for memory errors do.

rustix's own vDSO reader crashed every clock read there (valgrind maps no vDSO), so a
``call_later`` was a segfault under valgrind while stock asyncio ran fine. The clock is
read through glibc now; this runs a loop with timers, I/O and threads under valgrind's
null tool (no instrumentation, just its synthetic CPU and memory map).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import SUBPROCESS_TIMEOUT, child_env, unavailable

PROGRAM = """
import asyncio, socket, ferroloop

async def main():
    loop = asyncio.get_running_loop()
    assert loop.time() > 0
    await asyncio.sleep(0.001)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    await loop.sock_sendall(a, b"ping")
    assert await loop.sock_recv(b, 4) == b"ping"
    a.close()
    b.close()
    assert await loop.run_in_executor(None, sum, [1, 2]) == 3
    handle = loop.call_later(10, print)
    handle.cancel()
    return "ok"

print(ferroloop.run(main()))
"""


def test_loop_runs_under_valgrind():
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        unavailable("no valgrind on PATH: install Debian's valgrind package")
    proc = subprocess.run(
        [valgrind, "--tool=none", "--error-exitcode=99", sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=SUBPROCESS_TIMEOUT * 3,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok"
