"""HL7 v2 acknowledgements (ACK messages) for what the gateway received.

One ACK per message, in the sender's own encoding characters, so that an engine
configured for ``#$%@!`` separators can read our reply as easily as one on
``|^~\\&``.  Every text we put into the ACK goes through the message's
:meth:`Encoding.escape_text`, so an error message such as ``PID-3 "A|B"`` cannot
break the ACK's own structure.

Original vs enhanced acknowledgement mode
-----------------------------------------
A message is in *original* mode when MSH-15 (accept ACK type) and MSH-16
(application ACK type) are both empty; the reply is then an application ACK with
MSA-1 AA, AE or AR.

When either is valued the sender asked for *enhanced* mode.  The gateway commits
the message to its store before it replies (an AA always means "stored"), so the
commit and the application processing have both happened by the time we answer.
We therefore send exactly one reply, chosen like this:

* MSH-15 empty or ``NE`` (no commit ACK wanted) and MSH-16 ``AL``, ``ER`` or
  ``SU``: an application ACK, MSA-1 AA/AE/AR.
* anything else (a commit ACK was asked for, or MSH-16 is empty/``NE``): a
  commit ACK, MSA-1 CA/CE/CR for AA/AE/AR.  We never send a second,
  application-level ACK message back on our own initiative.

The ``ER``/``SU`` conditions of MSH-16 are not used to *suppress* the reply: an
MLLP sender blocks until it reads one, so it always gets one.

ERR segments
------------
One ERR per :class:`~gateway.hl7v2.errors.Issue`:

* ERR-1 (ELD, the v2.3 form, still read by older engines): ``SEG^seq^field^code&text&HL70357``
* ERR-2 (ERL): ``SEG^seq^field^repetition^component``, only the parts we know
* ERR-3 (CWE): ``code^table-0357 text^HL70357``
* ERR-4: severity E, W or I
* ERR-8: the human-readable message (on one line: ``\\.br\\`` belongs in FT fields only)

The ACK echoes the sender's MSH-12, and before v2.5 the ERR segment has only ERR-1.
For v2.1-v2.4 senders (common among UK PAS feeds) the ERR is therefore ERR-1 alone,
with the human-readable message as the text of its code (``SEG^seq^field^code&message&HL70357``),
which is where those engines show it.

Warnings (severity W or I) may accompany an AA.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import datetime

from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import (
    DEFAULT_ENCODING,
    Encoding,
    Message,
    ParseError,
    decode_bytes,
    parse_message,
    read_encoding,
)

__all__ = [
    "ACK_CODES",
    "TABLE_0357",
    "ack_code_of",
    "ack_mode",
    "build_ack",
    "generic_reject",
    "issue_from_parse_error",
]

ACK_CODES = frozenset({"AA", "AE", "AR"})
_COMMIT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}
_APPLICATION_ACK_TYPES = frozenset({"AL", "ER", "SU"})

# HL7 table 0357, message error condition codes.
TABLE_0357 = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_DEFAULT_TEXT = {
    "AA": "Message accepted",
    "AE": "Message not processed: application error",
    "AR": "Message rejected",
}
DEFAULT_VERSION = "2.5.1"
MSA3_MAX = 80  # MSA-3 is ST(80) in v2.5


def ack_mode(msg: Message) -> str:
    """``"enhanced"`` when MSH-15 or MSH-16 is valued, else ``"original"``."""
    return "enhanced" if (msg.msh.raw(15).strip() or msg.msh.raw(16).strip()) else "original"


def reply_code(msg: Message | None, code: str) -> str:
    """The MSA-1 to send for an outcome ``code`` (AA/AE/AR), given the sender's ACK mode."""
    if msg is None or ack_mode(msg) == "original":
        return code
    accept = msg.accept_ack_type.strip()
    application = msg.application_ack_type.strip()
    if accept in ("", "NE") and application in _APPLICATION_ACK_TYPES:
        return code
    return _COMMIT_CODES[code]


def new_control_id() -> str:
    """A fresh MSH-10 (20 characters fit MSH-10 even in v2.3-v2.5, where it is ST(20))."""
    return uuid.uuid4().hex[:20]


def hl7_timestamp(now: datetime | None = None) -> str:
    """``YYYYMMDDHHMMSS+ZZZZ`` in local time (or in ``now``'s own zone when it has one)."""
    if now is None:
        now = datetime.now().astimezone()
    elif now.tzinfo is None:
        now = now.astimezone()  # a naive time is read as local time
    return now.strftime("%Y%m%d%H%M%S%z")


def _location(issue: Issue) -> tuple[list[str], list[str]]:
    """The ERR-1 ELD location (``[SEG, seq, field]``) and the ERR-2 ERL parts
    (``[SEG, seq, field, repetition, component]``, only as far as known); both empty
    when the issue names no segment."""
    if not issue.segment:
        return [], []
    head = [issue.segment, str(issue.sequence or 1)]
    eld = head + [str(issue.field) if issue.field is not None else ""]
    erl = list(head)
    if issue.field is not None:
        erl.append(str(issue.field))
        if issue.component is not None or issue.repetition is not None:
            erl.append(str(issue.repetition) if issue.repetition is not None else "1")
            if issue.component is not None:
                erl.append(str(issue.component))
    return eld, erl


