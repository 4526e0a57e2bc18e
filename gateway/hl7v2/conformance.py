"""Structural conformance of an HL7 v2 message against the HL7 definitions (via hl7apy).

Not on the ingest hot path: this is the sandbox's validator and the ``/hl7v2``
diagnostics.  It answers "is this message what the standard says an SIU^S12 v2.5
is?" and says where it is not, as :class:`~gateway.hl7v2.errors.Issue` objects
ready for ERR segments or an OperationOutcome.

What comes from hl7apy, and what does not
-----------------------------------------
* The definitions: message structures (segments, groups, their order and
  cardinality), segment definitions (fields, required-ness, repetitions) and data
  types all come from hl7apy's tables for the message's version (MSH-12), or from
  v2.5 when hl7apy has no tables for that version (reported as a warning).
* Field contents are parsed with hl7apy at STRICT validation level, field by field,
  so that a bad value (``thirty`` in an NM field, ``2017031x`` in a DT) is pinned
  to its field; each field is then checked with hl7apy's ``Validator`` (required
  components, data types, table values, lengths).
* Segment order is checked here, by walking hl7apy's structure definition as a
  grammar.  hl7apy's own message parser assigns segments to groups leniently and
  does not notice, for example, an AIS before its RGS: it quietly builds a group in
  the wrong order and validates it as fine.  Walking the definition ourselves finds
  those and says which segment is out of place.

Severity: E for what the standard forbids (missing required segment or field,
segment out of order or not part of the structure, bad data type, unknown message
type); W for lenient findings (Z-segments, fields beyond the definition, values
not in HL7 tables, lengths, version fallback); I for values not in a user-defined
(IS) table, which every site defines for itself.

``check_structure`` never raises: whatever goes wrong becomes an Issue.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from gateway.hl7v2.errors import Issue, Severity
from gateway.hl7v2.parser import (
    Encoding,
    Message,
    ParseError,
    Segment,
    decode_bytes,
    parse_message,
)

__all__ = ["check_structure", "FALLBACK_VERSION"]

FALLBACK_VERSION = "2.5"

# Trigger events that share a message structure with another event (HL7 table 0354),
# for senders that leave MSH-9.3 empty.  hl7apy only knows the structures by their
# own names (ADT_A01, not ADT_A04).
_STRUCTURE_ALIASES = {
    "ADT": {
        "A04": "A01", "A08": "A01", "A13": "A01",
        "A14": "A05", "A28": "A05", "A31": "A05",
        "A07": "A06",
        "A10": "A09", "A11": "A09",
        "A22": "A21", "A23": "A21", "A25": "A21", "A26": "A21", "A27": "A21", "A29": "A21",
        "A32": "A21", "A33": "A21",
        "A34": "A30", "A35": "A30", "A36": "A30", "A46": "A30", "A47": "A30", "A48": "A30",
        "A49": "A30",
        "A40": "A39", "A41": "A39", "A42": "A39",
        "A44": "A43",
        "A51": "A50",
        "A53": "A52",
        "A55": "A52",
        "A62": "A61",
    },
    "REF": {"I13": "I12", "I14": "I12", "I15": "I12"},
    "RRI": {"I13": "I12", "I14": "I12", "I15": "I12"},
}

_SEGMENT_END = re.compile(r"\r\n|\n\r|\n")
_ELEMENT_PAIR = re.compile(r"([A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_(\d+)\.([A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_(\d+)")


def check_structure(text: str | bytes) -> list[Issue]:
    """Check one ER7 message against the HL7 v2 definitions.  Never raises."""
    try:
        return _Checker(text).run()
    except Exception as exc:  # noqa: BLE001 - the promise is: findings, not exceptions
        return [Issue("E", 207, f"the conformance check could not complete: {type(exc).__name__}: {exc}")]


# --- the structure definition as a grammar ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Node:
    name: str
    is_group: bool
    min: int
    max: int  # -1: unbounded
    children: tuple[_Node, ...] = ()
    choice: bool = False
    first: frozenset[str] = frozenset()  # segment names that can start this node

    @property
    def first_segment(self) -> str:
        """The segment that names a group in messages: its first required segment."""
        if not self.is_group:
            return self.name
        for child in self.children:
            if child.min >= 1:
                return child.first_segment
        return self.children[0].first_segment if self.children else self.name


def _node(name: str, ref: tuple, cardinality: tuple[int, int], kind: str) -> _Node:
    if kind != "GRP":
        return _Node(name, False, cardinality[0], cardinality[1], first=frozenset((name,)))
    return _group(name, ref, cardinality)


def _group(name: str, ref: tuple, cardinality: tuple[int, int]) -> _Node:
    choice = ref[0] == "choice"
    children = tuple(_node(c[0], c[1], tuple(c[2]), c[3]) for c in ref[1])
    first: set[str] = set()
    for child in children:
        first |= child.first
        if child.min >= 1 and not choice:
            break
    return _Node(name, True, cardinality[0], cardinality[1], children, choice, frozenset(first))


@lru_cache(maxsize=256)
def _structure(version: str, structure: str) -> tuple[_Node, frozenset[str]] | None:
    from hl7apy import load_library

    ref = load_library(version).MESSAGES.get(structure)
    if ref is None:
        return None
    root = _group(structure, ref, (1, 1))
    names: set[str] = set()

    def collect(node: _Node) -> None:
        for child in node.children:
            if child.is_group:
                collect(child)
            else:
                names.add(child.name)

    collect(root)
    return root, frozenset(names)


@dataclass(slots=True)
class _Frame:
    node: _Node
    counts: list[int]
    pos: int = 0

    def find(self, name: str) -> int | None:
        """The child that can take a segment called ``name`` next, or None."""
        children = self.node.children
        if self.node.choice and any(self.counts):
            candidates = [self.pos]  # a choice is made once; only that branch may repeat
        else:
            candidates = range(self.pos, len(children))
        for k in candidates:
            child = children[k]
            if name in child.first:
                if k == self.pos and self.counts[k] and child.max != -1 and self.counts[k] >= child.max:
                    continue
                return k
        return None


# --- the checker ----------------------------------------------------------------------------

@dataclass
class _Found:
    position: int  # segment position in the message (0 = message level), for ordering
    issue: Issue


@dataclass
class _Checker:
    """One run of :func:`check_structure` over one message."""

    raw: str | bytes
    found: list[_Found] = field(default_factory=list)
    version: str = FALLBACK_VERSION  # the hl7apy library version the message is checked against
    lib: Any = None  # that hl7apy library module
    sequence_of: dict[int, int] = field(default_factory=dict)  # segment position -> occurrence (ERL-2)
    structure_name: str = ""
    known: frozenset[str] = frozenset()  # segment names that occur in the message structure
    segments: list[Segment] = field(default_factory=list)
    stack: list[_Frame] = field(default_factory=list)  # the groups being matched, outermost first
    report: str = ""  # hl7apy Validator report file

    def add(self, position: int, severity: Severity, code: int, text: str, segment: str = "",
            sequence: int = 1, field_: int | None = None, component: int | None = None,
            repetition: int | None = None) -> None:
        self.found.append(_Found(position, Issue(severity, code, text, segment, sequence, field_,
                                                 component, repetition)))

    # entry point ---------------------------------------------------------------------------
    def run(self) -> list[Issue]:
        raw = self.raw
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = decode_bytes(bytes(raw))[0]
        text = _SEGMENT_END.sub("\r", raw.strip("\x0b\x1c\r\n \t\x00\ufeff"))
        try:
            msg = parse_message(text)
        except ParseError as exc:
            self.add(exc.sequence if exc.segment != "MSH" else 0, "E", exc.code, str(exc),
                     exc.segment, exc.sequence, exc.field)
            return self.result()

        from hl7apy import SUPPORTED_LIBRARIES, load_library

        version = msg.version.strip()
        if version not in SUPPORTED_LIBRARIES:
            self.add(0, "W", 203,
                     f"version {version or '(empty)'} is not one the validator knows; "
                     f"checked against v{FALLBACK_VERSION}", "MSH", 1, 12)
            version = FALLBACK_VERSION
        lib = load_library(version)
        self.version = version
        self.lib = lib

        occurrences: dict[str, int] = {}
        for seg in msg.segments:
            occurrences[seg.name] = occurrences.get(seg.name, 0) + 1
            self.sequence_of[seg.index] = occurrences[seg.name]

        structure = self.resolve_structure(msg, lib)
        if structure is not None:
            self.check_order(msg, structure)
        self.check_segments(msg)
        return self.result()

    def result(self) -> list[Issue]:
        seen = set()
        out = []
        for found in sorted(self.found, key=lambda f: f.position):
            i = found.issue
            key = (i.severity, i.code, i.segment, i.sequence, i.field, i.component, i.repetition, i.text)
            if key not in seen:
                seen.add(key)
                out.append(i)
        return out

    # message type -> structure ----------------------------------------------------------------
    def resolve_structure(self, msg: Message, lib: Any) -> str | None:
        code, event, given = msg.message_code, msg.trigger_event, msg.structure
        messages = lib.MESSAGES
        if not code:
            self.add(0, "E", 101, "MSH-9 message type is missing", "MSH", 1, 9, 1)
            return None
        if given:
            if given in messages:
                return given
            self.add(0, "E", 200, f"message structure {given} (MSH-9.3) is not defined in HL7 v{self.version}",
                     "MSH", 1, 9, 3)
            return None
        for candidate in (f"{code}_{event}",
                          f"{code}_{_STRUCTURE_ALIASES.get(code, {}).get(event, '')}",
                          code if code == "ACK" else ""):
            if candidate in messages:
                return candidate
        message_types = lib.TABLES.get("HL70076", ("", ()))[1]
        if code not in message_types:
            self.add(0, "E", 200, f"message type {code} is not an HL7 v{self.version} message type",
                     "MSH", 1, 9, 1)
        else:
            self.add(0, "E", 201,
                     f"no HL7 v{self.version} message structure for {code}^{event or '(no event)'}"
                     " (set MSH-9.3 if it shares another event's structure)", "MSH", 1, 9, 2)
        return None

    # segment order and cardinality --------------------------------------------------------------
    def check_order(self, msg: Message, structure: str) -> None:
        loaded = _structure(self.version, structure)
        if loaded is None:  # pragma: no cover - resolve_structure checked it exists
            return
        root, known = loaded
        self.structure_name = structure
        self.known = known
        self.segments = msg.segments
        self.stack = []
        self.match(root, 0)  # at the root every segment is either placed or reported

    def match(self, node: _Node, i: int) -> int:
        frame = _Frame(node, [0] * len(node.children))
        self.stack.append(frame)
        segments = self.segments
        try:
            while i < len(segments):
                seg = segments[i]
                k = frame.find(seg.name)
                if k is None:
                    if seg.name not in self.known:
                        self.not_in_structure(seg)
                        i += 1
                        continue
                    if len(self.stack) > 1 and any(f.find(seg.name) is not None for f in self.stack[:-1]):
                        break  # it belongs to an enclosing group: let that one take it
                    self.out_of_order(seg, frame, segments[i - 1] if i else None)
                    i += 1
                    continue
                child = node.children[k]
                frame.counts[k] += 1
                frame.pos = k
                if child.is_group:
                    i = self.match(child, i)
                else:
                    i += 1
            self.check_required(frame, segments[i].index if i < len(segments) else len(segments) + 1)
        finally:
            self.stack.pop()
        return i

    def not_in_structure(self, seg: Segment) -> None:
        if seg.name.startswith("Z") or seg.name not in self.lib.SEGMENTS:
            return  # reported by check_segments (W for a Z-segment, E for an unknown one)
        self.add(seg.index, "E", 100,
                 f"segment {seg.name} is not part of message structure {self.structure_name}",
                 seg.name, self.sequence_of[seg.index])

    def out_of_order(self, seg: Segment, frame: _Frame, previous: Segment | None) -> None:
        children = frame.node.children
        current = children[frame.pos] if children else None
        if current is not None and not current.is_group and current.name == seg.name:
            text = (f"segment {seg.name} repeats more often than {self.structure_name} allows "
                    f"(at most {current.max})")
        else:
            after = f" after {previous.name}" if previous is not None else ""
            text = f"segment {seg.name} is out of order: not expected{after} in {self.structure_name}"
        self.add(seg.index, "E", 100, text, seg.name, self.sequence_of[seg.index])

    def check_required(self, frame: _Frame, position: int) -> None:
        for child, count in zip(frame.node.children, frame.counts):
            if count >= child.min:
                continue
            if frame.node.choice:
                continue
            if child.is_group:
                text = (f"required group {child.name} (starting with segment {child.first_segment}) "
                        f"is missing from {self.structure_name}")
            else:
                where = "" if frame.node is self.stack[0].node else f" (in group {frame.node.name})"
                text = f"required segment {child.name} is missing from {self.structure_name}{where}"
            self.add(position, "E", 100, text, child.first_segment, 1)

    # fields of each segment -------------------------------------------------------------------
    def check_segments(self, msg: Message) -> None:
        segments_ref = self.lib.SEGMENTS
        hl7apy_enc = _hl7apy_encoding(msg.enc)
        with tempfile.TemporaryDirectory(prefix="hl7conf") as tmp:
            self.report = os.path.join(tmp, "report.txt")
            for seg in msg.segments:
                sequence = self.sequence_of[seg.index]
                if seg.name not in segments_ref:
                    if seg.name.startswith("Z"):
                        self.add(seg.index, "W", 100,
                                 f"{seg.name} is a local Z-segment: not checked against the standard",
                                 seg.name, sequence)
                    else:
                        self.add(seg.index, "E", 100, f"{seg.name} is not an HL7 v{self.version} segment",
                                 seg.name, sequence)
                    continue
                self.check_fields(seg, sequence, segments_ref[seg.name], hl7apy_enc)

    def check_fields(self, seg: Segment, sequence: int, seg_ref: tuple, enc: dict) -> None:
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.parser import parse_field

        definitions = seg_ref[1]  # ((SEG_n, ref, (min, max), 'FIE'), ...)
        defined = len(definitions)
        first = 3 if seg.name == "MSH" else 1  # MSH-1/2 are the separators, checked by the parser
        for n in range(first, max(defined, len(seg.fields) - 1) + 1):
            raw = seg.raw(n)
            reps = [r for r in raw.split(seg.enc.repetition)] if raw.strip() else []
            reps_valued = [r for r in reps if r.strip()]
            if n > defined:
                if reps_valued:
                    self.add(seg.index, "W", 102,
                             f"{seg.name}-{n} is beyond the {defined} fields HL7 v{self.version} "
                             f"defines for {seg.name}", seg.name, sequence, n)
                continue
            name, _ref, (minimum, maximum), _kind = definitions[n - 1]
            long_name = _ref[3] if len(_ref) > 3 and isinstance(_ref[3], str) else ""
            label = f"{seg.name}-{n}" + (f" ({long_name.replace('_', ' ').lower()})" if long_name else "")
            if minimum >= 1 and not reps_valued:
                self.add(seg.index, "E", 101, f"required field {label} is missing", seg.name, sequence, n)
                continue
            if maximum != -1 and len(reps) > maximum:
                self.add(seg.index, "E", 102,
                         f"{label} has {len(reps)} repetitions; at most {maximum} allowed",
                         seg.name, sequence, n)
            for r, rep in enumerate(reps, start=1):
                if not rep.strip():
                    continue
                repetition = r if len(reps) > 1 else None
                try:
                    element = parse_field(rep, name, self.version, enc, VALIDATION_LEVEL.STRICT)
                except Exception as exc:  # noqa: BLE001 - hl7apy raises many kinds
                    self.add(seg.index, "E", 102, f"{label}: {_describe(exc)}", seg.name, sequence, n,
                             None, repetition)
                    continue
                self.validate_element(element, seg, sequence, n, repetition)

    def validate_element(self, element, seg: Segment, sequence: int, n: int, repetition: int | None) -> None:
        from hl7apy.validation import Validator

        try:
            Validator.validate(element, report_file=self.report)
        except Exception:  # noqa: BLE001 - the report file holds every finding
            pass
        try:
            with open(self.report, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return
        for line in lines:
            kind, _, detail = line.partition(": ")
            if _is_pattern_value(detail):
                continue
            severity, code = self.classify(kind, detail)
            component = self.component_of(detail, element)
            self.add(seg.index, severity, code, f"{seg.name}-{n}: {detail}", seg.name, sequence, n,
                     component, repetition)

    def classify(self, kind: str, detail: str) -> tuple[Severity, int]:
        if kind == "Warning":
            if detail.startswith("Value ") and " not in table " in detail:
                return ("I" if self.leaf_datatype(detail) == "IS" else "W"), 103
            return "W", 102
        if detail.startswith("Missing required child"):
            return "E", 101
        if detail.startswith(("Invalid children detected", "Unknown element found")):
            return "W", 102  # components beyond the data type's definition
        return "E", 102

    def leaf_datatype(self, detail: str) -> str:
        found = re.search(r" in element (\S+)\.(\S+)$", detail)
        if not found:
            return ""
        leaf = found.group(2)
        ref = self.lib.FIELDS.get(leaf) or self.lib.DATATYPES.get(leaf)
        return ref[2] if ref and len(ref) > 2 else ""

    @staticmethod
    def component_of(detail: str, element) -> int | None:
        """The component number a Validator message points at, when it says."""
        field_name = element.name or ""
        datatype = element.datatype or ""
        for pair in _ELEMENT_PAIR.finditer(detail):
            parent, parent_n, child, child_n = pair.groups()
            if f"{parent}_{parent_n}" == field_name:
                return int(child_n)
            if parent == datatype:
                return int(parent_n)
            if child == datatype:
                return int(child_n)
        return None


_TABLE_MISS = re.compile(r"^Value (.*) not in table (HL7\d{4}) in element ")
# Table 0396 (coding systems) lists patterns, not values: HL7nnnn for HL7 tables, 99zzz for
# local coding systems, ISOnnnn for ISO tables.  hl7apy compares literally.
_CODING_SYSTEM_PATTERNS = re.compile(r"HL7\d{4}|99[A-Za-z0-9]{1,3}|ISO\d{4}")


def _is_pattern_value(detail: str) -> bool:
    found = _TABLE_MISS.match(detail)
    return bool(found and found.group(2) == "HL70396" and _CODING_SYSTEM_PATTERNS.fullmatch(found.group(1)))


def _hl7apy_encoding(enc: Encoding) -> dict:
    chars = {
        "FIELD": enc.field,
        "COMPONENT": enc.component,
        "SUBCOMPONENT": enc.subcomponent,
        "REPETITION": enc.repetition,
        "ESCAPE": enc.escape,
        "SEGMENT": "\r",
        "GROUP": "\r",
    }
    if enc.truncation:
        chars["TRUNCATION"] = enc.truncation
    return chars


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]
