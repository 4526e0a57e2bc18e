"""``Patient/{id}/$everything``: the child's whole joined-up record in one searchset.

What is returned: the Patient; every resource that references it through any
reference search parameter (appointments from every PAS, flags, care plans, care
teams, tasks, conditions, encounters, service requests ...); and every resource
those reference (practitioners, locations, organizations, services — other
Patients excepted).  One SQL statement finds them through the reference index
(``idx_reference``'s lookup index, one seek per reference parameter), so the cost
follows the size of the child's record, not of the database.

``_since`` (instant: only resources updated since), ``_type`` (comma list) and
``_count`` with keyset paging on (type, id) are supported.
"""

from __future__ import annotations

from typing import Any

from gateway.store import indexer
from gateway.store.search import (DEFAULT_COUNT, SearchError, SearchRequest, SearchResult, decode_cursor,
                                  encode_cursor, parse_count)
from gateway.store.search_params import RESOURCE_TYPES, SEARCH_PARAMS
from gateway.store.unit_of_work import UnitOfWork, loads

_ACCEPTED = {"_since", "_type", "_count", "_cursor", "_format", "_pretty"}


class PatientGone(Exception):
    """The Patient is unknown (404) or deleted (410)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _patient_params() -> list[tuple[str, str]]:
    """(type, parameter) of every reference parameter that can point at a Patient."""
    return [(rtype, p.name) for rtype, params in SEARCH_PARAMS.items() if rtype != "Patient"
            for p in params.values() if p.type == "reference" and (not p.targets or "Patient" in p.targets)]


def everything(uow: UnitOfWork, patient_id: str, query: list[tuple[str, str]], *,
               lenient: bool = False) -> SearchResult:
    stored = uow.get("Patient", patient_id)
    if stored is None:
        raise PatientGone(404, f"Patient/{patient_id} is not known")
    if stored.deleted:
        raise PatientGone(410, f"Patient/{patient_id} was deleted")

    req = SearchRequest("Patient")
    since: int | None = None
    types: list[str] | None = None
    for key, value in query:
        if key not in _ACCEPTED:
            if lenient:
                continue
            raise SearchError(f"unknown parameter '{key}' for $everything", key)
        if key == "_since":
            rng = indexer.date_range(value)
            if rng is None:
                raise SearchError(f"_since '{value}' is not a valid instant", "_since")
            since = rng[0]
            req.used.append((key, value))
        elif key == "_type":
            types = [t.strip() for t in value.split(",") if t.strip()]
            unknown = [t for t in types if t not in RESOURCE_TYPES]
            if unknown:
                raise SearchError(f"_type names unsupported types: {', '.join(unknown)}", "_type")
            req.used.append((key, value))
        elif key == "_count":
            req.count = parse_count(value)
            req.options.append((key, value))
        elif key == "_cursor":
            req.cursor = decode_cursor(value)
    count = req.count if req.count is not None else DEFAULT_COUNT

    branches = ["SELECT CAST(? AS VARCHAR(64)) AS res_type, CAST(? AS VARCHAR(64)) AS res_id"]
    args: list[Any] = ["Patient", patient_id]
    # Every referrer is found even with _type: an Appointment of no wanted type
    # still leads to the Practitioner and Location that are wanted.
    for rtype, param in _patient_params():
        branches.append("SELECT res_type, res_id FROM idx_reference WHERE res_type = ? AND param = ? "
                        "AND target_id = ? AND target_type = 'Patient'")
        args += [rtype, param, patient_id]
    cte = (f"WITH comp AS ({' UNION '.join(branches)}), "
           "everything_ids AS (SELECT res_type, res_id FROM comp UNION "
           "SELECT i.target_type, i.target_id FROM comp c JOIN idx_reference i "
           "ON i.res_id = c.res_id AND i.res_type = c.res_type WHERE i.target_type <> 'Patient') ")
    where = ["NOT r.deleted"]
    if types is not None:
        where.append(f"r.res_type IN ({','.join('?' for _ in types)})")
        args += types
    if since is not None:
        where.append("r.last_updated_us >= ?")
        args.append(since)
    base_sql = (f"{cte}SELECT r.res_type, r.res_id, r.content FROM everything_ids e JOIN resources r "
                f"ON r.res_type = e.res_type AND r.res_id = e.res_id WHERE {' AND '.join(where)}")
    page_sql, page_args = base_sql, list(args)
    if req.cursor is not None:
        keys = req.cursor["k"]
        if len(keys) != 1 or not isinstance(keys[0], str):
            raise SearchError("_cursor does not belong to $everything", "_cursor")
        page_sql += " AND (r.res_type > ? OR (r.res_type = ? AND r.res_id > ?))"
        page_args += [keys[0], keys[0], req.cursor["i"]]
    rows = uow.fetchall(page_sql + " ORDER BY r.res_type, r.res_id LIMIT ?", page_args + [count + 1]) \
        if count else []
    page = rows[:count]
    next_cursor = encode_cursor([page[-1][0]], page[-1][1]) if len(rows) > count and page else None
    total = None
    if req.cursor is None:
        if len(rows) <= count and count:
            total = len(page)
        else:
            row = uow.fetchone(f"SELECT COUNT(*) FROM ({base_sql}) everything_rows", args)
            total = row[0] if row else 0
    return SearchResult([loads(r[2]) for r in page], total, next_cursor, None, [], req)

