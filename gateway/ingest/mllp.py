"""MLLP listener: HL7 v2 messages over TCP, one ACK per message.

MLLP wraps each message as ``0x0B <message> 0x1C 0x0D``.  Hospital feeds keep a
handful of long-lived connections open and push thousands of messages an hour,
and real senders bend the framing (a missing final 0x0D, stray CR/LF before the
end block, junk between frames, frames cut short by a reset).  This module
therefore separates two jobs:

* :class:`MllpDecoder` turns a byte stream into framing events (a message, an
  oversize frame, a fragment that is not a message).  It is pure, synchronous and
  allocation-light: one ``bytearray`` buffer, ``find`` for delimiters, no
  per-byte loops, so a frame split over many reads is never rescanned.
* :class:`MllpServer` runs one asyncio ``Protocol`` per connection that feeds the
  decoder and hands events, strictly in order, to an :class:`MllpHandler` (the
  ingest pipeline).  The ACK of message *n* is written before the handler sees
  message *n + 1*, connections never wait on each other, and reading pauses when a
  pipelining sender gets too far ahead.

Nothing here knows HL7: building the ACK (AA/AE/AR) is the handler's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, cast

__all__ = [
    "END_BLOCK",
    "HEAD_BYTES",
    "START_BLOCK",
    "FrameEvent",
    "MllpDecoder",
    "MllpHandler",
    "MllpServer",
]

logger = logging.getLogger("gateway.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
TRAILER = b"\r"
FRAME_END = END_BLOCK + TRAILER

#: How much of an oversize frame (or a long run of junk) is kept: enough to read
#: MSH and answer with an AR ACK, small enough that a runaway sender costs nothing.
HEAD_BYTES = 64 * 1024

_LINE_ENDS = b"\r\n"

# Event kinds.  Plain strings keep events cheap and easy to log.
MESSAGE = "message"
OVERSIZE = "oversize"
FRAGMENT = "fragment"

# Fragment reasons, passed to MllpHandler.handle_fragment.
OUTSIDE_FRAME = "outside-frame"
UNTERMINATED = "unterminated"
EOF = "eof"
IDLE_TIMEOUT = "idle-timeout"
SHUTDOWN = "shutdown"


class MllpHandler(Protocol):
    """What the listener needs from the ingest pipeline.

    Every method is awaited in the connection's order; the server frames the
    returned ACK bytes itself.
    """

    async def handle_message(self, payload: bytes, peer: str) -> bytes:
        """One message (without 0x0B / 0x1C 0x0D) -> the ACK to send back, unframed."""
        ...

    async def handle_oversize(self, head: bytes, size: int, peer: str) -> bytes:
        """A frame longer than ``max_message_bytes``: its first bytes and total size -> an AR ACK."""
        ...

    async def handle_fragment(self, data: bytes, peer: str, reason: str) -> None:
        """Bytes that are not a complete frame, for the message log.  Never acked."""
        ...


@dataclass(slots=True)
class FrameEvent:
    """One thing the decoder found in the stream.

    ``kind`` is ``"message"`` (``data`` is the payload), ``"oversize"`` (``data``
    is the head, ``size`` the frame's full length) or ``"fragment"`` (``data`` is
    the stray bytes, ``reason`` says why they are not a message).
    """

    kind: str
    data: bytes
    size: int = 0
    reason: str = ""


class MllpDecoder:
    """Incremental MLLP de-framer, tolerant of what real senders do.

    * The 0x1C end block alone ends a frame; the 0x0D after it is optional (some
      senders omit it, and waiting for it would deadlock a sender that is itself
      waiting for the ACK).  Outside a frame, whitespace is ignored silently.
    * Stray CR/LF before the end block are folded into one CR, the HL7 segment
      terminator, so ``...\\r\\n<FS><CR>`` yields ``...\\r``.
    * Non-whitespace bytes outside frames become an ``outside-frame`` fragment.
    * A 0x0B inside a frame means the sender gave up on it and started again:
      the partial frame becomes an ``unterminated`` fragment.
    * A frame longer than ``max_message_bytes`` is not buffered: only its first
      :data:`HEAD_BYTES` are kept, the rest is counted and dropped until its end
      block, then one ``oversize`` event is emitted.
    """

    def __init__(self, max_message_bytes: int = 1024 * 1024) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._in_frame = False
        # Where the next delimiter search starts, so a frame split over many reads
        # is scanned once, not once per read.
        self._scan = 0
        # Oversize frame being discarded: its head and the bytes seen so far.
        self._discard_head: bytearray | None = None
        self._discard_size = 0

    @property
    def pending(self) -> bool:
        """True when a frame (or junk) has started but not finished."""
        return self._in_frame or self._discard_head is not None or bool(self._buf.strip())

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Consume ``data`` and return the events it completes, in stream order."""
        events: list[FrameEvent] = []
        if self._discard_head is not None:
            data = self._discard(data, events)
            if not data:
                return events
        buf = self._buf
        buf += data
        pos = 0  # start of unconsumed bytes; inside a frame, the first payload byte
        while True:
            if not self._in_frame:
                start = buf.find(START_BLOCK, self._scan)
                if start < 0:
                    pos = self._hold_junk(pos, events)
                    break
                self._report_junk(buf, pos, start, events)
                pos = self._scan = start + 1
                self._in_frame = True
            end = buf.find(END_BLOCK, self._scan)
            restart = buf.find(START_BLOCK, self._scan, end if end >= 0 else len(buf))
            if restart >= 0:
                events.append(FrameEvent(FRAGMENT, bytes(buf[pos:restart]), reason=UNTERMINATED))
                pos = self._scan = restart + 1
                continue
            if end < 0:
                if len(buf) - pos > self.max_message_bytes:
                    self._start_discard(bytes(buf[pos : pos + HEAD_BYTES]), len(buf) - pos)
                    buf.clear()
                    self._in_frame = False
                    self._scan = 0
                    return events
                self._scan = len(buf)
                break
            events.append(self._complete(buf, pos, end))
            self._in_frame = False
            pos = self._scan = _after_end_block(buf, end)
        if pos:
            del buf[:pos]
            self._scan -= pos
        return events

    def finish(self, reason: str = EOF) -> list[FrameEvent]:
        """The stream ended (or is being closed): report whatever is left.

        A frame cut short becomes a fragment with ``reason``; a frame whose end
        block arrived but whose trailing 0x0D did not was already delivered.
        """
        events: list[FrameEvent] = []
        buf = self._buf
        if self._discard_head is not None:
            events.append(FrameEvent(FRAGMENT, bytes(self._discard_head), size=self._discard_size, reason=reason))
        elif self._in_frame and buf:
            events.append(FrameEvent(FRAGMENT, bytes(buf), size=len(buf), reason=reason))
        elif buf.strip():
            events.append(FrameEvent(FRAGMENT, bytes(buf), size=len(buf), reason=OUTSIDE_FRAME))
        self._reset()
        return events

    def _reset(self) -> None:
        self._buf.clear()
        self._in_frame = False
        self._scan = 0
        self._discard_head = None
        self._discard_size = 0

    def _complete(self, buf: bytearray, start: int, end: int) -> FrameEvent:
        """The frame ``buf[start:end]`` is complete: a message, or oversize."""
        size = end - start
        if size > self.max_message_bytes:
            return FrameEvent(OVERSIZE, bytes(buf[start : min(end, start + HEAD_BYTES)]), size=size)
        return FrameEvent(MESSAGE, _payload(buf, start, end))

    def _hold_junk(self, pos: int, events: list[FrameEvent]) -> int:
        """No frame start in the buffer: keep the junk until a 0x0B shows where it ends.

        Returns the new consumed position.  Whitespace (the CR after an end block,
        a sender's newline between frames) is dropped at once; a long run of junk
        is reported and dropped so it cannot grow the buffer without bound.
        """
        buf = self._buf
        self._scan = len(buf)  # nothing before here can hold a 0x0B
        if len(buf) - pos > HEAD_BYTES or not buf[pos:].strip():
            self._report_junk(buf, pos, len(buf), events)
            return len(buf)
        return pos

    @staticmethod
    def _report_junk(buf: bytearray, start: int, end: int, events: list[FrameEvent]) -> None:
        if end > start and buf[start:end].strip():
            junk = bytes(buf[start:end])
            events.append(FrameEvent(FRAGMENT, junk[:HEAD_BYTES], size=len(junk), reason=OUTSIDE_FRAME))

    def _start_discard(self, head: bytes, size: int) -> None:
        self._discard_head = bytearray(head)
        self._discard_size = size

    def _discard(self, data: bytes, events: list[FrameEvent]) -> bytes:
        """Drop an oversize frame's bytes until its end; return what follows it."""
        head = self._discard_head
        assert head is not None
        end = data.find(END_BLOCK)
        restart = data.find(START_BLOCK, 0, end if end >= 0 else len(data))
        if restart < 0 and end < 0:  # still inside the oversize frame
            self._extend_discard(data, len(data))
            return b""
        self._extend_discard(data, restart if restart >= 0 else end)
        if restart >= 0:
            event = FrameEvent(FRAGMENT, bytes(head), size=self._discard_size, reason=UNTERMINATED)
            rest = data[restart:]
        else:
            event = FrameEvent(OVERSIZE, bytes(head), size=self._discard_size)
            rest = data[_after_end_block(data, end) :]
        events.append(event)
        self._discard_head = None
        self._discard_size = 0
        return rest


    def _extend_discard(self, data: bytes, stop: int) -> None:
        """Count ``data[:stop]`` as part of the oversize frame, topping up its head."""
        head = self._discard_head
        assert head is not None
        if len(head) < HEAD_BYTES:
            head += data[: min(stop, HEAD_BYTES - len(head))]
        self._discard_size += stop


