"""Turn a resource into search-index rows, driven by ``search_params``.

Each extractor knows one FHIR datatype family (Identifier/CodeableConcept/code for
tokens, HumanName/Address/string for strings, date/Period for dates, Reference
for references).  The result is four lists of tuples, ready for ``executemany``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from gateway.store.search_params import indexed_params

MAX_VALUE = 255
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(slots=True)
class IndexRows:
    token: list[tuple[str, str, str]] = field(default_factory=list)  # param, system, code
    string: list[tuple[str, str, str]] = field(default_factory=list)  # param, norm, exact
    date: list[tuple[str, int, int]] = field(default_factory=list)  # param, low_us, high_us
    reference: list[tuple[str, str, str]] = field(default_factory=list)  # param, type, id


def walk(node: Any, path: tuple[str, ...]) -> list[Any]:
    """Every value at ``path`` below ``node``, flattening lists on the way."""
    current = node if isinstance(node, list) else [node]
    for step in path:
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, dict):
                child = item.get(step)
                if child is None:
                    continue
                if isinstance(child, list):
                    nxt.extend(child)
                else:
                    nxt.append(child)
        if not nxt:
            return nxt
        current = nxt
    return current


def normalise_string(value: str) -> str:
    """Case- and accent-insensitive form used by the default string search."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()[:MAX_VALUE]


# --- date ranges ----------------------------------------------------------------------

def to_us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def date_range(value: str) -> tuple[int, int] | None:
    """The instant range a FHIR date/dateTime/instant covers, in epoch microseconds.

    "2024" covers the whole year, "2024-05-01" the whole day, a time to the second
    covers that second.  Values with no zone are read as UTC (FHIR leaves it open).
    """
    try:
        if len(value) == 4:
            low = datetime(int(value), 1, 1, tzinfo=timezone.utc)
            high = datetime(int(value) + 1, 1, 1, tzinfo=timezone.utc)
        elif len(value) == 7:
            year, month = int(value[:4]), int(value[5:7])
            low = datetime(year, month, 1, tzinfo=timezone.utc)
            high = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
        elif len(value) == 10:
            low = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
            high = low + timedelta(days=1)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            low = moment
            precision = timedelta(seconds=1) if moment.microsecond == 0 and "." not in value else \
                timedelta(microseconds=1)
            if len(value) in (16, 22) or (len(value) > 16 and value[16] in "+-Z"):
                precision = timedelta(minutes=1)  # hh:mm without seconds (search values)
            high = moment + precision
    except (ValueError, IndexError):
        return None
    return to_us(low), to_us(high) - 1


# --- extraction -----------------------------------------------------------------------

def _tokens(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        if "coding" in value or "text" in value and "value" not in value:
            for coding in value.get("coding") or ():
                if coding.get("code"):
                    yield coding.get("system", ""), coding["code"]
            return
        if "code" in value:  # Coding
            yield value.get("system", ""), value["code"]
            return
        if "value" in value:  # Identifier, ContactPoint
            yield value.get("system", ""), str(value["value"])
            return
    elif isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, (str, int)):
        yield "", str(value)


def _token_texts(value: dict[str, Any]) -> Iterator[str]:
    """CodeableConcept.text and Coding.display, for the token ``:text`` modifier.

    They are indexed as string rows under ``<param>:text`` (no extra column, and
    nothing at all for plain codes and identifiers, which have no text)."""
    text = value.get("text")
    if isinstance(text, str) and text:
        yield text
    display = value.get("display")
    if isinstance(display, str) and display:
        yield display
    for coding in value.get("coding") or ():
        if isinstance(coding, dict):
            display = coding.get("display")
            if isinstance(display, str) and display and display != text:
                yield display


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        parts = _NAME_PARTS if ("family" in value or "given" in value) else _ADDRESS_PARTS
        for part in parts:
            item = value.get(part)
            if isinstance(item, list):
                yield from (v for v in item if isinstance(v, str))
            elif isinstance(item, str):
                yield item


def _dates(value: Any) -> Iterator[tuple[int, int]]:
    if isinstance(value, str):
        rng = date_range(value)
        if rng:
            yield rng
    elif isinstance(value, dict) and ("start" in value or "end" in value):
        start = date_range(value["start"]) if value.get("start") else None
        end = date_range(value["end"]) if value.get("end") else None
        low = start[0] if start else -(2**62)
        high = end[1] if end else 2**62
        yield low, high


def split_reference(reference: str) -> tuple[str, str] | None:
    """'Patient/123', 'http://x/fhir/Patient/123' or 'Patient/123/_history/2' -> (type, id)."""
    if not reference or reference.startswith(("#", "urn:")):
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2][:1].isupper():
        return None
    return parts[-2], parts[-1]


