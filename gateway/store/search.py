"""Generic FHIR search over the index tables, driven by ``search_params``.

A query is compiled into conditions, one per parameter (repeated parameters are
ANDed, comma-separated values ORed).  Every condition is a set of resource ids
read from one index table through its lookup index (``res_type, param, value``),
so chains (``patient.identifier=``), reverse chains (``_has:``) and
``:identifier`` nest as ``IN (SELECT ...)`` sets of the target type.

How the top-level query uses them (checked with ``EXPLAIN QUERY PLAN``):

* the most selective positive condition *drives*: ``r.res_id IN (SELECT ...)``
  — SQLite runs the subquery through the lookup index and probes ``resources``
  by primary key for each id (a correlated ``EXISTS`` would make it scan every
  resource of the type instead);
* every other condition is a correlated ``EXISTS`` probing the index table's
  primary key ``(res_id, res_type, param, ...)`` for each candidate row, so a
  broad ``status=noshow`` never materialises its hundred thousand ids;
* negative conditions (``:not``, ``:missing=true``) are ``NOT EXISTS`` probes.

Paging is keyset: the cursor carries the last row's sort key values and id,
so a next link stays right while new data arrives (no OFFSET).
"""

from __future__ import annotations

import base64
import binascii
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from gateway.store import indexer
from gateway.store.search_params import RESOURCE_TYPES, SearchParam, params_for
from gateway.store.unit_of_work import UnitOfWork, loads

DEFAULT_COUNT = 50
MAX_COUNT = 1000
MATCHING_CAP = 1000  # conditional create/update/delete never need more
MAX_INCLUDED = 2000  # included resources per page, whatever the _include says
MAX_ITERATE_LEVELS = 4
RESULT_PARAMS = {"_count", "_sort", "_total", "_summary", "_elements", "_cursor", "_include", "_revinclude",
                 "_format", "_pretty", "_contained", "_containedType", "_totalMethod"}
_IGNORED = {"_format", "_pretty", "_totalMethod"}  # _totalMethod: fhirpy's count() sends it (not R4)
SUMMARY_MODES = ("true", "false", "text", "data", "count")
TOTAL_MODES = ("none", "estimate", "accurate")
_TABLE_OF = {"token": "idx_token", "uri": "idx_token", "string": "idx_string", "date": "idx_date",
             "reference": "idx_reference"}
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_MAX_CHAR = "\U0010ffff"


class SearchError(ValueError):
    """A search the client got wrong (unknown parameter, bad value): 400."""

    def __init__(self, message: str, param: str = "") -> None:
        super().__init__(message)
        self.param = param


# --- conditions -----------------------------------------------------------------------

@dataclass(slots=True)
class Cond:
    """One parameter's condition: the ids ``{alias}.{id_col}`` of ``table`` rows
    satisfying ``where`` (which restricts ``res_type``/``param`` itself)."""

    table: str
    alias: str
    where: str
    args: list[Any]
    id_col: str = "res_id"
    negate: bool = False
    rank: int = 5  # lower = more selective; the best positive one drives the query

    def driving(self, id_expr: str) -> str:
        return f"{id_expr} IN (SELECT {self.alias}.{self.id_col} FROM {self.table} {self.alias} WHERE {self.where})"

    def probe(self, id_expr: str, dialect: str = "sqlite") -> str:
        where = self.where
        if dialect == "sqlite" and self.id_col == "res_id" and self.table != "resources":
            # Without statistics SQLite may probe through the lookup index
            # (res_type, param, code ...) and walk every row with that code; a unary
            # + on param leaves it the primary key (res_id, res_type, ...) instead.
            a = self.alias
            where = where.replace(f"{a}.param = ?", f"+{a}.param = ?", 1)
        clause = (f"EXISTS (SELECT 1 FROM {self.table} {self.alias} WHERE {self.alias}.{self.id_col} = {id_expr} "
                  f"AND {where})")
        return "NOT " + clause if self.negate else clause


