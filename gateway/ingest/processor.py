"""What happens to one HL7 v2 message, start to ACK, inside a unit of work.

parse -> duplicate check -> map -> apply intents -> events -> message log -> ACK.
Everything it writes (resources, index rows, the log entry, outbox events) is in
the caller's transaction; the caller sends the ACK only after the commit.  Every
message, processed or not, leaves a message-log row with its raw text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gateway.hl7v2.ack import build_ack, generic_reject, issue_from_parse_error, reply_code
from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import Message, ParseError, parse_message
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingError
from gateway.store.apply_intents import apply_intents
from gateway.store.hooks import WriteRejected, run_after_changes
from gateway.store.unit_of_work import UnitOfWork, dumps, fhir_instant

log = logging.getLogger("gateway.ingest")

# Error codes (HL7 table 0357) that mean "we do not take this kind of message" -> AR.
REJECT_CODES = {200, 201, 202, 203}


@dataclass(slots=True)
class Inbound:
    """One message as it arrived."""

    raw: bytes
    transport: str  # mllp | http | file | reprocess
    peer: str = ""
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    replay_of: int | None = None
    # message: a whole message to process.  oversize: the head of a message over the
    # size limit (answered AR).  fragment: bytes outside any frame (kept, never ACKed).
    kind: str = "message"
    note: str = ""
    size: int = 0
    # Parse and map results, filled by MessageProcessor.prepare (no database needed),
    # so that work can run on the event loop while the writer thread is in SQLite.
    prepared: tuple[Any, Any] | None = None


@dataclass(slots=True)
class Processed:
    ack: str
    ack_code: str
    outcome: str  # processed | warning | error | rejected | duplicate
    log_id: int | None = None
    touched: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    charset: str = "utf-8"  # the ACK goes back in the message's own character set (MSH-18)

    @property
    def ack_bytes(self) -> bytes:
        return self.ack.encode(self.charset, errors="replace")


def raw_text(raw: bytes) -> str:
    """Raw bytes as storable text: UTF-8 where it is, escapes where it is not (nothing dropped)."""
    return raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


def sender_key(msg: Message) -> str:
    return f"{msg.sending_application}|{msg.sending_facility}"


def source_uri(msg: Message) -> str:
    """meta.source for resources written from this sender's feed."""
    app = msg.sending_application or "unknown"
    facility = msg.sending_facility or "unknown"
    return f"urn:hl7v2:{app}:{facility}".replace(" ", "_")


