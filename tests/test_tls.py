"""TLS connections on both loops: the transport's interface, what the user's SSLContext
decides (ALPN, SNI, client certificates, session reuse, post-handshake auth), start_tls,
flow control both ways, BufferedProtocol apps, SSLObject subclasses, garbage collection.

Each test runs on stock asyncio and on ferroloop and asserts what stock does.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ssl
import sys
import weakref

import pytest
from conftest import run_on
from tls_certs import SERVER_NAME, make_certs

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def run(loop_factory, coro_fn, *args):
    return run_on(loop_factory, coro_fn, *args, timeout=TIMEOUT)


async def echo_server(context, **kwargs):
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context, **kwargs)
    return server, server.sockets[0].getsockname()[1]


def payload(size: int) -> bytes:
    return hashlib.shake_256(b"ferroloop").digest(size)


def test_transport_interface(loop_factory, certs):
    async def main():
        server, port = await echo_server(certs.server_context())
        context = certs.client_context()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=SERVER_NAME
        )
        transport = writer.transport
        facts = {
            "is Transport": isinstance(transport, asyncio.Transport),
            "class name": type(transport).__name__,
            "has _ssl_protocol": transport._ssl_protocol is not None,
            "ssl_object": type(transport.get_extra_info("ssl_object")).__name__,
            "sslcontext is ours": transport.get_extra_info("sslcontext") is context,
            "peercert subject": transport.get_extra_info("peercert")["subject"],
            "cipher": transport.get_extra_info("cipher"),
            "compression": transport.get_extra_info("compression"),
            "socket": transport.get_extra_info("socket") is not None,
            "peername": transport.get_extra_info("peername")[1] == port,
            "missing": transport.get_extra_info("no such thing", "default"),
            "write limits": transport.get_write_buffer_limits(),
            "read limits": transport.get_read_buffer_limits(),
            "read size": transport.get_read_buffer_size(),
            "write size": transport.get_write_buffer_size(),
            "is_reading": transport.is_reading(),
            "can_write_eof": transport.can_write_eof(),
            "start_tls compatible": transport._start_tls_compatible,
        }
        transport.set_write_buffer_limits(high=1000)
        transport.set_read_buffer_limits(high=4000)
        facts["new limits"] = (
            transport.get_write_buffer_limits(),
            transport.get_read_buffer_limits(),
        )
        with pytest.raises(TypeError) as info:
            transport.write("text")
        facts["write(str)"] = str(info.value)
        with pytest.raises(ValueError) as info:
            transport.set_write_buffer_limits(high=1, low=2)
        facts["bad limits"] = str(info.value)
        transport.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
        facts["echo"] = await reader.readexactly(3)
        writer.close()
        await writer.wait_closed()
        facts["closing"] = transport.is_closing()
        server.close()
        await server.wait_closed()
        return facts

    facts = run(loop_factory, main)
    assert facts == {
        "is Transport": True,
        "class name": "_SSLProtocolTransport",
        "has _ssl_protocol": True,
        "ssl_object": "SSLObject",
        "sslcontext is ours": True,
        "peercert subject": ((("commonName", SERVER_NAME),),),
        "cipher": facts["cipher"],
        "compression": None,
        "socket": True,
        "peername": True,
        "missing": "default",
        "write limits": (512 * 1024 // 4, 512 * 1024),
        "read limits": (256 * 1024 // 4, 256 * 1024),
        "read size": 0,
        "write size": 0,
        "is_reading": True,
        "can_write_eof": False,
        "start_tls compatible": True,
        "new limits": ((250, 1000), (1000, 4000)),
        "write(str)": "data: expecting a bytes-like instance, got str",
        "bad limits": "high (1) must be >= low (2) must be >= 0",
        "echo": b"abc",
        "closing": True,
    }
    assert facts["cipher"][1] == "TLSv1.3"


@pytest.mark.parametrize("size", [1, 1024, 16 * 1024 + 1, 1024 * 1024])
def test_echo_sizes(loop_factory, certs, size):
    async def main():
        server, port = await echo_server(certs.server_context())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=certs.client_context(), server_hostname=SERVER_NAME
        )
        data = payload(size)
        writer.write(data)
        echoed = await reader.readexactly(size)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return echoed == data

    assert run(loop_factory, main)


def test_alpn_and_sni(loop_factory, certs):
    async def main():
        seen = []
        server_context = certs.server_context()
        server_context.set_alpn_protocols(["h2", "http/1.1"])
        server_context.sni_callback = lambda sslobj, name, ctx: seen.append(name)
        server, port = await echo_server(server_context)
        client_context = certs.client_context()
        client_context.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname=SERVER_NAME
        )
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return alpn, seen

    assert run(loop_factory, main) == ("http/1.1", [SERVER_NAME])


def test_client_certificate(loop_factory, certs):
    async def main():
        peers = []

        async def handler(reader, writer):
            peers.append(writer.get_extra_info("peercert"))
            writer.write(b"hi")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(
            handler, "127.0.0.1", 0, ssl=certs.server_context(require_client_cert=True)
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=certs.client_context(with_client_cert=True),
            server_hostname=SERVER_NAME,
        )
        greeting = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return greeting, peers[0]["subject"]

    greeting, subject = run(loop_factory, main)
    assert greeting == b"hi"
    assert subject == ((("commonName", "ferroloop test client"),),)


def test_session_reuse(loop_factory, certs):
    """A context that resumes the previous session (TLS 1.2, whose session exists once
    the handshake is done): resumption is the SSLObject's own business."""

    class Resuming(ssl.SSLContext):
        session = None

        def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None):
            return super().wrap_bio(
                incoming, outgoing, server_side, server_hostname, session=self.session
            )

    async def main():
        server_context = certs.server_context()
        server_context.maximum_version = ssl.TLSVersion.TLSv1_2
        server, port = await echo_server(server_context)
        client_context = Resuming(ssl.PROTOCOL_TLS_CLIENT)
        client_context.load_verify_locations(certs.ca)
        reused = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname=SERVER_NAME
            )
            writer.write(b"x")
            await reader.readexactly(1)
            sslobj = writer.get_extra_info("ssl_object")
            reused.append(sslobj.session_reused)
            client_context.session = sslobj.session
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return reused

    assert run(loop_factory, main) == [False, True]