class _Compiler:
    """Turns (name, value) pairs into Conds for one dialect; aliases are unique per query."""

    def __init__(self, dialect: str, lenient: bool) -> None:
        self.dialect = dialect
        self.lenient = lenient
        self._n = itertools.count()

    def alias(self) -> str:
        return f"t{next(self._n)}"

    def unknown(self, message: str, name: str) -> None:
        if not self.lenient:
            raise SearchError(message, name)

    # A set of ids of one type, as SQL, for nesting (chains, _has, :identifier).
    def id_set(self, rtype: str, cond: Cond) -> tuple[str, list[Any]]:
        if not cond.negate:
            return (f"SELECT {cond.alias}.{cond.id_col} FROM {cond.table} {cond.alias} WHERE {cond.where}",
                    cond.args)
        x = self.alias()
        return (f"SELECT {x}.res_id FROM resources {x} WHERE {x}.res_type = ? AND NOT {x}.deleted "
                f"AND {cond.probe(x + '.res_id', self.dialect)}", [rtype, *cond.args])

    def compile(self, rtype: str, key: str, value: str) -> Cond | None:
        if key.startswith("_has:"):
            return self._has(rtype, key, value)
        head, dot, rest = key.partition(".")
        name, _, modifier = head.partition(":")
        if name == "_lastUpdated":
            if dot:
                raise SearchError("_lastUpdated cannot be chained", key)
            return self._last_updated(rtype, modifier, value)
        param = params_for(rtype).get(name)
        if param is None:
            self.unknown(f"unknown search parameter '{name}' for {rtype}", key)
            return None
        if dot:
            if param.type != "reference":
                raise SearchError(f"'{name}' is not a reference parameter and cannot be chained", key)
            return self._chain(rtype, param, modifier, rest, value, key)
        return self._simple(rtype, param, modifier, value)

    # --- one parameter -----------------------------------------------------------------
    def _simple(self, rtype: str, param: SearchParam, modifier: str, value: str) -> Cond:
        if modifier == "missing":
            return self._missing(rtype, param, value)
        values = split_or(value)
        if not values:
            raise SearchError(f"parameter '{param.name}' has no value", param.name)
        if param.name == "_id":
            if modifier:
                raise SearchError(f"modifier ':{modifier}' is not supported on _id", "_id")
            a = self.alias()
            marks = ",".join("?" for _ in values)
            return Cond("resources", a, f"{a}.res_type = ? AND {a}.res_id IN ({marks})", [rtype, *values], rank=0)
        if param.type in ("token", "uri"):
            return self._token(rtype, param, modifier, values)
        if param.type == "reference":
            return self._reference(rtype, param, modifier, values)
        if param.type == "string":
            return self._string(rtype, param, modifier, values)
        if param.type == "date":
            if modifier:
                raise SearchError(f"modifier ':{modifier}' is not supported on date parameter '{param.name}'",
                                  param.name)
            return self._date(rtype, param, values)
        raise SearchError(f"search parameter type {param.type} is not supported", param.name)

    def _head(self, table: str, rtype: str, name: str) -> tuple[str, str, list[Any]]:
        a = self.alias()
        return a, f"{a}.res_type = ? AND {a}.param = ?", [rtype, name]

    def _missing(self, rtype: str, param: SearchParam, value: str) -> Cond:
        if value not in ("true", "false"):
            raise SearchError(f"':missing' takes true or false, not '{value}'", param.name + ":missing")
        if param.name == "_id":
            raise SearchError("_id is never missing", "_id:missing")
        table = _TABLE_OF[param.type]
        a, where, args = self._head(table, rtype, param.name)
        return Cond(table, a, where, args, negate=value == "true", rank=6)

    def _token(self, rtype: str, param: SearchParam, modifier: str, values: list[str]) -> Cond:
        if modifier == "text":
            a, where, args = self._head("idx_string", rtype, param.name + ":text")
            ors = []
            for value in values:
                norm = _like_escape(indexer.normalise_string(value))
                ors.append(f"({a}.value_norm LIKE ? ESCAPE '!' OR {a}.value_norm LIKE ? ESCAPE '!')")
                args += [norm + "%", "% " + norm + "%"]
            return Cond("idx_string", a, f"{where} AND ({' OR '.join(ors)})", args, rank=5)
        if modifier not in ("", "not") and not (modifier == "below" and param.type == "uri"):
            raise SearchError(f"modifier ':{modifier}' is not supported on {param.type} parameter '{param.name}'",
                              param.name)
        a, where, args = self._head("idx_token", rtype, param.name)
        ors, selective = [], param.name in ("identifier", "_tag") or param.type == "uri"
        for value in values:
            if modifier == "below":
                ors.append(f"{a}.code LIKE ? ESCAPE '!'")
                args.append(_like_escape(value) + "%")
            elif param.type == "token" and "|" in value:
                system, code = value.split("|", 1)
                if code:
                    ors.append(f"({a}.code = ? AND {a}.system = ?)")
                    args += [code, system]
                    selective = selective or bool(system)
                else:  # system|: any code in the system
                    ors.append(f"{a}.system = ?")
                    args.append(system)
            else:
                ors.append(f"{a}.code = ?")
                args.append(value)
        return Cond("idx_token", a, f"{where} AND ({' OR '.join(ors)})", args, negate=modifier == "not",
                    rank=1 if selective else 3)

    def _reference(self, rtype: str, param: SearchParam, modifier: str, values: list[str]) -> Cond:
        if modifier == "identifier":
            return self._reference_identifier(rtype, param, values)
        if modifier and modifier not in RESOURCE_TYPES:
            raise SearchError(f"modifier ':{modifier}' is not supported on reference parameter '{param.name}'",
                              param.name)
        a, where, args = self._head("idx_reference", rtype, param.name)
        ors = []
        for value in values:
            target = indexer.split_reference(value)
            if target is None and modifier:
                target = (modifier, value)
            elif target is None and len(param.targets) == 1:
                target = (param.targets[0], value)
            if target is not None and modifier and target[0] != modifier:
                ors.append("1 = 0")
            elif target is not None:
                ors.append(f"({a}.target_id = ? AND {a}.target_type = ?)")
                args += [target[1], target[0]]
            else:
                ors.append(f"{a}.target_id = ?")
                args.append(value)
        return Cond("idx_reference", a, f"{where} AND ({' OR '.join(ors)})", args, rank=1)

    def _reference_identifier(self, rtype: str, param: SearchParam, values: list[str]) -> Cond:
        """``patient:identifier=system|value``: references whose target has that identifier."""
        targets = param.targets or tuple(t for t in RESOURCE_TYPES if "identifier" in params_for(t))
        a, where, args = self._head("idx_reference", rtype, param.name)
        ors = []
        for target in targets:
            inner = self._token(target, params_for(target)["identifier"], "", values)
            sql, inner_args = self.id_set(target, inner)
            ors.append(f"({a}.target_type = ? AND {a}.target_id IN ({sql}))")
            args += [target, *inner_args]
        return Cond("idx_reference", a, f"{where} AND ({' OR '.join(ors)})", args, rank=1)

    def _string(self, rtype: str, param: SearchParam, modifier: str, values: list[str]) -> Cond:
        a, where, args = self._head("idx_string", rtype, param.name)
        ors = []
        for value in values:
            norm = indexer.normalise_string(value)
            if modifier == "exact":
                ors.append(f"({a}.value_norm = ? AND {a}.value_exact = ?)")
                args += [norm, value[:indexer.MAX_VALUE]]
            elif modifier == "contains":
                ors.append(f"{a}.value_norm LIKE ? ESCAPE '!'")
                args.append("%" + _like_escape(norm) + "%")
            elif modifier == "":
                if self.dialect == "sqlite":  # a range the lookup index serves (binary collation)
                    ors.append(f"({a}.value_norm >= ? AND {a}.value_norm < ?)")
                    args += [norm, norm + _MAX_CHAR]
                else:  # PostgreSQL's collation is linguistic: a byte range would be wrong
                    ors.append(f"{a}.value_norm LIKE ? ESCAPE '!'")
                    args.append(_like_escape(norm) + "%")
            else:
                raise SearchError(f"modifier ':{modifier}' is not supported on string parameter '{param.name}'",
                                  param.name)
        return Cond("idx_string", a, f"{where} AND ({' OR '.join(ors)})", args,
                    rank=4 if modifier == "contains" else 2)

    def _date(self, rtype: str, param: SearchParam, values: list[str]) -> Cond:
        a, where, args = self._head("idx_date", rtype, param.name)
        ors = []
        for value in values:
            sql, date_args = date_condition(f"{a}.low_us", f"{a}.high_us", value, param.name)
            ors.append(sql)
            args += date_args
        return Cond("idx_date", a, f"{where} AND ({' OR '.join(ors)})", args, rank=3)

    def _last_updated(self, rtype: str, modifier: str, value: str) -> Cond:
        if modifier:
            raise SearchError(f"modifier ':{modifier}' is not supported on _lastUpdated", "_lastUpdated")
        values = split_or(value)
        if not values:
            raise SearchError("parameter '_lastUpdated' has no value", "_lastUpdated")
        a = self.alias()
        ors, args = [], []
        for v in values:
            sql, date_args = date_condition(f"{a}.last_updated_us", f"{a}.last_updated_us", v, "_lastUpdated")
            ors.append(sql)
            args += date_args
        return Cond("resources", a, f"{a}.res_type = ? AND NOT {a}.deleted AND ({' OR '.join(ors)})",
                    [rtype, *args], rank=4)

    # --- chains ------------------------------------------------------------------------
    def _chain(self, rtype: str, param: SearchParam, modifier: str, rest: str, value: str, key: str) -> Cond | None:
        if modifier and modifier not in RESOURCE_TYPES:
            raise SearchError(f"'{modifier}' is not a resource type (in '{key}')", key)
        inner_name = rest.split(".", 1)[0].split(":", 1)[0]
        if modifier:
            targets: tuple[str, ...] = (modifier,)
        elif param.targets:
            targets = param.targets
        else:
            targets = tuple(t for t in RESOURCE_TYPES if inner_name in params_for(t) or inner_name == "_lastUpdated")
        a, where, args = self._head("idx_reference", rtype, param.name)
        ors = []
        for target in targets:
            inner = self.compile(target, rest, value)
            if inner is None:
                continue
            sql, inner_args = self.id_set(target, inner)
            ors.append(f"({a}.target_type = ? AND {a}.target_id IN ({sql}))")
            args += [target, *inner_args]
        if not ors:
            self.unknown(f"no resource type that '{param.name}' can reference has a parameter '{inner_name}'", key)
            return None
        return Cond("idx_reference", a, f"{where} AND ({' OR '.join(ors)})", args, rank=1)

    def _has(self, rtype: str, key: str, value: str) -> Cond | None:
        """``_has:Appointment:patient:status=noshow``: resources referenced (through
        Appointment.patient) by an Appointment with that status."""
        parts = key.split(":", 3)
        if len(parts) < 4 or not parts[3]:
            raise SearchError(f"'{key}' is not a valid _has parameter (_has:Type:reference:parameter)", key)
        _, source, ref_name, rest = parts
        if source not in RESOURCE_TYPES:
            raise SearchError(f"'{source}' is not a supported resource type (in '{key}')", key)
        ref = params_for(source).get(ref_name)
        if ref is None or ref.type != "reference" or (ref.targets and rtype not in ref.targets):
            raise SearchError(f"'{ref_name}' is not a reference parameter of {source} that can point to {rtype}",
                              key)
        inner = self.compile(source, rest, value)
        if inner is None:
            return None
        sql, inner_args = self.id_set(source, inner)
        a = self.alias()
        return Cond("idx_reference", a,
                    f"{a}.res_type = ? AND {a}.param = ? AND {a}.target_type = ? AND {a}.res_id IN ({sql})",
                    [source, ref_name, rtype, *inner_args], id_col="target_id", rank=4)


