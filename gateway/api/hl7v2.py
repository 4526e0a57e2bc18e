"""HL7 v2 over HTTP and the message log.

``POST /hl7v2`` takes one ER7 message and answers with its ACK — the same
processing, log and group commit as MLLP.  The ACK is always the body with status
200 (an AE/AR is an answer, not a transport failure), so integration engines read
MSA-1 as they do over MLLP; only a request that is not HL7 at all (wrong media
type) gets a 415.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.api.errors import FhirError
from gateway.api.responses import FhirResponse
from gateway.ingest.processor import Inbound
from gateway.store.reading import read_only
from gateway.store.unit_of_work import loads

router = APIRouter()

HL7_MEDIA_TYPES = ("application/hl7-v2", "x-application/hl7-v2+er7", "application/edi-hl7", "text/plain",
                   "application/octet-stream", "x-application/hl7-v2")


@router.post("/hl7v2")
async def receive(request: Request) -> Response:
    content_type = request.headers.get("content-type", "application/hl7-v2").split(";")[0].strip().lower()
    if content_type and content_type not in HL7_MEDIA_TYPES:
        raise FhirError(415, f"send one ER7 message as application/hl7-v2 or x-application/hl7-v2+er7, "
                             f"not {content_type}", code="not-supported")
    body = await request.body()
    peer = f"{request.client.host}:{request.client.port}" if request.client else "http"
    result = await request.app.state.writer.process(Inbound(body, "http", peer))
    media = content_type if content_type in ("application/hl7-v2", "x-application/hl7-v2+er7") \
        else "application/hl7-v2"
    return Response(result.ack.encode("utf-8"), media_type=f"{media}; charset=utf-8",
                    headers={"X-HL7-Ack-Code": result.ack_code, "X-Message-Log-Id": str(result.log_id or "")})


_SUMMARY_COLUMNS = ("id", "received_at", "transport", "peer", "sender_application", "sender_facility",
                    "control_id", "message_type", "message_time", "outcome", "ack_code", "error", "resources",
                    "replay_of")


def _summary(row: tuple) -> dict[str, Any]:
    item = dict(zip(_SUMMARY_COLUMNS, row))
    item["resources"] = loads(item["resources"] or "[]")
    return item


@router.get("/hl7v2/messages")
def list_messages(request: Request, outcome: str | None = Query(None), control_id: str | None = Query(None),
                  limit: int = Query(100, ge=1, le=1000), before: int | None = Query(None)) -> Response:
    """Newest first.  ``outcome=error`` also returns rejected messages: both need attention."""
    where, args = [], []
    if outcome:
        wanted = ["error", "rejected"] if outcome == "error" else outcome.split(",")
        where.append(f"outcome IN ({','.join('?' for _ in wanted)})")
        args += wanted
    if control_id:
        where.append("control_id = ?")
        args.append(control_id)
    if before:
        where.append("id < ?")
        args.append(before)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    with read_only(request.app.state.engine) as uow:
        rows = uow.fetchall(f"SELECT {', '.join(_SUMMARY_COLUMNS)} FROM message_log {clause} "
                            f"ORDER BY id DESC LIMIT ?", args + [limit])
    items = [_summary(r) for r in rows]
    return FhirResponse({"messages": items, "count": len(items),
                         "next_before": items[-1]["id"] if len(items) == limit else None})


@router.get("/hl7v2/messages/{message_id}")
def get_message(message_id: int, request: Request) -> Response:
    with read_only(request.app.state.engine) as uow:
        row = uow.fetchone(f"SELECT {', '.join(_SUMMARY_COLUMNS)}, raw, ack FROM message_log WHERE id=?",
                           (message_id,))
    if row is None:
        raise FhirError(404, f"message {message_id} is not in the log", code="not-found")
    item = _summary(row[:-2])
    item["raw"] = row[-2]
    item["ack"] = row[-1]
    return FhirResponse(item)