def _is_legacy(version: str) -> bool:
    """True for v2.1-v2.4, whose ERR segment has ERR-1 only."""
    found = re.match(r"\s*2\.(\d+)", version)
    return bool(found) and int(found.group(1)) < 5


def _err_segment(issue: Issue, enc: Encoding, legacy: bool = False) -> str:
    esc = enc.escape_text
    comp, sub = enc.component, enc.subcomponent
    code = str(issue.code)
    table_text = esc(TABLE_0357.get(issue.code, ""))
    eld, erl = _location(issue)
    if legacy:
        # v2.1-v2.4: ERR-1 is all there is, so its code text carries our message.
        text = esc(_one_line(issue.text)) or table_text
        err1 = comp.join([esc(p) for p in eld or ["", "", ""]] + [sub.join((code, text, "HL70357"))])
        return enc.field.join(("ERR", err1))
    err1 = comp.join([esc(p) for p in eld or ["", "", ""]] + [sub.join((code, table_text, "HL70357"))])
    err2 = comp.join(esc(p) for p in erl)
    err3 = comp.join((code, table_text, "HL70357"))
    severity = issue.severity if issue.severity in ("E", "W", "I") else "E"
    return enc.field.join(("ERR", err1, err2, err3, severity, "", "", "", esc(_one_line(issue.text))))


def _one_line(text: str) -> str:
    """Line breaks become spaces: ``\\.br\\`` is only meaningful in FT fields, and ERR-8 (TX)
    and MSA-3 (ST) are read as plain text by most engines."""
    if "\r" in text or "\n" in text:
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text


def _msa_text(code: str, issues: list[Issue], text: str) -> str:
    if not text:
        errors = [i for i in issues if i.severity == "E"]
        text = errors[0].text if errors and code != "AA" else _DEFAULT_TEXT[code]
    text = " ".join(text.split())  # one line
    if len(text) > MSA3_MAX:
        text = text[: MSA3_MAX - 3] + "..."
    return text


def _assemble(enc: Encoding, *, sending_application: str, sending_facility: str,
              receiving_application_raw: str, receiving_facility_raw: str, timestamp: str,
              trigger_raw: str, control_id: str, processing_raw: str, version_raw: str,
              charset_raw: str, code: str, acked_control_raw: str, msa_text: str,
              issues: Iterable[Issue]) -> str:
    fs, comp = enc.field, enc.component
    esc = enc.escape_text
    msh = [
        "MSH",
        enc.msh2,
        esc(sending_application),
        esc(sending_facility),
        receiving_application_raw,
        receiving_facility_raw,
        timestamp,
        "",
        comp.join(("ACK", trigger_raw, "ACK")),
        esc(control_id),
        processing_raw or "P",
        version_raw or DEFAULT_VERSION,
    ]
    if charset_raw:
        msh += ["", "", "", "", "", charset_raw]  # MSH-13..17 empty, MSH-18 echoed
    segments = [fs.join(msh), fs.join(("MSA", code, acked_control_raw, esc(msa_text)))]
    legacy = _is_legacy(msh[11])
    segments.extend(_err_segment(issue, enc, legacy) for issue in issues)
    return "\r".join(segments) + "\r"


def build_ack(msg: Message | None, code: str, issues: Iterable[Issue] = (), *, text: str = "",
              now: datetime | None = None, control_id: str | None = None,
              sending_application: str = "FHIRGW", sending_facility: str = "GATEWAY") -> str:
    """The ACK for ``msg`` (ER7 text, CR segment ends, no MLLP framing).

    ``code`` is the outcome, AA, AE or AR; in enhanced mode it is turned into the
    reply the sender asked for (see the module docstring).  ``msg`` may be None
    when nothing of the message could be read (then :func:`generic_reject` is
    usually the better choice, since it salvages what it can from the raw bytes).
    """
    code = code.upper()
    if code not in ACK_CODES:
        raise ValueError(f"ACK code must be one of AA, AE, AR, not {code!r}")
    issues = list(issues)
    if msg is not None:
        enc = msg.enc
        msh = msg.msh
        receiving_application_raw = msh.raw(3)
        receiving_facility_raw = msh.raw(4)
        msg_type = msh.raw(9).split(enc.repetition)[0].split(enc.component)
        trigger_raw = msg_type[1].split(enc.subcomponent)[0] if len(msg_type) > 1 else ""
        acked_control_raw = msh.raw(10)
        processing_raw = msh.raw(11)
        version_raw = msh.raw(12)
        charset_raw = msh.raw(18)
    else:
        enc = DEFAULT_ENCODING
        receiving_application_raw = receiving_facility_raw = trigger_raw = ""
        acked_control_raw = processing_raw = version_raw = charset_raw = ""
    return _assemble(
        enc,
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application_raw=receiving_application_raw,
        receiving_facility_raw=receiving_facility_raw,
        timestamp=hl7_timestamp(now),
        trigger_raw=trigger_raw,
        control_id=control_id or new_control_id(),
        processing_raw=processing_raw,
        version_raw=version_raw,
        charset_raw=charset_raw,
        code=reply_code(msg, code),
        acked_control_raw=acked_control_raw,
        msa_text=_msa_text(code, issues, text),
        issues=issues,
    )