def date_condition(low: str, high: str, value: str, name: str) -> tuple[str, list[Any]]:
    """One date value with its prefix, over a target range [low, high] (both inclusive),
    per the table in https://hl7.org/fhir/R4/search.html#prefix."""
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    literal = value[2:] if value[:2] in _PREFIXES else value
    rng = indexer.date_range(literal)
    if rng is None:
        raise SearchError(f"'{literal}' is not a valid date for parameter '{name}'", name)
    s_low, s_high = rng
    contained = f"({low} >= ? AND {high} <= ?)"
    if prefix == "eq":  # the search range fully contains the target's
        return contained, [s_low, s_high]
    if prefix == "ne":
        return f"({low} < ? OR {high} > ?)", [s_low, s_high]
    if prefix == "gt":  # the range above the search value overlaps the target
        return f"{high} > ?", [s_high]
    if prefix == "lt":
        return f"{low} < ?", [s_low]
    if prefix == "ge":
        return f"({high} > ? OR {contained})", [s_high, s_low, s_high]
    if prefix == "le":
        return f"({low} < ? OR {contained})", [s_low, s_low, s_high]
    if prefix == "sa":  # the target starts after the search range ends
        return f"{low} > ?", [s_high]
    if prefix == "eb":  # the target ends before the search range starts
        return f"{high} < ?", [s_low]
    # ap: overlaps the search range widened by 10 % of the gap between now and the value
    gap = abs(now_us() - s_low) // 10
    return f"({low} <= ? AND {high} >= ?)", [s_high + gap, s_low - gap]


