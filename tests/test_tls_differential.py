"""Differential TLS scenarios: ferroloop against stock asyncio, which is the oracle.

Each scenario puts one end of a connection on the loop under test (TLS client or
server) and drives the other end from a thread with blocking sockets (plain, or wrapped
by ``ssl`` itself), so the peer is the same whatever the loop. It records what the loop
side observes: exceptions (type, message, the ``ssl`` attributes), what reached the
exception handler, what the protocol saw, the bytes delivered. Each scenario runs twice
on stock asyncio and once on ferroloop; the facts both stock runs agree on must be
ferroloop's too, and a scenario also checks that stock really does what it is there to
test (``expect``).

Timing: peers wait on events and bounded socket timeouts, never on fixed sleeps, except
where the scenario is a timeout (handshake and shutdown timeouts, set short).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import socket
import ssl
import threading

import pytest
from conftest import factory_for, run_on
from tls_certs import SERVER_NAME, make_certs

WATCHDOG_TIMEOUT = 120.0
SCENARIO_TIMEOUT = 30.0
PEER_TIMEOUT = 10.0
MISSING = "<missing>"

pytestmark = pytest.mark.usefixtures("watchdog")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def in_thread(fn, *args, **kwargs) -> asyncio.Future:
    """Run the blocking peer ``fn(*args, **kwargs)`` in its own thread; a future of its
    result."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def main():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=main, daemon=True).start()
    return asyncio.wrap_future(future)


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1: (loop side, peer side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    ours.setblocking(False)
    theirs.settimeout(PEER_TIMEOUT)
    return ours, theirs


def describe(exc: BaseException | None) -> dict:
    """What an exception says: type, message, and ssl's attributes where present."""
    if exc is None:
        return {"type": None}
    facts = {"type": type(exc).__name__, "str": str(exc)}
    for name in ("reason", "library", "verify_code", "verify_message", "errno"):
        if hasattr(exc, name):
            facts[name] = getattr(exc, name)
    return facts


def handler_log(loop) -> list:
    """Install an exception handler recording (message, exception type) pairs."""
    calls: list = []

    def handler(loop, context):
        exc = context.get("exception")
        calls.append((context.get("message"), type(exc).__name__ if exc else None))

    loop.set_exception_handler(handler)
    return calls


def recv_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError, OSError):
        pass
    return bytes(data)