def test_post_handshake_auth(loop_factory, certs):
    async def main():
        result = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            sslobj = writer.get_extra_info("ssl_object")
            before = sslobj.getpeercert()
            sslobj.verify_client_post_handshake()
            writer.write(b"?")  # Carries the certificate request.
            await writer.drain()
            await reader.readexactly(1)  # Read after the client's certificate.
            result.set_result((before, sslobj.getpeercert()["subject"]))
            writer.close()

        server_context = certs.server_context()
        server_context.verify_mode = ssl.CERT_OPTIONAL
        server_context.load_verify_locations(certs.ca)
        server_context.post_handshake_auth = True
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        client_context = certs.client_context(with_client_cert=True)
        client_context.post_handshake_auth = True
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname=SERVER_NAME
        )
        await reader.readexactly(1)
        writer.write(b"!")
        outcome = await result
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return outcome

    before, after = run(loop_factory, main)
    assert before is None
    assert after == ((("commonName", "ferroloop test client"),),)


def test_streams_start_tls_both_sides(loop_factory, certs):
    """StreamWriter.start_tls on the client and on the server (loop.start_tls)."""

    async def main():
        async def handler(reader, writer):
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"OK\n")
            await writer.drain()
            await writer.start_tls(certs.server_context())
            line = await reader.readline()
            writer.write(line.upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        plain = writer.get_extra_info("ssl_object")
        await writer.start_tls(certs.client_context(), server_hostname=SERVER_NAME)
        upgraded = type(writer.get_extra_info("ssl_object")).__name__
        writer.write(b"hello\n")
        answer = await reader.readline()
        rest = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return plain, upgraded, type(writer.transport).__name__, answer, rest

    assert run(loop_factory, main) == (
        None,
        "SSLObject",
        "_SSLProtocolTransport",
        b"HELLO\n",
        b"",
    )


def test_loop_start_tls_returns_app_transport(loop_factory, certs):
    async def main():
        loop = asyncio.get_running_loop()
        server, port = await echo_server(certs.server_context())
        received = asyncio.Queue()

        class Client(asyncio.Protocol):
            def data_received(self, data):
                received.put_nowait(data)

        transport, protocol = await loop.create_connection(Client, "127.0.0.1", port)
        with pytest.raises(TypeError, match="SSLContext, got"):
            await loop.start_tls(transport, protocol, None)
        tls = await loop.start_tls(
            transport, protocol, certs.client_context(), server_hostname=SERVER_NAME
        )
        tls.write(b"ping")
        data = await received.get()
        facts = (
            isinstance(tls, asyncio.Transport),
            tls.get_protocol() is protocol,
            transport.get_protocol() is tls._ssl_protocol,
            data,
        )
        tls.close()
        server.close()
        await server.wait_closed()
        return facts

    assert run(loop_factory, main) == (True, True, True, b"ping")


def test_buffered_app_protocol(loop_factory, certs):
    size = 1024 * 1024 + 7

    async def main():
        loop = asyncio.get_running_loop()
        server, port = await echo_server(certs.server_context())
        done = loop.create_future()

        class Buffered(asyncio.BufferedProtocol):
            def __init__(self):
                self.buffer = bytearray(1000)
                self.view = memoryview(self.buffer)
                self.received = bytearray()
                self.hints = set()

            def get_buffer(self, sizehint):
                self.hints.add(sizehint >= 0)
                return self.view

            def buffer_updated(self, nbytes):
                self.received += self.buffer[:nbytes]
                if len(self.received) >= size and not done.done():
                    done.set_result(None)

        transport, protocol = await loop.create_connection(
            Buffered, "127.0.0.1", port, ssl=certs.client_context(), server_hostname=SERVER_NAME
        )
        transport.write(payload(size))
        await done
        transport.close()
        server.close()
        await server.wait_closed()
        return bytes(protocol.received) == payload(size), protocol.hints

    assert run(loop_factory, main) == (True, {True})


def test_sslobject_subclass_methods_are_called(loop_factory, certs):
    calls = {"read": 0, "write": 0, "do_handshake": 0}

    class Counting(ssl.SSLObject):
        def read(self, len=1024, buffer=None):
            calls["read"] += 1
            return super().read(len, buffer)

        def write(self, data):
            calls["write"] += 1
            return super().write(data)

        def do_handshake(self):
            calls["do_handshake"] += 1
            return super().do_handshake()

    async def main():
        server, port = await echo_server(certs.server_context())
        context = certs.client_context()
        context.sslobject_class = Counting
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=SERVER_NAME
        )
        writer.write(b"x" * 100_000)
        echoed = await reader.readexactly(100_000)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return type(writer.get_extra_info("ssl_object")).__name__, len(echoed)

    assert run(loop_factory, main) == ("Counting", 100_000)
    assert all(count > 0 for count in calls.values()), calls


