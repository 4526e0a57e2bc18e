"""Connects the MLLP listener to the group-commit writer."""

from __future__ import annotations

import logging

from gateway.ingest.processor import Inbound
from gateway.ingest.writer import GroupCommitWriter

log = logging.getLogger("gateway.mllp")


class IngestHandler:
    """MllpHandler: each frame becomes an Inbound for the writer; the ACK comes back
    only after the commit."""

    def __init__(self, writer: GroupCommitWriter, max_message_bytes: int) -> None:
        self.writer = writer
        self.max_message_bytes = max_message_bytes

    async def handle_message(self, payload: bytes, peer: str) -> bytes:
        # Parsing and mapping stay on the writer thread: doing them here, to overlap
        # with SQLite's GIL-free time, was measured slower (GIL hand-offs).
        result = await self.writer.process(Inbound(payload, "mllp", peer))
        return result.ack_bytes

    async def handle_oversize(self, head: bytes, size: int, peer: str) -> bytes:
        log.warning("message of %d bytes from %s exceeds the %d-byte limit", size, peer, self.max_message_bytes)
        result = await self.writer.process(Inbound(head, "mllp", peer, kind="oversize",
                                                   note=str(self.max_message_bytes), size=size))
        return result.ack.encode("utf-8")

    async def handle_fragment(self, data: bytes, peer: str, reason: str) -> None:
        if data.strip(b"\r\n\t \x00"):
            await self.writer.process(Inbound(data, "mllp", peer, kind="fragment", note=reason))