# --- the compiled extractor ------------------------------------------------------------
#
# The parameter table is compiled once per resource type into a plan: parameters grouped
# by their first path element (each top-level element is looked up once, and the many
# parameters a resource does not carry cost one dict lookup each), then by the rest of
# the path (``participant.actor`` is walked once for Appointment's four reference
# parameters), with one handler per search type that works out a value's rows once and
# appends them under every parameter name that reads it.  The rows are the same as
# running each parameter on its own (tests/test_indexer_plan.py checks that against the
# straightforward per-parameter version on a large corpus).

Handler = Callable[[list[Any], IndexRows], None]
_CACHED_MAX_LEN = 128  # values repeat (codes, displays, dates): memoise short ones only


@lru_cache(maxsize=16384)
def _normalise_cached(value: str) -> str:
    return normalise_string(value)


@lru_cache(maxsize=8192)
def _date_range_cached(value: str) -> tuple[int, int] | None:
    return date_range(value)


def _norm(text: str) -> str:
    return _normalise_cached(text) if len(text) <= _CACHED_MAX_LEN else normalise_string(text)


def _date_rows(value: Any) -> Iterator[tuple[int, int]]:
    """``_dates`` with the string parse memoised (the same few instants recur)."""
    if type(value) is str and len(value) <= _CACHED_MAX_LEN:
        rng = _date_range_cached(value)
        if rng:
            yield rng
    else:
        yield from _dates(value)


def _token_handler(names: tuple[str, ...]) -> Handler:
    def handle(values: list[Any], rows: IndexRows) -> None:
        token, string = rows.token, rows.string
        for value in values:
            pairs = [(system[:MAX_VALUE], code[:MAX_VALUE]) for system, code in _tokens(value)]
            texts = [(_norm(t), t[:MAX_VALUE]) for t in _token_texts(value)] \
                if isinstance(value, dict) else ()
            for name in names:
                for system, code in pairs:
                    token.append((name, system, code))
                if texts:
                    text_name = name + ":text"
                    for norm, exact in texts:
                        string.append((text_name, norm, exact))
    return handle


def _string_handler(names: tuple[str, ...]) -> Handler:
    def handle(values: list[Any], rows: IndexRows) -> None:
        string = rows.string
        for value in values:
            texts = [(_norm(t), t[:MAX_VALUE]) for t in _strings(value)]
            for name in names:
                for norm, exact in texts:
                    string.append((name, norm, exact))
    return handle


def _date_handler(names: tuple[str, ...]) -> Handler:
    def handle(values: list[Any], rows: IndexRows) -> None:
        date = rows.date
        for value in values:
            ranges = list(_date_rows(value))
            for name in names:
                for low, high in ranges:
                    date.append((name, low, high))
    return handle


def _reference_handler(specs: tuple[tuple[str, tuple[str, ...]], ...]) -> Handler:
    def handle(values: list[Any], rows: IndexRows) -> None:
        reference = rows.reference
        for value in values:
            ref = value.get("reference") if isinstance(value, dict) else None
            target = split_reference(ref) if ref else None
            if target:
                target_type, target_id = target[0], target[1][:MAX_VALUE]
                for name, targets in specs:
                    if not targets or target_type in targets:
                        reference.append((name, target_type, target_id))
    return handle


def _uri_handler(names: tuple[str, ...]) -> Handler:
    def handle(values: list[Any], rows: IndexRows) -> None:
        token = rows.token
        for value in values:
            if isinstance(value, str):
                for name in names:
                    token.append((name, "", value[:MAX_VALUE]))
    return handle


_HANDLERS: dict[str, Callable[[tuple], Handler]] = {
    "token": _token_handler, "string": _string_handler, "date": _date_handler,
    "reference": _reference_handler, "uri": _uri_handler,
}

Plan = tuple[tuple[str, tuple[tuple[tuple[str, ...], tuple[Handler, ...]], ...]], ...]


@lru_cache(maxsize=None)
def _plan(resource_type: str) -> Plan:
    """first element -> (rest of path -> one handler per search type), from the table."""
    grouped: dict[str, dict[tuple[str, ...], dict[str, list]]] = {}
    for param in indexed_params(resource_type):
        if param.type not in _HANDLERS:
            continue  # quantity/number: not indexed
        for path in param.paths:
            by_kind = grouped.setdefault(path[0], {}).setdefault(path[1:], {})
            spec = (param.name, param.targets) if param.type == "reference" else param.name
            by_kind.setdefault(param.type, []).append(spec)
    return tuple(
        (first, tuple((rest, tuple(_HANDLERS[kind](tuple(specs)) for kind, specs in by_kind.items()))
                      for rest, by_kind in rests.items()))
        for first, rests in grouped.items())


def extract(resource_type: str, resource: dict[str, Any]) -> IndexRows:
    rows = IndexRows()
    get = resource.get
    for first, branches in _plan(resource_type):
        child = get(first)
        if child is None:
            continue
        top = child if isinstance(child, list) else [child]
        for rest, handlers in branches:
            values = walk(top, rest) if rest else top
            if values:
                for handle in handlers:
                    handle(values, rows)
    return rows
