"""The MLLP listener and clients, exercised through real TCP sockets on 127.0.0.1.

The handler here is a stand-in for the ingest pipeline: it answers ``ACK:<MSH-10>``
so every ACK can be matched to its message, and records what it was given.
Control ids drive its behaviour: ``SLOW*`` sleeps, ``BOOM*`` raises.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.ingest.mllp import MllpDecoder, MllpServer
from gateway.ingest.mllp_client import AsyncMllpClient, MllpClient, frame, iter_frames

HOST = "127.0.0.1"
FRAME_END = b"\x1c\r"


def hl7(control_id: str, *, pad: int = 0) -> bytes:
    """A small SIU-ish message whose MSH-10 is ``control_id``."""
    return (
        f"MSH|^~\\&|PAS|RXX|GATEWAY|LA|20240101120000||SIU^S12|{control_id}|P|2.5.1\r"
        f"PID|1||{control_id}^^^NHS||Doe^Jane{'X' * pad}\r"
    ).encode()


def msh10(payload: bytes) -> bytes:
    return payload.split(b"\r", 1)[0].split(b"|")[9]


class RecordingHandler:
    """Fake ingest pipeline: ``ACK:<MSH-10>``, and a record of everything it saw."""

    def __init__(self, slow_seconds: float = 0.5) -> None:
        self.slow_seconds = slow_seconds
        self.messages: list[bytes] = []
        self.oversize: list[tuple[bytes, int]] = []
        self.fragments: list[tuple[bytes, str]] = []
        self.slow_started = asyncio.Event()
        self._in_flight: dict[str, int] = {}
        self.max_in_flight_per_peer = 0

    async def handle_message(self, payload: bytes, peer: str) -> bytes:
        control_id = msh10(payload)
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        self.max_in_flight_per_peer = max(self.max_in_flight_per_peer, self._in_flight[peer])
        try:
            if control_id.startswith(b"BOOM"):
                raise RuntimeError("handler blew up")
            if control_id.startswith(b"SLOW"):
                self.slow_started.set()
                await asyncio.sleep(self.slow_seconds)
            elif control_id.startswith(b"YIELD"):
                await asyncio.sleep(0.005 * (int(control_id[5:]) % 3))
            self.messages.append(payload)
            return b"ACK:" + control_id
        finally:
            self._in_flight[peer] -= 1

    async def handle_oversize(self, head: bytes, size: int, peer: str) -> bytes:
        self.oversize.append((head, size))
        return b"AR:" + msh10(head) + b":" + str(size).encode()

    async def handle_fragment(self, data: bytes, peer: str, reason: str) -> None:
        self.fragments.append((data, reason))


StartServer = Callable[..., Awaitable[MllpServer]]


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
async def start_server(handler: RecordingHandler) -> AsyncIterator[StartServer]:
    servers: list[MllpServer] = []

    async def start(**options: Any) -> MllpServer:
        server = MllpServer(handler, host=HOST, port=0, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close(grace=1.0)


@pytest.fixture
async def server(start_server: StartServer) -> MllpServer:
    return await start_server()


Connect = Callable[[MllpServer], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Raw TCP connections to a server, closed at the end of the test."""
    writers: list[asyncio.StreamWriter] = []

    async def open_raw(server: MllpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writers.append(writer)
        return reader, writer

    yield open_raw
    for writer in writers:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def read_ack(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """One framed ACK's payload."""
    data = await asyncio.wait_for(reader.readuntil(FRAME_END), timeout)
    assert data.startswith(b"\x0b"), data
    return data[1:-2]


async def read_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the server closed the connection (EOF or reset) within ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionError:
        return True


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- framing ---------------------------------------------------------------------------


async def test_single_message(server: MllpServer, handler: RecordingHandler) -> None:
    async with AsyncMllpClient(HOST, server.port) as client:
        assert await client.send(hl7("MSG1")) == "ACK:MSG1"
    assert handler.messages == [hl7("MSG1")]
    assert server.stats["messages"] == 1


async def test_frame_split_into_one_byte_writes(
    connect: Connect, server: MllpServer, handler: RecordingHandler
) -> None:
    reader, writer = await connect(server)
    for byte in frame(hl7("TINY")):
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.001)  # give each byte its own read on the server
    assert await read_ack(reader) == b"ACK:TINY"
    assert handler.messages == [hl7("TINY")]
    writer.close()


async def test_three_frames_in_one_write(connect: Connect, server: MllpServer) -> None:
    reader, writer = await connect(server)
    writer.write(frame(hl7("A")) + frame(hl7("B")) + frame(hl7("C")))
    assert [await read_ack(reader) for _ in range(3)] == [b"ACK:A", b"ACK:B", b"ACK:C"]
    writer.close()


async def test_tolerant_endings(connect: Connect, server: MllpServer, handler: RecordingHandler) -> None:
    """Stray CR/LF before the end block, and an end block with no 0x0D (also at EOF)."""
    reader, writer = await connect(server)
    stray = hl7("STRAY") + b"\n"
    writer.write(b"\x0b" + stray + b"\x1c\r")
    writer.write(b"\x0b" + hl7("NOCR") + b"\x1c")  # next frame follows directly
    writer.write(b"\x0b" + hl7("LAST") + b"\x1c")
    writer.write_eof()
    assert [await read_ack(reader) for _ in range(3)] == [b"ACK:STRAY", b"ACK:NOCR", b"ACK:LAST"]
    assert handler.messages == [hl7("STRAY"), hl7("NOCR"), hl7("LAST")]  # LF folded into the final CR
    assert await read_closed(reader)
    assert handler.fragments == []


async def test_junk_outside_frames_is_skipped_and_reported(
    connect: Connect, server: MllpServer, handler: RecordingHandler
) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET / HTTP/1.0" + frame(hl7("J1")) + b"\r\n" + b"noise" + frame(hl7("J2")) + b"\n")
    assert [await read_ack(reader), await read_ack(reader)] == [b"ACK:J1", b"ACK:J2"]
    await eventually(lambda: len(handler.fragments) == 2)
    assert handler.fragments == [(b"GET / HTTP/1.0", "outside-frame"), (b"\r\nnoise", "outside-frame")]
    assert server.stats["fragments"] == 2
    writer.close()


async def test_new_start_block_inside_frame_reports_unterminated(
    connect: Connect, server: MllpServer, handler: RecordingHandler
) -> None:
    reader, writer = await connect(server)
    writer.write(b"\x0bMSH|^~\\&|half a message")
    await writer.drain()
    await asyncio.sleep(0.02)
    writer.write(frame(hl7("WHOLE")))
    assert await read_ack(reader) == b"ACK:WHOLE"
    await eventually(lambda: bool(handler.fragments))
    assert handler.fragments == [(b"MSH|^~\\&|half a message", "unterminated")]
    writer.close()


async def test_truncated_frame_then_close_is_reported(
    connect: Connect, server: MllpServer, handler: RecordingHandler
) -> None:
    reader, writer = await connect(server)
    writer.write(frame(hl7("OK")) + b"\x0b" + hl7("CUT")[:30])
    assert await read_ack(reader) == b"ACK:OK"
    writer.close()
    await eventually(lambda: bool(handler.fragments))
    assert handler.fragments == [(hl7("CUT")[:30], "eof")]
    assert handler.messages == [hl7("OK")]
    await eventually(lambda: server.active_connections == 0)


@pytest.mark.parametrize("chunk", [None, 700], ids=["one-write", "700-byte-writes"])
async def test_oversize_frame_gets_reply_and_connection_survives(
    connect: Connect, start_server: StartServer, handler: RecordingHandler, chunk: int | None
) -> None:
    server = await start_server(max_message_bytes=1000)
    big = hl7("BIG", pad=5000)
    data = frame(big)
    reader, writer = await connect(server)
    for i in range(0, len(data), chunk or len(data)):
        writer.write(data[i : i + (chunk or len(data))])
        await writer.drain()
        await asyncio.sleep(0.005)
    assert await read_ack(reader) == b"AR:BIG:" + str(len(big)).encode()
    head, size = handler.oversize[0]
    assert size == len(big) and big.startswith(head) and len(head) > 1000
    assert handler.messages == []
    writer.write(frame(hl7("SMALL")))
    assert await read_ack(reader) == b"ACK:SMALL"
    assert server.stats["oversize"] == 1
    writer.close()


# -- concurrency and ordering ---------------------------------------------------------


async def test_many_concurrent_connections(server: MllpServer, handler: RecordingHandler) -> None:
    async def feed(connection: int) -> list[tuple[str, str]]:
        async with AsyncMllpClient(HOST, server.port) as client:
            pairs = []
            for i in range(20):
                control_id = f"C{connection}-{i}"
                pairs.append((control_id, await client.send(hl7(control_id))))
            return pairs

    results = await asyncio.gather(*(feed(c) for c in range(50)))
    for pairs in results:
        for control_id, ack in pairs:
            assert ack == f"ACK:{control_id}"
    assert len(handler.messages) == 1000
    assert server.stats["messages"] == 1000
    assert server.stats["connections_total"] == 50


async def test_pipelined_acks_come_back_in_order(
    connect: Connect, server: MllpServer, handler: RecordingHandler
) -> None:
    """A sender that does not wait: ACKs in message order, one handler call at a time.

    200 frames also exceed the listener's read-pause threshold, so back-pressure
    (pause/resume reading) is exercised.
    """
    reader, writer = await connect(server)
    for i in range(10):  # separate reads arriving while the handler is still busy
        writer.write(frame(hl7(f"YIELD{i}")))
        await writer.drain()
        await asyncio.sleep(0.002)
    assert [await read_ack(reader) for _ in range(10)] == [f"ACK:YIELD{i}".encode() for i in range(10)]
    writer.write(b"".join(frame(hl7(f"P{i}")) for i in range(200)))
    assert [await read_ack(reader) for _ in range(200)] == [f"ACK:P{i}".encode() for i in range(200)]
    assert handler.max_in_flight_per_peer == 1
    writer.close()


async def test_slow_handler_does_not_block_other_connections(connect: Connect, server: MllpServer) -> None:
    slow_reader, slow_writer = await connect(server)
    slow_writer.write(frame(hl7("SLOW1")))
    started = time.monotonic()
    async with AsyncMllpClient(HOST, server.port) as client:
        for i in range(5):
            assert await client.send(hl7(f"FAST{i}")) == f"ACK:FAST{i}"
    assert time.monotonic() - started < 0.3
    assert await read_ack(slow_reader) == b"ACK:SLOW1"
    slow_writer.close()


async def test_handler_exception_closes_only_that_connection(
    connect: Connect, server: MllpServer, handler: RecordingHandler
) -> None:
    async with AsyncMllpClient(HOST, server.port) as other:
        assert await other.send(hl7("BEFORE")) == "ACK:BEFORE"
        reader, writer = await connect(server)
        writer.write(frame(hl7("BOOM1")) + frame(hl7("AFTERBOOM")))
        assert await read_closed(reader)
        assert await other.send(hl7("AFTER")) == "ACK:AFTER"
    assert msh10(handler.messages[-1]) == b"AFTER"
    assert all(msh10(m) != b"AFTERBOOM" for m in handler.messages)  # dropped with the connection
    async with AsyncMllpClient(HOST, server.port) as fresh:
        assert await fresh.send(hl7("NEW")) == "ACK:NEW"


async def test_queued_messages_are_dropped_when_the_sender_resets(
    connect: Connect, server: MllpServer, handler: RecordingHandler
) -> None:
    """No ACK can reach a reset sender, which will resend: storing its queue would make duplicates."""
    handler.slow_seconds = 0.2
    reader, writer = await connect(server)
    writer.write(frame(hl7("SLOW-RST")) + frame(hl7("QUEUED1")) + frame(hl7("QUEUED2")))
    await asyncio.wait_for(handler.slow_started.wait(), 2.0)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST, not FIN
    await eventually(lambda: server.active_connections == 0)
    assert [msh10(m) for m in handler.messages] == [b"SLOW-RST"]  # in flight when the reset came


# -- timeouts and shutdown ------------------------------------------------------------


async def test_idle_timeout_closes_connection(
    connect: Connect, start_server: StartServer, handler: RecordingHandler
) -> None:
    handler.slow_seconds = 0.5
    server = await start_server(idle_timeout=0.3)
    reader, writer = await connect(server)
    writer.write(frame(hl7("SLOW-BUSY")))  # handling longer than the timeout is not idleness
    assert await read_ack(reader) == b"ACK:SLOW-BUSY"
    writer.write(b"\x0bMSH|partial")
    started = time.monotonic()
    assert await read_closed(reader, timeout=2.0)
    assert 0.2 < time.monotonic() - started < 1.5
    await eventually(lambda: bool(handler.fragments))
    assert handler.fragments == [(b"MSH|partial", "idle-timeout")]
    await eventually(lambda: server.active_connections == 0)


async def test_graceful_close_finishes_in_flight_and_refuses_new(
    connect: Connect, start_server: StartServer, handler: RecordingHandler
) -> None:
    server = await start_server()
    reader, writer = await connect(server)
    writer.write(frame(hl7("SLOW-CLOSE")))
    await asyncio.wait_for(handler.slow_started.wait(), 2.0)
    started = time.monotonic()
    closing = asyncio.create_task(server.close(grace=5.0))
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        await connect(server)
    assert not closing.done()
    assert await read_ack(reader) == b"ACK:SLOW-CLOSE"
    await asyncio.wait_for(closing, 5.0)
    assert time.monotonic() - started > 0.3
    assert await read_closed(reader)
    assert server.active_connections == 0


async def test_close_aborts_after_grace(connect: Connect, start_server: StartServer, handler: RecordingHandler) -> None:
    handler.slow_seconds = 5.0
    server = await start_server()
    reader, writer = await connect(server)
    writer.write(frame(hl7("SLOW-FOREVER")))
    await asyncio.wait_for(handler.slow_started.wait(), 2.0)
    started = time.monotonic()
    await server.close(grace=0.2)
    assert time.monotonic() - started < 1.5
    assert await read_closed(reader)
    assert handler.messages == []


# -- clients --------------------------------------------------------------------------


async def test_sync_client_normalises_line_ends(server: MllpServer, handler: RecordingHandler) -> None:
    text = hl7("SYNC").decode().replace("\r", "\r\n")

    def send_both() -> list[str]:
        with MllpClient(HOST, server.port, timeout=5.0) as client:
            return [client.send(text), client.send(hl7("SYNC2"))]

    assert await asyncio.to_thread(send_both) == ["ACK:SYNC", "ACK:SYNC2"]
    assert handler.messages == [hl7("SYNC"), hl7("SYNC2")]


async def test_sync_client_timeout(server: MllpServer) -> None:
    def send_slow() -> str:
        with MllpClient(HOST, server.port, timeout=0.1) as client:
            return client.send(hl7("SLOW-TIMEOUT"))

    with pytest.raises(TimeoutError):
        await asyncio.to_thread(send_slow)


async def test_async_client_reports_closed_connection(server: MllpServer) -> None:
    async with AsyncMllpClient(HOST, server.port, timeout=5.0) as client:
        assert await client.send("MSH|^~\\&|PAS|RXX|GW|LA|20240101||ADT^A04|ASYNC|P|2.5.1\nPID|1\n") == "ACK:ASYNC"
        with pytest.raises(ConnectionError):
            await client.send(hl7("BOOM2"))


def test_iter_frames_and_decoder_limits() -> None:
    stream = b"junk" + frame(b"one\r") + b"\r\n" + frame(b"two\r") + b"\x0bcut"
    assert list(iter_frames(stream)) == [b"one\r", b"two\r"]

    decoder = MllpDecoder(max_message_bytes=10)
    events = decoder.feed(b"\x0b" + b"x" * 8)
    assert events == []
    events = decoder.feed(b"y" * 100_000 + b"\x1c\r\x0bok\x1c\r")
    assert [(e.kind, e.size) for e in events] == [("oversize", 100_008), ("message", 0)]
    assert len(events[0].data) == 64 * 1024 and events[1].data == b"ok"
    assert decoder.finish() == []


def test_decoder_oversize_frame_abandoned_for_a_new_one() -> None:
    decoder = MllpDecoder(max_message_bytes=10)
    assert decoder.feed(b"\x0bMSH|" + b"z" * 20) == []  # over the limit: now discarding
    events = decoder.feed(b"z" * 5 + b"\x0bnext\x1c")
    assert [(e.kind, e.reason, e.size) for e in events] == [("fragment", "unterminated", 29), ("message", "", 0)]
    assert events[0].data == b"MSH|" + b"z" * 25 and events[1].data == b"next"