def split_or(value: str) -> list[str]:
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


def _like_escape(value: str) -> str:
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def now_us() -> int:
    return indexer.to_us(datetime.now(timezone.utc))


# --- the request ------------------------------------------------------------------------

@dataclass(slots=True)
class SortKey:
    name: str
    desc: bool
    expr: str | None  # None: the id itself
    args: list[Any] = field(default_factory=list)
    nullable: bool = True


@dataclass(slots=True)
class Include:
    source: str  # resource type or "*"
    param: str  # reference parameter or "*"
    target: str | None
    iterate: bool
    reverse: bool

    def params(self, rtype: str) -> list[str]:
        if self.source not in ("*", rtype):
            return []
        if self.param == "*":
            return [p.name for p in params_for(rtype).values() if p.type == "reference"]
        return [self.param]


@dataclass(slots=True)
class SearchRequest:
    resource_type: str
    conds: list[Cond] = field(default_factory=list)
    used: list[tuple[str, str]] = field(default_factory=list)  # what was searched on (self link)
    options: list[tuple[str, str]] = field(default_factory=list)  # result parameters (links)
    count: int = DEFAULT_COUNT
    sort: list[SortKey] = field(default_factory=list)
    cursor: dict[str, Any] | None = None
    total: str | None = None
    summary: str | None = None
    elements: list[str] | None = None
    includes: list[Include] = field(default_factory=list)


