"""A small, fast ER7 (pipe-and-hat) parser for the ingest hot path.

Why not hl7apy or python-hl7 here: hl7apy builds a validated object tree per
element (~30 messages/s measured) and python-hl7 builds a list subclass per
element.  Ingest only needs a handful of fields per message, so this parser
splits a message into segments and fields once (``str.split`` runs in C) and
splits repetitions, components and sub-components lazily, only for the fields a
mapping actually reads.  The separators come from MSH-1/MSH-2, so any legal
encoding characters work, not only ``|^~\\&``.

Field numbering follows HL7: ``segment.raw(3)`` is PID-3.  For MSH the field
separator itself is MSH-1 and the encoding characters are MSH-2, so MSH-9 is
``msh.raw(9)`` like any other segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterator

__all__ = [
    "Encoding",
    "Message",
    "ParseError",
    "Segment",
    "decode_bytes",
    "parse_message",
    "split_batch",
]

# HL7 table 0211 names (MSH-18) -> Python codecs.  Unknown names fall back to UTF-8.
CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso-8859-1",
    "8859/2": "iso-8859-2",
    "8859/5": "iso-8859-5",
    "8859/7": "iso-8859-7",
    "8859/9": "iso-8859-9",
    "8859/15": "iso-8859-15",
    "8859/3": "iso-8859-3",
    "8859/4": "iso-8859-4",
    "8859/6": "iso-8859-6",
    "8859/8": "iso-8859-8",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc_kr",
    "ISO IR100": "iso-8859-1",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}

_SEGMENT_END = re.compile(r"\r\n|\n\r|\n|\r")
# An MSH at the start of the text or of a segment (not "MSH" inside some field).
_MSH_AT_SEGMENT_START = re.compile(r"(?:^|[\r\n])MSH")
_BATCH_SEGMENTS = frozenset(("FHS", "BHS", "BTS", "FTS"))
# Characters stripped around a message: MLLP framing, blank lines, NULs and a byte-order mark.
_FRAMING = "\x0b\x1c\r\n \t\x00\ufeff"
_HEX = frozenset("0123456789abcdefABCDEF")


class ParseError(ValueError):
    """The text is not an HL7 v2 message we can read.

    ``segment``/``sequence``/``field`` point at the problem, in HL7's own terms, so
    the ACK's ERR-2 can say where it is.
    """

    def __init__(self, message: str, *, segment: str = "MSH", sequence: int = 1, field: int | None = None,
                 code: int = 100) -> None:
        super().__init__(message)
        self.segment = segment
        self.sequence = sequence
        self.field = field
        # HL7 table 0357: 100 segment sequence error, 101 required field missing,
        # 102 data type error, 200 unsupported message type, 207 application error.
        self.code = code


@dataclass(frozen=True, slots=True)
class Encoding:
    """The separators of one message, read from MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""
    charset: str = "utf-8"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    def unescape(self, text: str) -> str:
        """Decode HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\L\\ \\Xhh\\ \\.br\\ ...)."""
        esc = self.escape
        if not esc or esc not in text:
            return text
        out: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            j = text.find(esc, i)
            if j < 0:
                out.append(text[i:])
                break
            k = text.find(esc, j + 1)
            if k < 0:  # a lone escape character: keep it as data
                out.append(text[i:])
                break
            out.append(text[i:j])
            out.append(self._escape_value(text[j + 1:k], text[j:k + 1]))
            i = k + 1
        return "".join(out)

    def _escape_value(self, code: str, literal: str) -> str:
        if code == "F":
            return self.field
        if code == "S":
            return self.component
        if code == "T":
            return self.subcomponent
        if code == "R":
            return self.repetition
        if code == "E":
            return self.escape
        if code == "L" and self.truncation:  # v2.7+: the truncation character as data
            return self.truncation
        if code == ".br":
            return "\n"
        if code in ("H", "N"):  # highlighting on/off: formatting, no text
            return ""
        if code[:1] == "X":  # hexadecimal bytes in the message's character set
            try:
                return bytes.fromhex(code[1:]).decode(self.charset, errors="replace")
            except ValueError:
                return literal
        head = code[:1]
        if head in ("C", "M"):
            # \Cxxyy\ and \Mxxyy[zz]\ switch character sets (ISO 2022): no text of their own.
            # Anything else that happens to start with C or M is not an escape: keep it.
            hexdigits = code[1:]
            if len(hexdigits) in ((4,) if head == "C" else (4, 6)) and all(c in _HEX for c in hexdigits):
                return ""
            return literal
        if code[:3] in (".sp", ".in", ".ti", ".fi", ".nf", ".ce", ".sk"):
            # Formatting commands carry no text of their own; a line skip is a line break.
            return "\n" if code[:3] == ".sp" else ""
        # Unknown escapes, including locally defined \Z..\ ones we cannot know, stay as sent.
        return literal

    def escape_text(self, text: str) -> str:
        """Encode a value so it can be placed inside a field (the inverse of unescape)."""
        esc = self.escape
        if not text:
            return text
        if esc in text:
            text = text.replace(esc, f"{esc}E{esc}")
        for char, code in ((self.field, "F"), (self.component, "S"), (self.subcomponent, "T"),
                           (self.repetition, "R")):
            if char and char in text:
                text = text.replace(char, f"{esc}{code}{esc}")
        trunc = self.truncation
        if trunc and text.endswith(trunc):
            # v2.7: a truncation character ends a value that was cut short; only there does a
            # data character need escaping (\L\, as HAPI and hl7apy read it).  Elsewhere it is
            # plain data, and left alone: engines before v2.7 do not know \L\.
            text = text[: -len(trunc)] + f"{esc}L{esc}"
        if "\r" in text or "\n" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{esc}.br{esc}")
        return text