# --- when the message could not be parsed -------------------------------------------------

_MSH_START = re.compile(r"(?:^|[\r\n\x0b])\s*MSH")


def _salvage_header(raw_head: bytes | str) -> list[str] | None:
    """The MSH fields (index n = MSH-n) of whatever is left of a broken message, re-encoded
    for the default separators (first repetition only), or None when there is no MSH at all.
    When the message's own separators cannot be read, each value is escaped whole."""
    if isinstance(raw_head, (bytes, bytearray, memoryview)):
        text = decode_bytes(bytes(raw_head))[0]
    else:
        text = raw_head
    text = text.lstrip("\ufeff")
    found = _MSH_START.search(text)
    if found is None:
        return None
    line = re.split(r"[\r\n\x1c]", text[found.end() - 3:], maxsplit=1)[0]
    if len(line) < 4:
        return ["MSH"]
    sep = line[3]
    if sep.isalnum() or sep.isspace():
        return ["MSH"]
    parts = line.split(sep)
    fields = ["MSH", sep] + parts[1:]
    try:
        enc = read_encoding(line)
    except ParseError:
        # Separators unreadable: take each value as sent, escaped whole so it cannot break the ACK.
        return fields[:3] + [DEFAULT_ENCODING.escape_text(v) for v in fields[3:]]
    out = fields[:3]
    for raw in fields[3:]:
        # Keep only the first repetition; join components back with default separators.
        rep = raw.split(enc.repetition)[0]
        out.append(DEFAULT_ENCODING.component.join(
            DEFAULT_ENCODING.escape_text(enc.unescape(c.split(enc.subcomponent)[0]))
            for c in rep.split(enc.component)))
    return out


def issue_from_parse_error(exc: ParseError) -> Issue:
    """The ERR-ready form of a :class:`ParseError` (its location and table 0357 code)."""
    return Issue("E", exc.code, str(exc), segment=exc.segment, sequence=exc.sequence, field=exc.field)


def generic_reject(raw_head: bytes | str, reason: str, *, now: datetime | None = None,
                   code: int = 100, issues: Iterable[Issue] | None = None, control_id: str | None = None,
                   sending_application: str = "FHIRGW", sending_facility: str = "GATEWAY") -> str:
    """An AR for a message whose MSH could not be read (or trusted).

    Uses the default separators ``|^~\\&``.  Whatever can be salvaged from the raw
    text is echoed: MSH-10 into MSA-2 (so the sender can match the reply), MSH-3/4
    into MSH-5/6, the trigger event and MSH-12.  The ERR segment says ``reason`` with
    ``code`` (table 0357), located at MSH; pass ``issues`` (e.g. from
    :func:`issue_from_parse_error`) to say more precisely where the problem is.
    """
    enc = DEFAULT_ENCODING
    fields = _salvage_header(raw_head) or []

    def salvaged(n: int, *, single: bool = False) -> str:
        value = fields[n] if n < len(fields) and n >= 3 else ""
        if single:  # a single ST value: no components allowed
            value = value.split(enc.component)[0]
        return value

    trigger = salvaged(9).split(enc.component)[1] if enc.component in salvaged(9) else ""
    version = salvaged(12, single=True)
    if version and not re.fullmatch(r"2(\.\d+){1,2}", version):
        version = ""
    acked = salvaged(10, single=True)[:199]
    issues = list(issues) if issues is not None else [Issue("E", code, reason, segment="MSH" if fields else "")]
    return _assemble(
        enc,
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application_raw=salvaged(3),
        receiving_facility_raw=salvaged(4),
        timestamp=hl7_timestamp(now),
        trigger_raw=trigger,
        control_id=control_id or new_control_id(),
        processing_raw=salvaged(11),
        version_raw=version,
        charset_raw="",
        code="AR",
        acked_control_raw=acked,
        msa_text=_msa_text("AR", issues, reason),
        issues=issues,
    )


def ack_code_of(ack_text: str | bytes) -> str:
    """MSA-1 of an ACK (``AA``, ``AE``, ``CA`` ...), or ``""`` when there is no MSA."""
    try:
        msa = parse_message(ack_text).find("MSA")
    except ParseError:
        msa = None
    if msa is not None:
        return msa.value(1).strip().upper()
    if isinstance(ack_text, (bytes, bytearray, memoryview)):
        ack_text = bytes(ack_text).decode("latin-1")
    found = re.search(r"(?:^|[\r\n\x0b])MSA(.)([^\r\n]*)", ack_text)
    if not found:
        return ""
    return found.group(2).split(found.group(1))[0].split("^")[0].strip().upper()