def client_hello() -> bytes:
    """The first flight of a TLS client, made with ssl's own MemoryBIO."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = context.wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        sslobj.do_handshake()
    return outgoing.read()


class Recorder(asyncio.Protocol):
    """Records a TLS app protocol's callbacks and the bytes it received."""

    def __init__(self) -> None:
        self.events: list = []
        self.received = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.events.append("connection_made")

    def data_received(self, data) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.received += data

    def eof_received(self):
        self.events.append("eof_received")

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc) -> None:
        self.events.append(("connection_lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


# --------------------------------------------------------------------------------------
# Scenarios: async functions (certs) -> facts; `expect` lists facts stock must show.
# --------------------------------------------------------------------------------------

SCENARIOS: dict = {}


def scenario(**expect):
    def register(fn):
        SCENARIOS[fn.__name__] = (fn, expect)
        return fn

    return register


async def connect_client(sock, context, **kwargs):
    loop = asyncio.get_running_loop()
    return await loop.create_connection(
        Recorder, sock=sock, ssl=context, server_hostname=kwargs.pop("host", SERVER_NAME), **kwargs
    )


@scenario(error_type="ConnectionResetError")
async def client_peer_closes_mid_handshake(certs):
    loop = asyncio.get_running_loop()
    calls = handler_log(loop)
    ours, theirs = pair()

    def peer():
        got = theirs.recv(65536)
        theirs.close()
        return len(got) > 0

    peer_done = in_thread(peer)
    try:
        await connect_client(ours, certs.client_context())
        error = None
    except Exception as exc:
        error = exc
    return {
        "error_type": describe(error)["type"],
        "error": describe(error),
        "peer got a ClientHello": await peer_done,
        "handler": calls,
    }


async def serve_one(certs, sock, **kwargs):
    loop = asyncio.get_running_loop()
    return await loop.connect_accepted_socket(
        Recorder, sock=sock, ssl=certs.server_context(), **kwargs
    )


@scenario(error_type="ConnectionResetError")
async def server_peer_closes_mid_handshake(certs):
    calls = handler_log(asyncio.get_running_loop())
    ours, theirs = pair()
    hello = client_hello()

    def peer():
        theirs.sendall(hello[:20])
        theirs.close()

    peer_done = in_thread(peer)
    try:
        await serve_one(certs, ours)
        error = None
    except Exception as exc:
        error = exc
    await peer_done
    return {"error_type": describe(error)["type"], "error": describe(error), "handler": calls}


@scenario(error_type="SSLError")
async def server_gets_garbage_instead_of_client_hello(certs):
    calls = handler_log(asyncio.get_running_loop())
    ours, theirs = pair()

    def peer():
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return recv_until_eof(theirs)

    peer_done = in_thread(peer)
    try:
        await serve_one(certs, ours)
        error = None
    except Exception as exc:
        error = exc
    answer = await peer_done
    theirs.close()
    return {
        "error_type": describe(error)["type"],
        "error": describe(error),
        "handler": calls,
        "peer received": answer[:64],
    }


def tls_server_peer(certs, theirs, *, then=None, context=None):
    """A blocking TLS server on ``theirs``: handshake, then ``then(tls_socket)``."""
    context = context or certs.server_context()
    try:
        tls = context.wrap_socket(theirs, server_side=True)
    except (ssl.SSLError, OSError) as exc:
        theirs.close()
        return ("handshake failed", type(exc).__name__)
    try:
        return then(tls) if then else None
    finally:
        tls.close()


@scenario(error_type="SSLCertVerificationError")
async def bad_certificate(certs):
    ours, theirs = pair()
    peer_done = in_thread(tls_server_peer, certs, theirs)
    calls = handler_log(asyncio.get_running_loop())
    untrusting = ssl.create_default_context()  # Does not trust the test CA.
    try:
        await connect_client(ours, untrusting)
        error = None
    except Exception as exc:
        error = exc
    return {
        "error_type": describe(error)["type"],
        "error": describe(error),
        "handler": calls,
        "peer": await peer_done,
    }


@scenario(error_type="SSLCertVerificationError")
async def hostname_mismatch(certs):
    ours, theirs = pair()
    peer_done = in_thread(tls_server_peer, certs, theirs)
    calls = handler_log(asyncio.get_running_loop())
    try:
        await connect_client(ours, certs.client_context(), host="wrong.example")
        error = None
    except Exception as exc:
        error = exc
    return {
        "error_type": describe(error)["type"],
        "error": describe(error),
        "handler": calls,
        "peer": await peer_done,
    }


async def stream_client(certs, sock, **kwargs):
    return await asyncio.open_connection(
        sock=sock, ssl=certs.client_context(), server_hostname=SERVER_NAME, **kwargs
    )


async def read_all(reader) -> tuple[bytes, dict]:
    data = bytearray()
    try:
        while chunk := await reader.read(65536):
            data += chunk
        error = None
    except Exception as exc:
        error = exc
    return bytes(data), describe(error)


@scenario(received=b"hello")
async def abrupt_close_without_close_notify(certs):
    ours, theirs = pair()
    calls = handler_log(asyncio.get_running_loop())

    def then(tls):
        tls.sendall(b"hello")
        # End the TCP connection under the TLS session: no close_notify.
        tls.shutdown(socket.SHUT_RDWR)

    peer_done = in_thread(tls_server_peer, certs, theirs, then=then)
    reader, writer = await stream_client(certs, ours)
    received, error = await read_all(reader)
    await peer_done
    writer.close()
    try:
        await writer.wait_closed()
        closed = None
    except Exception as exc:
        closed = exc
    return {
        "received": received,
        "read error": error,
        "at_eof": reader.at_eof(),
        "wait_closed": describe(closed),
        "handler": calls,
    }


@scenario(received=b"hello", **{"peer saw close_notify": True})
async def close_with_close_notify(certs):
    ours, theirs = pair()
    calls = handler_log(asyncio.get_running_loop())

    def then(tls):
        tls.sendall(b"hello")
        tls.unwrap()  # Sends close_notify, waits for the client's.
        return True

    peer_done = in_thread(tls_server_peer, certs, theirs, then=then)
    reader, writer = await stream_client(certs, ours)
    received, error = await read_all(reader)
    peer_saw = await peer_done
    writer.close()
    await writer.wait_closed()
    return {
        "received": received,
        "read error": error,
        "peer saw close_notify": peer_saw,
        "handler": calls,
    }


TEN_MIB = 10 * 1024 * 1024


def pattern(size: int) -> bytes:
    return hashlib.shake_256(b"ferroloop tls").digest(size)


@scenario(**{"peer received": TEN_MIB, "paused at least once": True, "balanced": True})
async def ten_mib_to_a_slow_reader(certs):
    ours, theirs = pair()
    release = threading.Event()

    def then(tls):
        # Do not read until the writer has been paused, then read in small steps.
        release.wait(PEER_TIMEOUT)
        digest = hashlib.sha256()
        count = 0
        try:
            while chunk := tls.recv(4096):
                digest.update(chunk)
                count += len(chunk)
        except ssl.SSLError:
            pass
        return count, digest.hexdigest()

    peer_done = in_thread(tls_server_peer, certs, theirs, then=then)
    transport, protocol = await connect_client(ours, certs.client_context())
    payload = pattern(TEN_MIB)
    view = memoryview(payload)
    for start in range(0, TEN_MIB, 256 * 1024):
        transport.write(view[start : start + 256 * 1024])
        if "pause_writing" in protocol.events:
            release.set()
    release.set()
    while protocol.events.count("pause_writing") > protocol.events.count("resume_writing"):
        await asyncio.sleep(0.01)
    transport.close()
    await protocol.lost
    count, digest = await peer_done
    return {
        "peer received": count,
        "intact": digest == hashlib.sha256(payload).hexdigest(),
        "paused at least once": "pause_writing" in protocol.events,
        "balanced": protocol.events.count("pause_writing")
        == protocol.events.count("resume_writing"),
        "last event": protocol.events[-1],
    }


@scenario(**{"write_eof": "NotImplementedError"})
async def write_eof_over_tls(certs):
    ours, theirs = pair()

    def then(tls):
        return recv_until_eof(tls)

    peer_done = in_thread(tls_server_peer, certs, theirs, then=then)
    reader, writer = await stream_client(certs, ours)
    facts = {"can_write_eof": writer.can_write_eof()}
    try:
        writer.write_eof()
        facts["write_eof"] = None
    except Exception as exc:
        facts["write_eof"] = type(exc).__name__
    writer.write(b"after")
    writer.close()
    await writer.wait_closed()
    facts["peer received"] = await peer_done
    return facts


@scenario(error_type="ConnectionAbortedError")
async def handshake_timeout(certs):
    ours, theirs = pair()
    calls = handler_log(asyncio.get_running_loop())

    def peer():
        theirs.recv(65536)  # The ClientHello, never answered.
        return recv_until_eof(theirs) == b""

    peer_done = in_thread(peer)
    try:
        await connect_client(ours, certs.client_context(), ssl_handshake_timeout=0.2)
        error = None
    except Exception as exc:
        error = exc
    closed = await peer_done
    theirs.close()
    return {
        "error_type": describe(error)["type"],
        "error": describe(error),
        "handler": calls,
        "peer saw the close": closed,
    }


@scenario(lost=("connection_lost", "TimeoutError"))
async def shutdown_timeout(certs):
    ours, theirs = pair()
    calls = handler_log(asyncio.get_running_loop())
    done = threading.Event()

    def then(tls):
        tls.sendall(b"ready")
        done.wait(PEER_TIMEOUT)  # Never answers the close_notify.

    peer_done = in_thread(tls_server_peer, certs, theirs, then=then)
    transport, protocol = await connect_client(
        ours, certs.client_context(), ssl_shutdown_timeout=0.2
    )
    while not protocol.received:
        await asyncio.sleep(0.01)
    transport.close()
    exc = await protocol.lost
    done.set()
    await peer_done
    return {
        "lost": protocol.events[-1],
        "error": describe(exc),
        "events": protocol.events,
        "handler": calls,
    }


@scenario(error_type="CancelledError", **{"peer saw the close": True})
async def cancelled_during_handshake(certs):
    ours, theirs = pair()
    calls = handler_log(asyncio.get_running_loop())
    got_hello = threading.Event()

    def peer():
        theirs.recv(65536)
        got_hello.set()
        return recv_until_eof(theirs) == b""

    peer_done = in_thread(peer)
    task = asyncio.ensure_future(connect_client(ours, certs.client_context()))
    await asyncio.to_thread(got_hello.wait, PEER_TIMEOUT)
    task.cancel()
    try:
        await task
        error = None
    except BaseException as exc:
        error = exc
    closed = await peer_done
    theirs.close()
    return {
        "error_type": type(error).__name__,
        "handler": calls,
        "peer saw the close": closed,
    }


# --------------------------------------------------------------------------------------
# The differential check
# --------------------------------------------------------------------------------------


def run_scenario(kind: str, name: str, certs) -> dict:
    fn, _ = SCENARIOS[name]
    return run_on(factory_for(kind), fn, certs, timeout=SCENARIO_TIMEOUT)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_tls_scenario(name, certs):
    _, expect = SCENARIOS[name]
    stock = [run_scenario("asyncio", name, certs) for _ in range(2)]
    for key, value in expect.items():
        assert [run.get(key, MISSING) for run in stock] == [value, value], (
            f"TEST BUG: stock does not show {key}={value!r} in {name}: {stock}"
        )
    agreed = {k: v for k, v in stock[0].items() if stock[1].get(k, MISSING) == v}
    ours = run_scenario("ferroloop", name, certs)
    differing = sorted(set(stock[0]) - set(agreed))
    assert {k: ours.get(k, MISSING) for k in agreed} == agreed, (
        f"facts that differed between the stock runs (not compared): {differing}"
    )