class MessageProcessor:
    def __init__(self, mapping: MappingEngine) -> None:
        self.mapping = mapping

    def process(self, uow: UnitOfWork, inbound: Inbound) -> Processed:
        if inbound.kind == "oversize":
            return self._oversize(uow, inbound)
        if inbound.kind == "fragment":
            log_id = self._log(uow, inbound, msg=None, outcome="fragment", ack="", ack_code="", accepted=False,
                               error=f"bytes outside an MLLP frame ({inbound.note}); not acknowledged",
                               touched=[], raw=raw_text(inbound.raw))
            return Processed("", "", "fragment", log_id)
        msg, result = self.prepare(inbound)
        if isinstance(msg, ParseError):
            return self._rejected_unparsed(uow, inbound, msg)
        if not msg.control_id:
            issue = Issue("E", 101, "MSH-10 message control id is empty", segment="MSH", field=10)
            return self._finish(uow, inbound, msg, "AR", [issue], "rejected")
        duplicate = self._duplicate_of(uow, msg)
        if duplicate is not None:
            return self._duplicate(uow, inbound, msg, duplicate)
        if isinstance(result, MappingError):
            code = "AR" if any(i.code in REJECT_CODES for i in result.issues) else "AE"
            return self._finish(uow, inbound, msg, code, result.issues, "rejected" if code == "AR" else "error")
        if isinstance(result, Exception):  # a mapping bug must not lose the message
            issue = Issue("E", 207, f"internal mapping error: {type(result).__name__}: {result}")
            return self._finish(uow, inbound, msg, "AE", [issue], "error")
        issues = list(result.issues)
        if result.errors:
            return self._finish(uow, inbound, msg, "AE", issues, "error")
        try:
            with uow.savepoint():
                applied = apply_intents(uow, result, source=source_uri(msg))
                run_after_changes(uow)
                issues += applied.issues
                warn = any(i.severity == "W" for i in issues)
                return self._finish(uow, inbound, msg, "AA", issues, "warning" if warn else "processed",
                                    touched=applied.touched, accepted=True)
        except WriteRejected as exc:  # a business rule refused (e.g. closing a referral with open concerns)
            uow.changes.clear()
            issue = Issue("E", 207, f"refused: {exc.message}" + (f" ({', '.join(exc.expression)})"
                                                                 if exc.expression else ""))
            return self._finish(uow, inbound, msg, "AE", issues + [issue], "error")
        except Exception as exc:
            if _is_unique_violation(exc):  # another replica accepted this same message meanwhile
                duplicate = self._duplicate_of(uow, msg)
                if duplicate is not None:
                    return self._duplicate(uow, inbound, msg, duplicate)
            log.exception("storing message %s failed", msg.control_id)
            issue = Issue("E", 207, f"the message could not be stored: {type(exc).__name__}: {exc}")
            uow.changes.clear()
            return self._finish(uow, inbound, msg, "AE", issues + [issue], "error")

    def prepare(self, inbound: Inbound) -> tuple[Any, Any]:
        """Parse and map (pure CPU, no database); errors are returned, not raised."""
        if inbound.prepared is None:
            try:
                msg = parse_message(inbound.raw)
            except ParseError as exc:
                inbound.prepared = (exc, None)
                return inbound.prepared
            try:
                result: Any = self.mapping.map(msg)
            except MappingError as exc:
                result = exc
            except Exception as exc:
                log.exception("mapping failed for %s", msg.control_id)
                result = exc
            inbound.prepared = (msg, result)
        return inbound.prepared

    # --- outcomes -----------------------------------------------------------------------
    def _finish(self, uow: UnitOfWork, inbound: Inbound, msg: Message, code: str, issues: list[Issue],
                outcome: str, *, touched: list[str] | None = None, accepted: bool = False) -> Processed:
        ack = build_ack(msg, code, issues, text=_summary(issues))
        shown = reply_code(msg, code)  # CA/CE/CR in an enhanced-mode commit ACK
        log_id = self._log(uow, inbound, msg=msg, outcome=outcome, ack=ack, ack_code=shown,
                           accepted=accepted, error=_summary([i for i in issues if i.severity != "I"]),
                           touched=touched or [], raw=msg.text)
        return Processed(ack, shown, outcome, log_id, touched or [], issues, msg.enc.charset)

    def _rejected_unparsed(self, uow: UnitOfWork, inbound: Inbound, exc: ParseError) -> Processed:
        reason = str(exc)
        issue = issue_from_parse_error(exc)
        ack = generic_reject(inbound.raw[:4096], reason, code=exc.code, issues=[issue])
        log_id = self._log(uow, inbound, msg=None, outcome="rejected", ack=ack, ack_code="AR",
                           accepted=False, error=reason, touched=[], raw=raw_text(inbound.raw))
        return Processed(ack, "AR", "rejected", log_id, [], [issue])

    def _oversize(self, uow: UnitOfWork, inbound: Inbound) -> Processed:
        """A message over the size limit: AR naming the limit; its head is kept."""
        reason = f"message of {inbound.size} bytes exceeds the maximum of {inbound.note} bytes"
        try:
            msg = parse_message(inbound.raw.split(b"\x1c")[0])
        except ParseError:
            msg = None
        issue = Issue("E", 207, reason, segment="MSH", field=None)
        ack = build_ack(msg, "AR", [issue], text=reason) if msg else generic_reject(inbound.raw[:4096], reason)
        log_id = self._log(uow, inbound, msg=msg, outcome="rejected", ack=ack, ack_code="AR", accepted=False,
                           error=reason + " (only its first bytes are kept)", touched=[],
                           raw=raw_text(inbound.raw))
        return Processed(ack, "AR", "rejected", log_id, [], [issue])

    def _duplicate_of(self, uow: UnitOfWork, msg: Message) -> tuple[int, str, str] | None:
        # The literal (not a bound parameter) lets SQLite use the partial unique index.
        accepted = "accepted = 1" if uow.dialect == "sqlite" else "accepted"
        row = uow.fetchone(f"SELECT id, ack, ack_code FROM message_log WHERE sender_key=? AND control_id=? "
                           f"AND {accepted}", (sender_key(msg), msg.control_id))
        return (row[0], row[1], row[2]) if row else None

    def _duplicate(self, uow: UnitOfWork, inbound: Inbound, msg: Message,
                   original: tuple[int, str, str]) -> Processed:
        original_id, ack, ack_code = original
        log_id = self._log(uow, inbound, msg=msg, outcome="duplicate", ack=ack, ack_code=ack_code,
                           accepted=False, error=f"duplicate of message {original_id}; original ACK returned",
                           touched=[], raw=msg.text, replay_of=original_id)
        return Processed(ack, ack_code, "duplicate", log_id, charset=msg.enc.charset)

    def _log(self, uow: UnitOfWork, inbound: Inbound, *, msg: Message | None, outcome: str, ack: str,
             ack_code: str, accepted: bool, error: str, touched: list[str], raw: str,
             replay_of: int | None = None) -> int | None:
        values: dict[str, Any] = {
            "received_at": fhir_instant(inbound.received_at),
            "transport": inbound.transport,
            "peer": inbound.peer[:100],
            "sender_application": msg.sending_application[:200] if msg else "",
            "sender_facility": msg.sending_facility[:200] if msg else "",
            "sender_key": sender_key(msg)[:400] if msg else "",
            "control_id": msg.control_id[:200] if msg else "",
            "message_type": f"{msg.message_code}^{msg.trigger_event}"[:40] if msg else "",
            "message_time": msg.message_datetime[:40] if msg else "",
            "outcome": outcome,
            "ack_code": ack_code,
            "accepted": accepted,
            "error": error,
            "resources": dumps(touched),
            "raw": raw,
            "ack": ack,
            "replay_of": replay_of if replay_of is not None else inbound.replay_of,
        }
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        query = f"INSERT INTO message_log ({columns}) VALUES ({marks})"
        if uow.dialect == "postgresql":
            row = uow.fetchone(query + " RETURNING id", tuple(values.values()))
            return row[0] if row else None
        cur = uow.execute(query, tuple(values.values()))
        return cur.lastrowid


def _summary(issues: list[Issue]) -> str:
    return "; ".join(i.text for i in issues if i.severity in ("E", "W"))[:2000]


def _is_unique_violation(exc: Exception) -> bool:
    name = type(exc).__name__
    text = str(exc).lower()
    return name in ("IntegrityError", "UniqueViolation") or "unique constraint" in text