def _after_end_block(data: bytes | bytearray, end: int) -> int:
    """Index just past the end block at ``end`` and its 0x0D trailer, when present."""
    after = end + 1
    return after + 1 if data[after : after + 1] == TRAILER else after


def _payload(buf: bytearray, start: int, end: int) -> bytes:
    """The frame's bytes with any run of trailing CR/LF folded into one CR."""
    if end - start >= 2 and buf[end - 1] == 0x0D and buf[end - 2] not in _LINE_ENDS:
        return bytes(buf[start:end])  # the normal case: ends in exactly one CR
    stop = end
    while stop > start and buf[stop - 1] in _LINE_ENDS:
        stop -= 1
    return bytes(buf[start:stop]) + b"\r" if stop < end else bytes(buf[start:end])


def _frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + FRAME_END


class _Connection(asyncio.Protocol):
    """One MLLP connection: decode, queue, and handle events strictly in order.

    Events are queued by ``data_received`` and drained by one task per
    connection, created only while there is work, so an idle connection costs no
    task and a busy one costs no per-message synchronisation.
    """

    #: Pause reading when this many frames are waiting for the handler, resume at the low mark.
    HIGH_WATER = 64
    LOW_WATER = 16

    def __init__(self, server: MllpServer) -> None:
        self._server = server
        self._handler = server.handler
        self._loop = asyncio.get_running_loop()
        self._decoder = MllpDecoder(server.max_message_bytes)
        self._events: deque[FrameEvent] = deque()
        self._transport: asyncio.Transport | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None  # set while the transport's buffer is full
        self._close_when_drained = False
        self._lost = False
        self._last_activity = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.done: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = _peer_name(transport.get_extra_info("peername"))
        logger.debug("MLLP connection from %s", self.peer)
        self._server._connected(self)
        self._arm_idle_timer(self._server.idle_timeout)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        self._server._bytes_in += len(data)
        if self._close_when_drained:
            return  # closing: bytes that arrive now are not read, the sender will resend
        events = self._decoder.feed(data)
        if events:
            self._enqueue(events)

    def eof_received(self) -> bool:
        """The sender half-closed: still answer what it already sent, then close."""
        self._stop_reading(EOF)
        return True  # keep the transport open for the ACKs still owed

    def connection_lost(self, exc: Exception | None) -> None:
        logger.debug("MLLP connection from %s closed%s", self.peer, f": {exc}" if exc else "")
        self._lost = True
        self._cancel_idle_timer()
        if self._decoder.pending:
            self._enqueue(self._decoder.finish(EOF))
        self._drop_unanswerable()
        self._wake_writer()
        self._finish_if_done()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # -- queue and drain --------------------------------------------------------------

    def _enqueue(self, events: list[FrameEvent]) -> None:
        self._events.extend(events)
        if (
            not self._reading_paused
            and len(self._events) >= self.HIGH_WATER
            and self._transport is not None
            and not self._lost
        ):
            self._transport.pause_reading()
            self._reading_paused = True
        if self._drain_task is None:
            self._drain_task = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Handle queued events one at a time, writing each ACK before the next."""
        events = self._events
        try:
            while events:
                event = events.popleft()
                if self._reading_paused and len(events) <= self.LOW_WATER:
                    self._resume_reading()
                await self._dispatch(event)
                self._last_activity = self._loop.time()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("MLLP handler failed for %s; closing the connection so the sender resends", self.peer)
            events.clear()
            self._close_when_drained = True
        finally:
            self._drain_task = None
            if self._close_when_drained and self._transport is not None and not self._lost:
                self._transport.close()
            self._finish_if_done()

    async def _dispatch(self, event: FrameEvent) -> None:
        server = self._server
        if event.kind == MESSAGE:
            server._messages += 1
            ack = await self._handler.handle_message(event.data, self.peer)
            await self._write_ack(ack)
        elif event.kind == OVERSIZE:
            server._oversize += 1
            logger.warning("MLLP frame of %d bytes from %s exceeds %d bytes; rejected",
                           event.size, self.peer, server.max_message_bytes)
            ack = await self._handler.handle_oversize(event.data, event.size, self.peer)
            await self._write_ack(ack)
        else:
            server._fragments += 1
            size = event.size or len(event.data)
            logger.warning("MLLP: %d bytes from %s skipped (%s)", size, self.peer, event.reason)
            await self._handler.handle_fragment(event.data, self.peer, event.reason)

    async def _write_ack(self, ack: bytes) -> None:
        if self._writable is not None:
            await self._writable  # the peer is not reading its ACKs; wait rather than buffer without bound
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            logger.debug("MLLP: ACK for %s dropped, connection gone", self.peer)
            return
        transport.write(_frame(ack))

    def _drop_unanswerable(self) -> None:
        """The peer is gone: messages not yet started cannot be acked, so do not store them.

        The sender saw no ACK and will resend; storing them now would only make
        duplicates.  Fragments are kept, they go to the message log.
        """
        if any(e.kind != FRAGMENT for e in self._events):
            kept = [e for e in self._events if e.kind == FRAGMENT]
            logger.debug("MLLP: %d queued messages from %s dropped, connection gone",
                         len(self._events) - len(kept), self.peer)
            self._events.clear()
            self._events.extend(kept)

    # -- closing ----------------------------------------------------------------------

    def _stop_reading(self, reason: str) -> None:
        """Read nothing more; answer what is queued, report any partial frame, then close."""
        if self._close_when_drained:
            return
        self._close_when_drained = True
        self._cancel_idle_timer()
        transport = self._transport
        if transport is not None and not self._lost and not self._reading_paused:
            try:
                transport.pause_reading()
            except RuntimeError:  # already closing
                pass
            self._reading_paused = True
        leftover = self._decoder.finish(reason)
        if leftover:
            self._enqueue(leftover)
        elif self._drain_task is None and transport is not None and not self._lost:
            transport.close()

    def begin_close(self) -> None:
        """Server shutdown: finish in-flight work and its ACK, then close."""
        self._stop_reading(SHUTDOWN)

    def abort(self) -> None:
        """Grace period over: cancel the handler and drop the connection."""
        self._events.clear()
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self._transport is not None and not self._lost:
            self._transport.abort()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self._transport is not None and not self._lost and not self._close_when_drained:
            self._transport.resume_reading()

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish_if_done(self) -> None:
        if self._lost and self._drain_task is None and not self.done.done():
            self.done.set_result(None)
            self._server._disconnected(self)

    # -- idle timeout -----------------------------------------------------------------

    def _arm_idle_timer(self, delay: float | None) -> None:
        if delay is not None and delay > 0:
            self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _check_idle(self) -> None:
        """Close after ``idle_timeout`` with nothing received and nothing in hand.

        One timer per connection, re-armed for the remaining time, is cheaper than
        resetting a timer on every read.
        """
        self._idle_timer = None
        timeout = self._server.idle_timeout
        assert timeout is not None
        if self._drain_task is not None or self._events:
            self._arm_idle_timer(timeout)  # handling is not idleness
            return
        remaining = self._last_activity + timeout - self._loop.time()
        if remaining > 0:
            self._arm_idle_timer(remaining)
            return
        logger.debug("MLLP connection from %s idle for %.1fs; closing", self.peer, timeout)
        self._stop_reading(IDLE_TIMEOUT)


def _peer_name(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername) if peername else "?"


class MllpServer:
    """The MLLP listener.

    ``await start()`` binds (``port=0`` picks a free port, then :attr:`port`
    tells it); ``await close()`` stops accepting, lets in-flight handling finish
    and its ACK go out, then closes every connection.
    """

    def __init__(
        self,
        handler: MllpHandler,
        host: str = "127.0.0.1",
        port: int = 2575,
        max_message_bytes: int = 1024 * 1024,
        idle_timeout: float | None = 300.0,
    ) -> None:
        self.handler = handler
        self.host = host
        self._port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._messages = 0
        self._bytes_in = 0
        self._oversize = 0
        self._fragments = 0
        self._connections_total = 0

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._closing = False
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self._port)
        sockets = self._server.sockets or ()
        if sockets:
            self._port = sockets[0].getsockname()[1]
        logger.info("MLLP listening on %s:%d", self.host, self._port)

    @property
    def port(self) -> int:
        return self._port

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "messages": self._messages,
            "bytes_in": self._bytes_in,
            "oversize": self._oversize,
            "fragments": self._fragments,
            "connections_total": self._connections_total,
            "active_connections": len(self._connections),
        }

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight handling finish and its ACK be written, then close.

        Connections still busy after ``grace`` seconds are cancelled and aborted;
        their senders saw no ACK and will resend.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()  # new connections are refused from here on
        connections = list(self._connections)
        for conn in connections:
            conn.begin_close()
        pending = {conn.done for conn in connections if not conn.done.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            logger.warning("MLLP: %d connections still busy after %.1fs; aborting", len(pending), grace)
            for conn in list(self._connections):
                conn.abort()
            await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        logger.info("MLLP listener on %s:%d closed", self.host, self._port)

    async def __aenter__(self) -> MllpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connected(self, conn: _Connection) -> None:
        self._connections.add(conn)
        self._connections_total += 1
        if self._closing:
            conn.begin_close()

    def _disconnected(self, conn: _Connection) -> None:
        self._connections.discard(conn)