DEFAULT_ENCODING = Encoding()


class Segment:
    """One segment: its name and its raw (still escaped) fields.

    ``fields[0]`` is the segment name, so ``fields[n]`` is field n.  Values are
    unescaped only when asked for.
    """

    __slots__ = ("name", "fields", "enc", "index")

    def __init__(self, name: str, fields: list[str], enc: Encoding, index: int = 0) -> None:
        self.name = name
        self.fields = fields
        self.enc = enc
        self.index = index  # position of the segment in the message, 1-based

    def __repr__(self) -> str:
        return f"Segment({self.enc.field.join(self.fields)!r})"

    def raw(self, n: int) -> str:
        """Field n as it was sent (escaped, with all repetitions), or ''."""
        fields = self.fields
        return fields[n] if n < len(fields) else ""

    def repetitions(self, n: int) -> list[str]:
        """The raw repetitions of field n ([] when the field is empty)."""
        raw = self.raw(n)
        if not raw:
            return []
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        return raw.split(self.enc.repetition)

    def field(self, n: int) -> list[list[list[str]]]:
        """Field n as repetitions -> components -> sub-components, unescaped."""
        enc = self.enc
        if self.name == "MSH" and n in (1, 2):  # the separators themselves: never split them
            raw = self.raw(n)
            return [[[raw]]] if raw else []
        out = []
        for rep in self.repetitions(n):
            out.append([[enc.unescape(sub) for sub in comp.split(enc.subcomponent)]
                        for comp in rep.split(enc.component)])
        return out

    def components(self, n: int, repetition: int = 0) -> list[str]:
        """The components of one repetition of field n, unescaped (sub-components joined
        back with the sub-component separator, each part unescaped)."""
        reps = self.repetitions(n)
        if repetition >= len(reps):
            return []
        if self.name == "MSH" and n in (1, 2):
            return reps
        return split_components(reps[repetition], self.enc)

    def value(self, n: int, component: int = 1, subcomponent: int = 1, repetition: int = 0) -> str:
        """One unescaped value: PID-5.1 is ``value(5, 1)``; components count from 1."""
        raw = self.raw(n)
        if not raw:
            return ""
        enc = self.enc
        if self.name == "MSH" and n in (1, 2):
            return raw
        if enc.repetition in raw:
            reps = raw.split(enc.repetition)
            if repetition >= len(reps):
                return ""
            raw = reps[repetition]
        elif repetition:
            return ""
        if enc.component in raw:
            comps = raw.split(enc.component)
            if component > len(comps):
                return ""
            raw = comps[component - 1]
        elif component > 1:
            return ""
        if enc.subcomponent in raw:
            subs = raw.split(enc.subcomponent)
            if subcomponent > len(subs):
                return ""
            raw = subs[subcomponent - 1]
        elif subcomponent > 1:
            return ""
        return enc.unescape(raw) if enc.escape in raw else raw


def split_components(raw_repetition: str, enc: Encoding) -> list[str]:
    """Split one raw repetition into unescaped components (sub-components kept joined)."""
    if not raw_repetition:
        return []
    esc = enc.escape
    comps = raw_repetition.split(enc.component)
    if esc not in raw_repetition:
        return comps
    sub = enc.subcomponent
    out = []
    for comp in comps:
        if esc not in comp:
            out.append(comp)
        elif sub in comp:
            out.append(sub.join(enc.unescape(s) for s in comp.split(sub)))
        else:
            out.append(enc.unescape(comp))
    return out


