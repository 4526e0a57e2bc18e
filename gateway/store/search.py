"""Generic search over the index tables, driven by ``search_params``.

Each parameter becomes an ``EXISTS`` (or ``IN``) condition on one index table;
repeated parameters are ANDed, comma-separated values ORed.  Paging is keyset
(by resource id), so a next link stays right while new data arrives.

This covers the basics the spine needs (token, string, reference, date with
prefixes, ``_id``, ``_count``); modifiers, chaining and includes build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gateway.store import indexer
from gateway.store.search_params import SearchParam, params_for
from gateway.store.unit_of_work import UnitOfWork, loads

DEFAULT_COUNT = 50
MAX_COUNT = 1000
CONTROL_PARAMS = {"_count", "_format", "_pretty", "_total", "_summary", "_elements", "_sort", "_include",
                  "_revinclude", "_after", "_contained", "_containedType"}


class SearchError(ValueError):
    """A search the client got wrong (unknown parameter, bad value): 400."""

    def __init__(self, message: str, param: str = "") -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class SearchResult:
    resources: list[dict[str, Any]]
    total: int | None
    next_after: str | None
    params: list[tuple[str, str]] = field(default_factory=list)


def search(uow: UnitOfWork, resource_type: str, query: list[tuple[str, str]], *, lenient: bool = False,
           with_total: bool = True) -> SearchResult:
    known = params_for(resource_type)
    where: list[str] = ["r.res_type = ?", "NOT r.deleted"]
    args: list[Any] = [resource_type]
    count = DEFAULT_COUNT
    after = None
    used: list[tuple[str, str]] = []
    for raw_name, value in query:
        name, _, modifier = raw_name.partition(":")
        if raw_name == "_count":
            count = _parse_count(value)
            continue
        if raw_name == "_after":
            after = value
            continue
        if name in CONTROL_PARAMS:
            continue
        param = known.get(name)
        if param is None:
            if lenient:
                continue
            raise SearchError(f"unknown search parameter '{raw_name}' for {resource_type}", raw_name)
        clause, clause_args = _condition(param, modifier, value)
        where.append(clause)
        args.extend(clause_args)
        used.append((raw_name, value))
    base_where = " AND ".join(where)
    total = None
    if with_total:
        row = uow.fetchone(f"SELECT COUNT(*) FROM resources r WHERE {base_where}", args)
        total = row[0] if row else 0
    page_where = base_where
    page_args = list(args)
    if after:
        page_where += " AND r.res_id > ?"
        page_args.append(after)
    rows = uow.fetchall(f"SELECT r.res_id, r.content FROM resources r WHERE {page_where} "
                        f"ORDER BY r.res_id LIMIT ?", page_args + [count + 1])
    next_after = rows[count - 1][0] if len(rows) > count else None
    return SearchResult([loads(r[1]) for r in rows[:count]], total, next_after, used)


def _parse_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise SearchError(f"_count must be a whole number, not '{value}'", "_count") from None
    return max(0, min(count, MAX_COUNT)) or 0


def _condition(param: SearchParam, modifier: str, value: str) -> tuple[str, list[Any]]:
    values = [v for v in _split_or(value)]
    if not values:
        raise SearchError(f"parameter '{param.name}' has no value", param.name)
    if param.name == "_id":
        marks = ",".join("?" for _ in values)
        return f"r.res_id IN ({marks})", values
    if param.type in ("token", "uri"):
        return _token_condition(param, modifier, values)
    if param.type == "reference":
        return _reference_condition(param, modifier, values)
    if param.type == "string":
        return _string_condition(param, modifier, values)
    if param.type == "date":
        return _date_condition(param, values)
    raise SearchError(f"search parameter type {param.type} is not supported yet", param.name)


def _split_or(value: str) -> list[str]:
    """Split on commas not escaped with a backslash; unescape \\, \\| \\$."""
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p != ""]


def _exists(table: str, param: SearchParam, ors: list[str], args: list[Any]) -> tuple[str, list[Any]]:
    clause = (f"EXISTS (SELECT 1 FROM {table} i WHERE i.res_type = r.res_type AND i.res_id = r.res_id "
              f"AND i.param = ? AND ({' OR '.join(ors)}))")
    return clause, [param.name, *args]


def _token_condition(param: SearchParam, modifier: str, values: list[str]) -> tuple[str, list[Any]]:
    ors, args = [], []
    for value in values:
        if "|" in value:
            system, code = value.split("|", 1)
            if system and code:
                ors.append("(i.system = ? AND i.code = ?)")
                args += [system, code]
            elif code:  # |code: no system
                ors.append("(i.system = '' AND i.code = ?)")
                args.append(code)
            else:  # system|: any code in the system
                ors.append("i.system = ?")
                args.append(system)
        else:
            ors.append("i.code = ?")
            args.append(value)
    clause, all_args = _exists("idx_token", param, ors, args)
    if modifier == "not":
        return "NOT " + clause, all_args
    if modifier not in ("",):
        raise SearchError(f"modifier ':{modifier}' is not supported on token parameter '{param.name}'", param.name)
    return clause, all_args


def _reference_condition(param: SearchParam, modifier: str, values: list[str]) -> tuple[str, list[Any]]:
    """patient=Patient/123, patient=123, or subject:Patient=123 (a type modifier)."""
    if modifier and not modifier[:1].isupper():
        raise SearchError(f"modifier ':{modifier}' is not supported on reference parameter '{param.name}'",
                          param.name)
    ors, args = [], []
    for value in values:
        target = indexer.split_reference(value)
        if target is None and modifier:
            target = (modifier, value)
        if target:
            ors.append("(i.target_type = ? AND i.target_id = ?)")
            args += list(target)
        else:
            ors.append("i.target_id = ?")
            args.append(value)
    return _exists("idx_reference", param, ors, args)


def _string_condition(param: SearchParam, modifier: str, values: list[str]) -> tuple[str, list[Any]]:
    ors, args = [], []
    for value in values:
        if modifier == "exact":
            ors.append("i.value_exact = ?")
            args.append(value)
        elif modifier == "contains":
            ors.append("i.value_norm LIKE ?")
            args.append("%" + _like_escape(indexer.normalise_string(value)) + "%")
        elif modifier == "":
            ors.append("i.value_norm LIKE ?")
            args.append(_like_escape(indexer.normalise_string(value)) + "%")
        else:
            raise SearchError(f"modifier ':{modifier}' is not supported on string parameter '{param.name}'",
                              param.name)
    return _exists("idx_string", param, ors, args)


def _like_escape(value: str) -> str:
    return value.replace("%", "").replace("_", "")


_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def _date_condition(param: SearchParam, values: list[str]) -> tuple[str, list[Any]]:
    ors, args = [], []
    for value in values:
        prefix = value[:2] if value[:2] in _PREFIXES else "eq"
        literal = value[2:] if value[:2] in _PREFIXES else value
        rng = indexer.date_range(literal)
        if rng is None:
            raise SearchError(f"'{literal}' is not a valid date for parameter '{param.name}'", param.name)
        low, high = rng
        if prefix == "eq":
            ors.append("(i.low_us >= ? AND i.high_us <= ?)")
            args += [low, high]
        elif prefix == "ne":
            ors.append("(i.low_us < ? OR i.high_us > ?)")
            args += [low, high]
        elif prefix in ("gt", "sa"):
            ors.append("i.high_us > ?")
            args.append(high)
        elif prefix in ("lt", "eb"):
            ors.append("i.low_us < ?")
            args.append(low)
        elif prefix == "ge":
            ors.append("i.high_us >= ?")
            args.append(low)
        elif prefix == "le":
            ors.append("i.low_us <= ?")
            args.append(high)
        elif prefix == "ap":
            span = max(high - low, 86_400_000_000)
            ors.append("(i.low_us <= ? AND i.high_us >= ?)")
            args += [high + span // 10, low - span // 10]
    return _exists("idx_date", param, ors, args)


def now_us() -> int:
    return indexer.to_us(datetime.now(timezone.utc))