@dataclass(slots=True)
class SearchResult:
    resources: list[dict[str, Any]]
    total: int | None
    next_cursor: str | None
    prev_cursor: str | None
    included: list[dict[str, Any]] = field(default_factory=list)
    request: SearchRequest | None = None

    @property
    def params(self) -> list[tuple[str, str]]:
        return self.request.used if self.request else []


def parse(uow: UnitOfWork, resource_type: str, query: list[tuple[str, str]], *,
          lenient: bool = False) -> SearchRequest:
    compiler = _Compiler(uow.dialect, lenient)
    req = SearchRequest(resource_type)
    for key, value in query:
        base = key.split(":", 1)[0]
        if base in RESULT_PARAMS:
            _result_param(req, key, base, value, lenient, uow.dialect)
            continue
        cond = compiler.compile(resource_type, key, value)
        if cond is not None:
            req.conds.append(cond)
            req.used.append((key, value))
    return req


def _result_param(req: SearchRequest, key: str, base: str, value: str, lenient: bool, dialect: str) -> None:
    rtype = req.resource_type
    if base in _IGNORED or base in ("_contained", "_containedType"):
        return
    if base == "_cursor":
        req.cursor = decode_cursor(value)
        return
    req.options.append((key, value))
    if base == "_count":
        req.count = parse_count(value)
    elif base == "_total":
        if value not in TOTAL_MODES:
            raise SearchError(f"_total must be one of {', '.join(TOTAL_MODES)}", "_total")
        req.total = value
    elif base == "_summary":
        if value not in SUMMARY_MODES:
            raise SearchError(f"_summary must be one of {', '.join(SUMMARY_MODES)}", "_summary")
        req.summary = value
    elif base == "_elements":
        req.elements = [e.strip() for e in value.split(",") if e.strip()]
    elif base == "_sort":
        req.sort = parse_sort(rtype, value, dialect)
    elif base in ("_include", "_revinclude"):
        modifier = key.partition(":")[2]
        if modifier not in ("", "iterate", "recurse"):
            raise SearchError(f"'{key}' is not a valid include (only :iterate)", key)
        include = parse_include(value, iterate=bool(modifier), reverse=base == "_revinclude", lenient=lenient)
        if include is not None:
            req.includes.append(include)


def parse_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise SearchError(f"_count must be a whole number, not '{value}'", "_count") from None
    if count < 0:
        raise SearchError("_count must not be negative", "_count")
    return min(count, MAX_COUNT)