def split_subcomponents(component: str, enc: Encoding) -> list[str]:
    """Sub-components of a component returned by :func:`split_components`."""
    return component.split(enc.subcomponent) if component else []


class Message:
    """A parsed HL7 v2 message: its segments, in order, plus the raw text."""

    __slots__ = ("segments", "enc", "text", "warnings", "_by_name")

    def __init__(self, segments: list[Segment], enc: Encoding, text: str) -> None:
        self.segments = segments
        self.enc = enc
        self.text = text
        self.warnings: list[str] = []
        self._by_name: dict[str, list[Segment]] | None = None

    def __repr__(self) -> str:
        return f"Message({self.message_code}^{self.trigger_event} {self.control_id!r})"

    def _index(self) -> dict[str, list[Segment]]:
        by_name = self._by_name
        if by_name is None:
            by_name = {}
            for seg in self.segments:
                by_name.setdefault(seg.name, []).append(seg)
            self._by_name = by_name
        return by_name

    def find(self, name: str) -> Segment | None:
        """The first segment with this name, or None."""
        found = self._index().get(name)
        return found[0] if found else None

    def find_all(self, name: str) -> list[Segment]:
        return self._index().get(name, [])

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    # MSH conveniences -------------------------------------------------------------
    @property
    def message_code(self) -> str:
        return self.msh.value(9, 1).upper()

    @property
    def trigger_event(self) -> str:
        return self.msh.value(9, 2).upper()

    @property
    def structure(self) -> str:
        return self.msh.value(9, 3).upper()

    @property
    def control_id(self) -> str:
        return self.msh.value(10)

    @property
    def processing_id(self) -> str:
        return self.msh.value(11)

    @property
    def version(self) -> str:
        return self.msh.value(12)

    @property
    def sending_application(self) -> str:
        return self.msh.value(3)

    @property
    def sending_facility(self) -> str:
        return self.msh.value(4)

    @property
    def receiving_application(self) -> str:
        return self.msh.value(5)

    @property
    def receiving_facility(self) -> str:
        return self.msh.value(6)

    @property
    def message_datetime(self) -> str:
        return self.msh.value(7)

    @property
    def accept_ack_type(self) -> str:
        return self.msh.value(15).upper()

    @property
    def application_ack_type(self) -> str:
        return self.msh.value(16).upper()


def read_encoding(header: str, charset: str = "utf-8") -> Encoding:
    """Read the separators from the start of an MSH/FHS/BHS segment."""
    if len(header) < 8 or header[:3] not in ("MSH", "FHS", "BHS"):
        raise ParseError("the message does not start with an MSH segment", code=100)
    field = header[3]
    if not _legal_separator(field):
        raise ParseError(f"MSH-1 field separator {field!r} is not a legal separator", field=1, code=102)
    end = header.find(field, 4)
    msh2 = header[4:end] if end >= 0 else header[4:]
    # Four encoding characters, plus the truncation character from v2.7 on; all distinct.
    if (len(msh2) not in (4, 5) or not all(_legal_separator(c) for c in msh2)
            or len(set(msh2 + field)) != len(msh2) + 1):
        raise ParseError(f"MSH-2 encoding characters {msh2[:10]!r} are not four (or five) distinct "
                         "separators", field=2, code=102)
    return Encoding(field=field, component=msh2[0], repetition=msh2[1], escape=msh2[2],
                    subcomponent=msh2[3], truncation=msh2[4] if len(msh2) > 4 else "",
                    charset=charset)


def _legal_separator(char: str) -> bool:
    """Separators are printable, non-alphanumeric ASCII-range characters (no spaces, no controls)."""
    return not char.isalnum() and char.isprintable() and not char.isspace()


def _charset_of_header(header: str) -> str:
    """The Python codec for MSH-18 of an MSH line (the first repetition is the default
    character set of the message; later ones are alternates for ISO 2022 switching)."""
    if len(header) < 8:
        return "utf-8"
    sep = header[3]
    fields = header.split(sep, 18)
    # fields[0] = "MSH", fields[1] = MSH-2, so MSH-n is fields[n-1].
    if len(fields) < 18:
        return "utf-8"
    msh18 = fields[17]
    if not msh18:
        return "utf-8"
    if len(header) > 5:
        msh18 = msh18.split(header[5])[0]  # repetition separator
    name = msh18.split(header[4])[0].strip().upper()
    return CHARSETS.get(name, "utf-8")


def _charset_from_bytes(data: bytes) -> str:
    """Peek at MSH-18 in the raw bytes (all separators are ASCII) to choose a decoder."""
    start = data.find(b"MSH")
    if start < 0 or len(data) < start + 8:
        return "utf-8"
    end = len(data)
    for terminator in (b"\r", b"\n"):
        pos = data.find(terminator, start)
        if 0 <= pos < end:
            end = pos
    return _charset_of_header(data[start:end].decode("latin-1"))


