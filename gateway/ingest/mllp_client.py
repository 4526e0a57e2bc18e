"""MLLP clients: send an HL7 v2 message, wait for its ACK.

Used by ``gateway send``, the tests and the benchmark.  Both clients follow the
ordinary MLLP conversation (one message, then its ACK, then the next message),
which is what integration engines do and what makes a lost ACK mean "resend".

Messages given as ``str`` are normalised the way feeds expect them: line ends
(LF or CRLF, as text files have them) become the HL7 segment terminator CR, and
the text is UTF-8 encoded.  ``bytes`` are sent exactly as given, so tests can
send any byte sequence they like.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from types import TracebackType

from gateway.ingest.mllp import END_BLOCK, FRAME_END, START_BLOCK, MllpDecoder

__all__ = ["AsyncMllpClient", "MllpClient", "decode_ack", "encode_message", "frame", "iter_frames"]

_READ_SIZE = 64 * 1024


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP framing: ``0x0B payload 0x1C 0x0D``."""
    return START_BLOCK + payload + FRAME_END


def iter_frames(data: bytes, max_message_bytes: int = 64 * 1024 * 1024) -> Iterator[bytes]:
    """The payloads of the complete MLLP frames in ``data`` (a capture, a framed file).

    Uses the listener's own decoder, so it is exactly as lenient: bytes outside
    frames and a truncated last frame are skipped.
    """
    decoder = MllpDecoder(max_message_bytes)
    for event in decoder.feed(data):
        if event.kind == "message":
            yield event.data


def encode_message(message: str | bytes) -> bytes:
    """``str`` -> UTF-8 bytes with CR segment terminators; ``bytes`` unchanged."""
    if isinstance(message, bytes):
        return message
    text = message.replace("\r\n", "\r").replace("\n", "\r").rstrip("\r")
    return (text + "\r").encode("utf-8")


def decode_ack(payload: bytes) -> str:
    """ACK bytes -> text: UTF-8, or Latin-1 for senders that answer in 8859/1."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def _take_frame(buffer: bytearray) -> bytes | None:
    """Remove and return the first complete frame's payload from ``buffer``, if there is one.

    Bytes before the start block (the CR trailing the previous ACK) are dropped.
    """
    end = buffer.find(END_BLOCK)
    if end < 0:
        return None
    start = buffer.rfind(START_BLOCK, 0, end)
    payload = bytes(buffer[start + 1 : end])
    stop = end + 1
    if stop < len(buffer) and buffer[stop] == FRAME_END[1]:
        stop += 1
    del buffer[:stop]
    return payload


class MllpClient:
    """Blocking MLLP client.

    >>> with MllpClient("127.0.0.1", 2575) as client:   # doctest: +SKIP
    ...     print(client.send("MSH|^~\\\\&|..."))
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def connect(self) -> None:
        """Open the connection (``send`` does this on first use)."""
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer.clear()

    def send(self, message: str | bytes) -> str:
        """Send one message and return its ACK as text.

        Raises :class:`TimeoutError` when no ACK arrives within ``timeout`` and
        :class:`ConnectionError` when the gateway closes the connection first.
        """
        self.connect()
        assert self._sock is not None
        self._sock.sendall(frame(encode_message(message)))
        return decode_ack(self._read_frame())

    def _read_frame(self) -> bytes:
        assert self._sock is not None
        while (payload := _take_frame(self._buffer)) is None:
            chunk = self._sock.recv(_READ_SIZE)  # socket.timeout is TimeoutError
            if not chunk:
                self.close()
                raise ConnectionError(f"MLLP peer {self.host}:{self.port} closed the connection before the ACK")
            self._buffer += chunk
        return payload

    def __enter__(self) -> MllpClient:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncMllpClient:
    """asyncio MLLP client; the same conversation as :class:`MllpClient`."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buffer = bytearray()

    async def connect(self) -> None:
        """Open the connection (``send`` does this on first use)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        self._buffer.clear()
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def send(self, message: str | bytes) -> str:
        """Send one message and return its ACK as text (see :meth:`MllpClient.send`)."""
        await self.connect()
        assert self._writer is not None
        self._writer.write(frame(encode_message(message)))
        await self._writer.drain()
        return decode_ack(await asyncio.wait_for(self._read_frame(), self.timeout))

    async def _read_frame(self) -> bytes:
        assert self._reader is not None
        while (payload := _take_frame(self._buffer)) is None:
            chunk = await self._reader.read(_READ_SIZE)
            if not chunk:
                await self.close()
                raise ConnectionError(f"MLLP peer {self.host}:{self.port} closed the connection before the ACK")
            self._buffer += chunk
        return payload

    async def __aenter__(self) -> AsyncMllpClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