_SORT_COLUMN = {"date": "low_us", "string": "value_norm", "token": "code", "uri": "code", "reference": "target_id"}


def parse_sort(rtype: str, value: str, dialect: str = "sqlite") -> list[SortKey]:
    """Sort keys; each parameter's key is the least of its values for the resource
    (read through the index table's primary key: the + keeps SQLite off the lookup index)."""
    plus = "+" if dialect == "sqlite" else ""
    keys: list[SortKey] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        desc = item.startswith("-")
        name = item.lstrip("-")
        if name == "_id":
            keys.append(SortKey("_id", desc, None, nullable=False))
            break  # the id is unique: later keys could never matter
        if name == "_lastUpdated":
            keys.append(SortKey(name, desc, "r.last_updated_us", nullable=False))
            continue
        param = params_for(rtype).get(name)
        if param is None:
            raise SearchError(f"cannot sort {rtype} by unknown parameter '{name}'", "_sort")
        column = _SORT_COLUMN.get(param.type)
        if column is None:
            raise SearchError(f"cannot sort by '{name}' ({param.type})", "_sort")
        expr = (f"(SELECT MIN(s.{column}) FROM {_TABLE_OF[param.type]} s WHERE s.res_id = r.res_id "
                f"AND s.res_type = ? AND {plus}s.param = ?)")
        keys.append(SortKey(name, desc, expr, [rtype, name]))
    return keys


def parse_include(value: str, *, iterate: bool, reverse: bool, lenient: bool) -> Include | None:
    which = "_revinclude" if reverse else "_include"
    if value == "*":
        return Include("*", "*", None, iterate, reverse)
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] not in RESOURCE_TYPES:
        if lenient:
            return None
        raise SearchError(f"{which}={value}: expected Type:parameter[:TargetType]", which)
    source, name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if name != "*":
        param = params_for(source).get(name)
        if param is None or param.type != "reference":
            if lenient:
                return None
            raise SearchError(f"{which}={value}: {source} has no reference parameter '{name}'", which)
    if target is not None and target not in RESOURCE_TYPES:
        raise SearchError(f"{which}={value}: '{target}' is not a supported resource type", which)
    return Include(source, name, target, iterate, reverse)


def encode_cursor(values: list[Any], res_id: str, backwards: bool = False) -> str:
    payload = orjson.dumps({"k": values, "i": res_id, "b": 1 if backwards else 0})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(value: str) -> dict[str, Any]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        if not isinstance(data, dict) or not isinstance(data.get("k"), list) or not isinstance(data.get("i"), str):
            raise ValueError
        return data
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise SearchError("_cursor is not a cursor this server issued", "_cursor") from None


# --- running it --------------------------------------------------------------------------

def _where(req: SearchRequest, dialect: str) -> tuple[list[str], list[Any]]:
    where, args = ["r.res_type = ?", "NOT r.deleted"], [req.resource_type]
    positive = [c for c in req.conds if not c.negate]
    driver = min(positive, key=lambda c: c.rank) if positive else None
    for cond in req.conds:
        if cond is driver:
            where.append(cond.driving("r.res_id"))
        else:
            where.append(cond.probe("r.res_id", dialect))
        args.extend(cond.args)
    return where, args


def _keyset(keys: list[tuple[str, bool, bool]], values: list[Any], nulls_last: bool) -> tuple[str, list[Any]]:
    """Rows strictly after ``values`` in the order of ``keys`` (column, desc, nullable)."""
    ors: list[str] = []
    args: list[Any] = []
    equal: list[str] = []
    equal_args: list[Any] = []
    for (col, desc, nullable), value in zip(keys, values):
        op = "<" if desc else ">"
        if value is None:
            after, after_args = (None, []) if nulls_last else (f"{col} IS NOT NULL", [])
            eq, eq_args = f"{col} IS NULL", []
        else:
            after = f"({col} {op} ? OR {col} IS NULL)" if nullable and nulls_last else f"{col} {op} ?"
            after_args = [value]
            eq, eq_args = f"{col} = ?", [value]
        if after is not None:
            ors.append("(" + " AND ".join([*equal, after]) + ")")
            args += equal_args + after_args
        equal.append(eq)
        equal_args += eq_args
    return "(" + (" OR ".join(ors) or "1 = 0") + ")", args