def decode_bytes(data: bytes) -> tuple[str, str, list[str]]:
    """Decode raw bytes using MSH-18.  Returns (text, codec, warnings).

    Bytes that are not valid in the declared character set are not dropped: we
    fall back to Windows-1252 (a superset of ISO-8859-1 seen in real feeds) and
    say so.
    """
    codec = _charset_from_bytes(data)
    warnings: list[str] = []
    bom = data.find(b"\xef\xbb\xbf", 0, 4)
    if bom >= 0 and not data[:bom].strip(b"\x0b\r\n\x00"):
        # A UTF-8 byte-order mark (files saved by some editors) says how the bytes are encoded.
        data = data[:bom] + data[bom + 3:]
        if codec != "utf-8":
            warnings.append(f"UTF-8 byte-order mark overrides MSH-18 ({codec}); read as utf-8")
            codec = "utf-8"
    try:
        return data.decode(codec), codec, warnings
    except UnicodeDecodeError as exc:
        warnings.append(f"bytes not valid {codec} at offset {exc.start}; read as windows-1252")
        return data.decode("cp1252", errors="replace"), "cp1252", warnings


def parse_message(data: str | bytes) -> Message:
    """Parse one ER7 message.  Raises :class:`ParseError` if there is no readable MSH."""
    warnings: list[str] = []
    if isinstance(data, (bytes, bytearray, memoryview)):
        text, codec, warnings = decode_bytes(bytes(data))
    else:
        text, codec = data, ""
    text = text.strip(_FRAMING)
    in_batch = False
    if not text.startswith("MSH"):
        found = _MSH_AT_SEGMENT_START.search(text)
        if found is None:
            raise ParseError("no MSH segment found", code=100)
        # Whatever precedes the MSH (a batch header, a stray line) is not part of the message;
        # the batch trailers that may follow it are not either.
        in_batch = True
        text = text[found.end() - 3:]
    enc = read_encoding(text, codec or "utf-8")
    if "\n" in text:
        lines = _SEGMENT_END.split(text)
    else:
        lines = text.split("\r")
    field_sep = enc.field
    segments: list[Segment] = []
    index = 0
    for line in lines:
        if not line.strip():
            continue
        fields = line.split(field_sep)
        name = fields[0].strip().upper()
        if in_batch and name in _BATCH_SEGMENTS:
            continue
        index += 1
        if name == "MSH":
            if segments:
                raise ParseError("a second MSH segment inside one message", segment="MSH",
                                 sequence=2, code=100)
            # Re-number so fields[n] is MSH-n: MSH-1 is the separator itself.
            fields = ["MSH", field_sep] + fields[1:]
            if not codec and len(fields) > 18 and fields[18]:
                # Text given as str: \X..\ escapes still decode in the MSH-18 character set.
                charset = _charset_of_header(line)
                if charset != enc.charset:
                    enc = replace(enc, charset=charset)
        elif len(name) != 3 or not name.isalnum() or not name.isascii():
            raise ParseError(f"segment {index} has an invalid name {name[:10]!r}",
                             segment=name[:3] or "???", sequence=index, code=100)
        segments.append(Segment(name, fields, enc, index))
    msg = Message(segments, enc, text)
    msg.warnings.extend(warnings)
    return msg


def split_batch(data: str | bytes) -> list[str]:
    """Split a file or batch (FHS/BHS ... BTS/FTS, or plain concatenated messages) into
    the text of each message.  Batch header/trailer segments are dropped."""
    if isinstance(data, (bytes, bytearray)):
        text, _codec, _warnings = decode_bytes(bytes(data))
    else:
        text = data
    text = text.replace("\x0b", "").replace("\x1c", "").replace("\ufeff", "")
    messages: list[list[str]] = []
    for line in _SEGMENT_END.split(text):
        stripped = line.strip()
        if not stripped:
            continue
        tag = stripped[:3].upper()
        if tag in ("FHS", "BHS", "BTS", "FTS"):
            continue
        if tag == "MSH":
            messages.append([stripped])
        elif messages:
            messages[-1].append(line)
    return ["\r".join(segs) + "\r" for segs in messages]


def encode_as_declared(text: str) -> bytes:
    """Message text back to bytes in the character set its MSH-18 declares (the
    message log keeps decoded text; a replay must decode to the same text)."""
    codec = _charset_from_bytes(text.encode("utf-8"))
    return text.encode(codec, errors="replace")