def test_pause_reading_reaches_the_socket(loop_factory, certs):
    """An app that pauses reading lets undecrypted input pile up to the read high-water
    mark; then the socket transport stops reading. Resuming delivers everything.

    (It pauses in its first data_received(): paused from connection_made(), stock never
    sends a TLS 1.3 client's Finished message, and nothing ever arrives.)"""
    size = 4 * 1024 * 1024

    async def main():
        loop = asyncio.get_running_loop()

        async def sender(reader, writer):
            writer.write(payload(size))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(sender, "127.0.0.1", 0, ssl=certs.server_context())
        port = server.sockets[0].getsockname()[1]
        done = loop.create_future()

        class Slow(asyncio.Protocol):
            received = bytearray()

            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                if not self.received:
                    self.transport.pause_reading()
                self.received += data

            def connection_lost(self, exc):
                done.set_result(exc)

        transport, protocol = await loop.create_connection(
            Slow, "127.0.0.1", port, ssl=certs.client_context(), server_hostname=SERVER_NAME
        )
        raw = transport._ssl_protocol._transport
        while raw.is_reading():
            await asyncio.sleep(0.01)
        delivered = len(protocol.received)
        await asyncio.sleep(0.05)
        high = transport.get_read_buffer_limits()[1]
        facts = {
            "app is_reading": transport.is_reading(),
            "nothing more delivered": len(protocol.received) == delivered < size,
            "buffered at least high": transport.get_read_buffer_size() >= high,
        }
        transport.resume_reading()
        exc = await done
        facts["all delivered"] = bytes(protocol.received) == payload(size)
        facts["lost"] = exc
        server.close()
        await server.wait_closed()
        return facts

    assert run(loop_factory, main) == {
        "app is_reading": False,
        "nothing more delivered": True,
        "buffered at least high": True,
        "all delivered": True,
        "lost": None,
    }