def search(uow: UnitOfWork, resource_type: str, query: list[tuple[str, str]], *, lenient: bool = False,
           with_total: bool = True) -> SearchResult:
    req = parse(uow, resource_type, query, lenient=lenient)
    if not with_total and req.total is None:
        req.total = "none"
    return run(uow, req)


def run(uow: UnitOfWork, req: SearchRequest) -> SearchResult:
    where, where_args = _where(req, uow.dialect)
    sort = [k for k in req.sort if k.expr is not None]
    id_desc = next((k.desc for k in req.sort if k.expr is None), False)
    cursor = req.cursor
    backwards = bool(cursor and cursor.get("b"))
    if cursor is not None and len(cursor["k"]) != len(sort):
        raise SearchError("_cursor does not belong to this _sort", "_cursor")
    count = 0 if req.summary == "count" else req.count

    rows: list[tuple] = []
    if count > 0:
        columns = ", ".join(["r.res_id AS id", "r.content AS content",
                             *(f"{k.expr} AS k{n}" for n, k in enumerate(sort))])
        select_args = [a for k in sort for a in k.args]
        inner = f"SELECT {columns} FROM resources r WHERE {' AND '.join(where)}"
        keys = [(f"q.k{n}", k.desc != backwards, k.nullable) for n, k in enumerate(sort)]
        keys.append(("q.id", id_desc != backwards, False))
        order = []
        for col, desc, nullable in keys:
            if nullable:
                order.append(f"({col} IS NULL) {'DESC' if backwards else 'ASC'}")
            order.append(f"{col} {'DESC' if desc else 'ASC'}")
        sql = f"SELECT q.* FROM ({inner}) q"
        args = select_args + where_args
        if cursor is not None:
            clause, keyset_args = _keyset(keys, [*cursor["k"], cursor["i"]], nulls_last=not backwards)
            sql += f" WHERE {clause}"
            args += keyset_args
        sql += f" ORDER BY {', '.join(order)} LIMIT ?"
        rows = uow.fetchall(sql, args + [count + 1])

    more = len(rows) > count
    page = rows[:count]
    if backwards:
        page.reverse()
    next_cursor = prev_cursor = None
    if page:
        first, last = page[0], page[-1]
        if more or backwards:
            next_cursor = encode_cursor(list(last[2:]), last[0])
        if cursor is not None and (more or not backwards):
            prev_cursor = encode_cursor(list(first[2:]), first[0], backwards=True)

    total: int | None = None
    mode = req.total or ("accurate" if cursor is None or req.summary == "count" else "none")
    if req.summary == "count" and mode == "none":
        mode = "accurate"
    if mode != "none":
        if cursor is None and not more and count > 0:
            total = len(page)  # the whole result is on this page
        elif mode == "accurate":
            row = uow.fetchone(f"SELECT COUNT(*) FROM resources r WHERE {' AND '.join(where)}", where_args)
            total = row[0] if row else 0
        else:  # estimate: the most selective condition alone (an upper bound)
            total = _estimate(uow, req)

    resources = [loads(r[1]) for r in page]
    included = include(uow, resources, req.includes) if req.includes and resources else []
    return SearchResult(resources, total, next_cursor, prev_cursor, included, req)


def _estimate(uow: UnitOfWork, req: SearchRequest) -> int:
    positive = [c for c in req.conds if not c.negate]
    if not positive:
        row = uow.fetchone("SELECT COUNT(*) FROM resources WHERE res_type = ? AND NOT deleted", [req.resource_type])
    else:
        cond = min(positive, key=lambda c: c.rank)
        row = uow.fetchone(f"SELECT COUNT(DISTINCT {cond.alias}.{cond.id_col}) FROM {cond.table} {cond.alias} "
                           f"WHERE {cond.where}", cond.args)
    return row[0] if row else 0


