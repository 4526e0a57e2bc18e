"""History Bundles: one resource, one type, or the whole system, newest first.

Read from ``resource_versions`` (every version ever written, deletions included).
Paging is keyset on (last_updated_us, res_type, res_id, version_id), descending:
the ``next`` link carries the key of the last entry shown, so a page stays right
however many versions are written while a client pages (OFFSET would shift), and
page 1000 costs what page 1 does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from gateway.api.errors import FhirError
from gateway.store import indexer
from gateway.store.unit_of_work import UnitOfWork, loads

DEFAULT_COUNT = 50
MAX_COUNT = 1000
CURSOR = "_cursor"

_REQUEST_METHOD = {"create": "POST", "update": "PUT", "delete": "DELETE"}
_RESPONSE_STATUS = {"create": "201 Created", "update": "200 OK", "delete": "204 No Content"}


def history_bundle(uow: UnitOfWork, base: str, path: str, query: list[tuple[str, str]], *,
                   res_type: str | None = None, res_id: str | None = None) -> dict[str, Any]:
    """``path`` is the history URL relative to the base (``Patient/1/_history``)."""
    count, since_us, cursor = _parse(query)
    where, args = [], []
    if res_type is not None:
        where.append("res_type = ?")
        args.append(res_type)
    if res_id is not None:
        where.append("res_id = ?")
        args.append(res_id)
    if since_us is not None:
        where.append("last_updated_us >= ?")
        args.append(since_us)
    if res_id is not None and cursor is None:
        exists = uow.fetchone("SELECT 1 FROM resource_versions WHERE res_type=? AND res_id=? LIMIT 1",
                              (res_type, res_id))
        if exists is None:
            raise FhirError(404, f"{res_type}/{res_id} is not known", code="not-found")
    if cursor is not None:
        where.append("(last_updated_us, res_type, res_id, version_id) < (?, ?, ?, ?)")
        args.extend(cursor)
    sql = ("SELECT res_type, res_id, version_id, last_updated, last_updated_us, deleted, method, content "
           "FROM resource_versions" + (" WHERE " + " AND ".join(where) if where else "") +
           " ORDER BY last_updated_us DESC, res_type DESC, res_id DESC, version_id DESC LIMIT ?")
    rows = uow.fetchall(sql, args + [count + 1])
    page, more = rows[:count], len(rows) > count
    kept = [(k, v) for k, v in query if k != CURSOR]
    links = [{"relation": "self", "url": _url(base, path, query)}]
    if more:
        last = page[-1]
        token = f"{last[4]}~{last[0]}~{last[1]}~{last[2]}"
        links.append({"relation": "next", "url": _url(base, path, kept + [(CURSOR, token)])})
    return {"resourceType": "Bundle", "type": "history", "link": links,
            "entry": [_entry(base, row) for row in page]}


def _entry(base: str, row: tuple) -> dict[str, Any]:
    rtype, rid, version, last_updated, _us, deleted, method, content = row
    method = "delete" if deleted else (method if method in _REQUEST_METHOD else "update")
    entry: dict[str, Any] = {"fullUrl": f"{base}/{rtype}/{rid}"}
    if not deleted:
        entry["resource"] = loads(content)
    entry["request"] = {"method": _REQUEST_METHOD[method],
                        "url": rtype if method == "create" else f"{rtype}/{rid}"}
    entry["response"] = {"status": _RESPONSE_STATUS[method], "etag": f'W/"{version}"',
                         "lastModified": last_updated}
    return entry


def _url(base: str, path: str, query: list[tuple[str, str]]) -> str:
    return f"{base}/{path}" + (f"?{urlencode(query)}" if query else "")


def _parse(query: list[tuple[str, str]]) -> tuple[int, int | None, tuple[int, str, str, int] | None]:
    count, since, cursor = DEFAULT_COUNT, None, None
    for name, value in query:
        if name == "_count":
            if not value.isdigit():
                raise FhirError(400, f"_count must be a whole number, not '{value}'", expression=["_count"])
            count = max(1, min(int(value), MAX_COUNT))
        elif name == "_since":
            rng = indexer.date_range(value)
            if rng is None:
                raise FhirError(400, f"_since must be an instant (e.g. 2025-06-01T00:00:00Z), not '{value}'",
                                expression=["_since"])
            since = rng[0]
        elif name == CURSOR:
            parts = value.split("~")
            if len(parts) != 4 or not parts[0].lstrip("-").isdigit() or not parts[3].isdigit():
                raise FhirError(400, f"malformed paging cursor '{value}'", expression=[CURSOR])
            cursor = (int(parts[0]), parts[1], parts[2], int(parts[3]))
        elif name in ("_format", "_pretty"):
            continue
        elif name == "_at":
            raise FhirError(400, "_at is not supported on history; use _since", code="not-supported",
                            expression=["_at"])
        else:
            raise FhirError(400, f"unknown history parameter '{name}' (supported: _count, _since)",
                            expression=[name])
    return count, since, cursor