def test_pause_writing_from_the_app_protocol(loop_factory, certs):
    async def main():
        loop = asyncio.get_running_loop()
        server, port = await echo_server(certs.server_context())
        events = []

        class Client(asyncio.Protocol):
            def pause_writing(self):
                events.append("pause")

            def resume_writing(self):
                events.append("resume")

        transport, _ = await loop.create_connection(
            Client, "127.0.0.1", port, ssl=certs.client_context(), server_hostname=SERVER_NAME
        )
        # With high=0, a buffer of 0 bytes is "at the high-water mark" (pause) while
        # unpaused, and "at the low one" (resume) while paused; every write checks.
        steps = []
        transport.set_write_buffer_limits(high=0)
        steps.append(list(events))
        transport.write(b"x")
        steps.append(list(events))
        transport.write(b"y")
        steps.append(list(events))
        transport.close()
        server.close()
        await server.wait_closed()
        return steps

    assert run(loop_factory, main) == [
        ["pause"],
        ["pause", "resume"],
        ["pause", "resume", "pause"],
    ]


def test_context_freed_after_close(loop_factory, certs):
    async def main():
        server, port = await echo_server(certs.server_context())
        context = certs.client_context()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=SERVER_NAME
        )
        writer.write(b"x")
        await reader.readexactly(1)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        del reader, writer
        return weakref.ref(context)

    ref = run(loop_factory, main)
    gc.collect()
    assert ref() is None


def test_set_protocol_switches_delivery(loop_factory, certs):
    async def main():
        loop = asyncio.get_running_loop()
        server, port = await echo_server(certs.server_context())
        first, second = asyncio.Queue(), asyncio.Queue()

        class Into(asyncio.Protocol):
            def __init__(self, queue):
                self.queue = queue

            def data_received(self, data):
                self.queue.put_nowait(data)

        transport, _ = await loop.create_connection(
            lambda: Into(first),
            "127.0.0.1",
            port,
            ssl=certs.client_context(),
            server_hostname=SERVER_NAME,
        )
        transport.write(b"one")
        got_first = await first.get()
        replacement = Into(second)
        transport.set_protocol(replacement)
        transport.write(b"two")
        got_second = await second.get()
        facts = (got_first, got_second, transport.get_protocol() is replacement)
        transport.close()
        server.close()
        await server.wait_closed()
        return facts

    assert run(loop_factory, main) == (b"one", b"two", True)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.11+")
def test_write_after_close_is_dropped_with_warnings(loop_factory, certs, caplog):
    async def main():
        server, port = await echo_server(certs.server_context())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=certs.client_context(), server_hostname=SERVER_NAME
        )
        transport = writer.transport
        transport.close()
        for _ in range(8):
            transport.write(b"late")
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()

    run(loop_factory, main)
    warnings = [r for r in caplog.records if r.getMessage() == "SSL connection is closed"]
    assert len(warnings) == 3