def matching_ids(uow: UnitOfWork, resource_type: str, query: list[tuple[str, str]]) -> list[str]:
    """Ids of every live resource matching ``query`` (at most 1000): for conditional
    create/update/delete.  Result parameters (``_count``, ``_sort`` ...) are ignored;
    an unknown parameter is a SearchError."""
    req = SearchRequest(resource_type)
    compiler = _Compiler(uow.dialect, lenient=False)
    for key, value in query:
        if key.split(":", 1)[0] in RESULT_PARAMS:
            continue
        cond = compiler.compile(resource_type, key, value)
        if cond is not None:
            req.conds.append(cond)
    where, args = _where(req, uow.dialect)
    rows = uow.fetchall(f"SELECT r.res_id FROM resources r WHERE {' AND '.join(where)} ORDER BY r.res_id LIMIT ?",
                        args + [MATCHING_CAP])
    return [r[0] for r in rows]


# --- _include / _revinclude ------------------------------------------------------------------

def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def load_resources(uow: UnitOfWork, refs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Live resources for (type, id) pairs, in the order given (unknown/deleted skipped)."""
    by_type: dict[str, list[str]] = {}
    for rtype, rid in refs:
        by_type.setdefault(rtype, []).append(rid)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for rtype, ids in by_type.items():
        for chunk in _chunks(ids):
            marks = ",".join("?" for _ in chunk)
            for rid, content in uow.fetchall(f"SELECT res_id, content FROM resources WHERE res_type = ? "
                                             f"AND res_id IN ({marks}) AND NOT deleted", [rtype, *chunk]):
                found[(rtype, rid)] = loads(content)
    return [found[ref] for ref in refs if ref in found]


def include(uow: UnitOfWork, matches: list[dict[str, Any]], includes: list[Include]) -> list[dict[str, Any]]:
    """Resources named by ``_include``/``_revinclude`` for this page of matches;
    ``:iterate`` ones are applied again to what they brought in, a few levels deep."""
    seen = {(r["resourceType"], r["id"]) for r in matches}
    frontier = [(r["resourceType"], r["id"]) for r in matches]
    out: list[dict[str, Any]] = []
    for level in range(MAX_ITERATE_LEVELS + 1):
        active = [inc for inc in includes if level == 0 or inc.iterate]
        if not active or not frontier:
            break
        wanted: list[tuple[str, str]] = []
        for inc in active:
            for ref in (_reverse_refs(uow, inc, frontier) if inc.reverse else _forward_refs(uow, inc, frontier)):
                if ref not in seen and len(seen) < MAX_INCLUDED + len(matches):
                    seen.add(ref)
                    wanted.append(ref)
        loaded = load_resources(uow, wanted)
        out.extend(loaded)
        frontier = [(r["resourceType"], r["id"]) for r in loaded]
    return out


def _forward_refs(uow: UnitOfWork, inc: Include, frontier: list[tuple[str, str]]) -> list[tuple[str, str]]:
    by_type: dict[str, list[str]] = {}
    for rtype, rid in frontier:
        by_type.setdefault(rtype, []).append(rid)
    refs: list[tuple[str, str]] = []
    for rtype, ids in by_type.items():
        names = inc.params(rtype)
        if not names:
            continue
        pmarks = ",".join("?" for _ in names)
        for chunk in _chunks(ids):
            marks = ",".join("?" for _ in chunk)
            rows = uow.fetchall(f"SELECT target_type, target_id FROM idx_reference WHERE res_id IN ({marks}) "
                                f"AND res_type = ? AND param IN ({pmarks}) ORDER BY res_id, target_type, target_id",
                                [*chunk, rtype, *names])
            refs += [(t, i) for t, i in rows if inc.target is None or t == inc.target]
    return refs


def _reverse_refs(uow: UnitOfWork, inc: Include, frontier: list[tuple[str, str]]) -> list[tuple[str, str]]:
    refs: list[tuple[str, str]] = []
    sources = RESOURCE_TYPES if inc.source == "*" else (inc.source,)
    by_type: dict[str, list[str]] = {}
    for rtype, rid in frontier:
        if inc.target is None or inc.target == rtype:
            by_type.setdefault(rtype, []).append(rid)
    for source in sources:
        for name in inc.params(source):
            for target_type, ids in by_type.items():
                for chunk in _chunks(ids):
                    marks = ",".join("?" for _ in chunk)
                    rows = uow.fetchall(f"SELECT res_id FROM idx_reference WHERE res_type = ? AND param = ? "
                                        f"AND target_id IN ({marks}) AND target_type = ? ORDER BY res_id",
                                        [source, name, *chunk, target_type])
                    refs += [(source, r[0]) for r in rows]
    return refs
