"""Transaction and batch Bundles (``POST /fhir``), FHIR R4 http.html#transaction.

A **transaction** is all or nothing: every entry runs in one unit of work (one
database transaction, one commit, outbox events included); the first entry that
fails rolls everything back and the answer is that entry's error, its
OperationOutcome naming it (``Bundle.entry[3]``).  Entries run in the order FHIR
prescribes — DELETE, POST, PUT, GET — and the response lists them in request order.

Identities are settled before anything is written: each POST gets its new id (or,
with ``ifNoneExist``, the id of the one match), each PUT its target (conditional
PUTs by search), so every ``urn:uuid:`` fullUrl is known up front and references
to it anywhere in any entry are rewritten to ``Type/id``.  Conditional references
(``Patient?identifier=...``) are resolved by search when their entry is written and
must match exactly one resource.

A **batch** runs each entry independently, each in its own savepoint of one
transaction: a failing entry rolls back only itself and its response entry carries
the OperationOutcome.  Entries of a batch may not refer to each other (R4), so
``urn:uuid:`` references there are an error for that entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.engine import Engine

from gateway.api import writes
from gateway.api.common import information
from gateway.api.errors import FhirError
from gateway.api.history import history_bundle
from gateway.api.searchset import searchset
from gateway.store.ids import new_id
from gateway.store.search import SearchError, search
from gateway.store.search_params import RESOURCE_TYPES
from gateway.store.unit_of_work import UnitOfWork, loads

# FHIR's processing order for a transaction.
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}
MAX_ENTRIES = 5000


@dataclass(slots=True)
class _Entry:
    index: int
    method: str
    url: str
    resource_type: str
    res_id: str | None  # from the URL (Type/id)
    criteria: list[tuple[str, str]] | None  # from the URL (Type?criteria)
    path: list[str]  # URL path segments
    query: list[tuple[str, str]]
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    target_id: str | None = None  # settled before writing
    existing: bool = False  # conditional create matched: nothing to write
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"Bundle.entry[{self.index}]"


def process_bundle(engine: Engine, base: str, bundle: dict[str, Any], *, prefer: str) -> dict[str, Any]:
    if bundle.get("resourceType") != "Bundle":
        raise FhirError(400, f"POST to the base takes a Bundle, not {bundle.get('resourceType')!r}",
                        expression=["Bundle.resourceType"])
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise FhirError(400, f"Bundle.type must be 'transaction' or 'batch' here, not {kind!r}",
                        expression=["Bundle.type"])
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise FhirError(400, "Bundle.entry must be a list", expression=["Bundle.entry"])
    if len(raw_entries) > MAX_ENTRIES:
        raise FhirError(413, f"at most {MAX_ENTRIES} entries per Bundle", code="too-costly")
    if kind == "transaction":
        entries = _parse_all(raw_entries, base)
        _run_transaction(engine, base, entries, prefer)
        responses = [e.response for e in entries]
    else:
        responses = _run_batch(engine, base, raw_entries, prefer)
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": responses}


# --- transaction --------------------------------------------------------------------------
def _parse_all(raw_entries: list[Any], base: str) -> list[_Entry]:
    """Parse and validate every entry before anything runs, so a rejected transaction
    names *each* bad entry (one issue per problem), not only the first."""
    entries: list[_Entry] = []
    issues: list[dict[str, Any]] = []
    status = 0
    for index, raw in enumerate(raw_entries):
        try:
            entry = _parse_entry(index, raw, base)
            entries.append(entry)
            if entry.method in ("POST", "PUT") and entry.resource is not None:
                writes.prepare(entry.resource_type, {k: v for k, v in entry.resource.items()
                                                     if not (k == "id" and entry.method == "POST")})
        except FhirError as exc:
            failed = exc if exc.diagnostics.startswith(f"Bundle.entry[{index}]") else \
                _entry_error(exc, entries[-1] if entries and entries[-1].index == index else _stub(index))
            issues.extend(failed.outcome()["issue"])
            status = status or exc.status
    if issues:
        summary = issues[0]["diagnostics"] if len(issues) == 1 else \
            f"{len(issues)} problems in the transaction, the first: {issues[0]['diagnostics']}"
        raise FhirError(status, summary, issues=issues)
    return entries


def _stub(index: int) -> _Entry:
    return _Entry(index, "?", "?", "", None, None, [], [], None, None, None, None)


def _run_transaction(engine: Engine, base: str, entries: list[_Entry], prefer: str) -> None:
    ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.index))
    refs: dict[str, str] = {}
    with writes.write_transaction(engine) as uow:
        for entry in ordered:
            if entry.method == "DELETE":
                _guard(entry, lambda e=entry: _respond(e, _delete(uow, e), base, prefer))
        for entry in ordered:
            if entry.method in ("POST", "PUT"):
                _guard(entry, lambda e=entry: _settle_target(uow, e, refs))
        _check_duplicates(entries)
        for entry in ordered:
            if entry.method in ("POST", "PUT"):
                _guard(entry, lambda e=entry: _respond(e, _write(uow, e, refs), base, prefer))
            elif entry.method in ("GET", "HEAD"):
                _guard(entry, lambda e=entry: _read(uow, e, base))


def _guard(entry: _Entry, action: Any) -> None:
    try:
        action()
    except FhirError as exc:
        raise _entry_error(exc, entry) from None


def _settle_target(uow: UnitOfWork, entry: _Entry, refs: dict[str, str]) -> None:
    if entry.method == "POST":
        found = writes.conditional_create_target(uow, entry.resource_type, entry.if_none_exist) \
            if entry.if_none_exist else None
        entry.target_id, entry.existing = (found, True) if found else (new_id(), False)
    elif entry.criteria is not None:
        found = writes.conditional_update_target(uow, entry.resource_type, entry.criteria, entry.resource or {},
                                                 if_match=entry.if_match)
        entry.target_id = found or new_id()
    else:
        entry.target_id = entry.res_id
    if entry.full_url:
        refs[entry.full_url] = f"{entry.resource_type}/{entry.target_id}"


def _check_duplicates(entries: list[_Entry]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for entry in entries:
        if entry.method not in ("POST", "PUT", "DELETE") or entry.existing:
            continue
        target = entry.target_id if entry.method != "DELETE" else entry.res_id
        if target is None:
            continue
        key = (entry.resource_type, target)
        if key in seen:
            raise _entry_error(FhirError(400, f"{key[0]}/{key[1]} is also the target of Bundle.entry[{seen[key]}]; "
                                              f"a transaction may touch a resource only once"), entry)
        seen[key] = entry.index


def _write(uow: UnitOfWork, entry: _Entry, refs: dict[str, str]) -> writes.WriteOutcome:
    resource = _resolve_references(uow, entry.resource or {}, refs)
    if entry.method == "POST":
        if entry.existing:
            writes.prepare(entry.resource_type, resource)
            return writes.found_existing(uow, entry.resource_type, entry.target_id)
        return writes.create(uow, entry.resource_type, resource, res_id=entry.target_id)
    return writes.update(uow, entry.resource_type, entry.target_id, resource, if_match=entry.if_match,
                         id_required=entry.criteria is None)


def _delete(uow: UnitOfWork, entry: _Entry) -> writes.WriteOutcome:
    if entry.criteria is not None:
        return writes.conditional_delete(uow, entry.resource_type, entry.criteria)
    return writes.delete(uow, entry.resource_type, entry.res_id, if_match=entry.if_match)


# --- batch --------------------------------------------------------------------------------
def _run_batch(engine: Engine, base: str, raw_entries: list[Any], prefer: str) -> list[dict[str, Any]]:
    responses: list[dict[str, Any]] = []
    with writes.write_transaction(engine) as uow:
        for index, raw in enumerate(raw_entries):
            try:
                with uow.savepoint():
                    entry = _parse_entry(index, raw, base)
                    if entry.method == "DELETE":
                        _respond(entry, _delete(uow, entry), base, prefer)
                    elif entry.method in ("POST", "PUT"):
                        _settle_target(uow, entry, {})
                        _respond(entry, _write(uow, entry, {}), base, prefer)
                    else:
                        _read(uow, entry, base)
                responses.append(entry.response)
            except FhirError as exc:
                responses.append(_failed(exc))
            except Exception as exc:  # a database error in one entry: that entry fails
                responses.append(_failed(FhirError(500, f"internal error: {type(exc).__name__}")))
    return responses


def _failed(exc: FhirError) -> dict[str, Any]:
    return {"response": {"status": _status_line(exc.status), "outcome": exc.outcome()}}


# --- entries ------------------------------------------------------------------------------
def _parse_entry(index: int, raw: Any, base: str) -> _Entry:
    label = f"Bundle.entry[{index}]"

    def bad(message: str, where: str = "") -> FhirError:
        return FhirError(400, f"{label}: {message}", code="invalid", expression=[label + where])

    if not isinstance(raw, dict):
        raise bad("an entry must be an object")
    request = raw.get("request")
    if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
        raise bad("request.method and request.url are required", ".request")
    method = str(request["method"]).upper()
    if method == "PATCH":
        raise FhirError(405, f"{label}: PATCH is not supported", code="not-supported", expression=[label])
    if method not in _ORDER:
        raise bad(f"request.method '{method}' is not a FHIR interaction", ".request.method")
    url = str(request["url"])
    if url.startswith(base + "/"):
        url = url[len(base) + 1:]
    url = url.lstrip("/")
    path_part, _, query_part = url.partition("?")
    path = [p for p in path_part.split("/") if p]
    query = parse_qsl(query_part, keep_blank_values=True)
    resource_type = path[0] if path else ""
    if method != "GET" and method != "HEAD" and resource_type not in RESOURCE_TYPES:
        raise bad(f"request.url '{url}' does not name a supported resource type", ".request.url")
    res_id = path[1] if len(path) > 1 else None
    criteria = None
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise bad(f"{method} needs a resource", ".resource")
        if resource.get("resourceType") != resource_type:
            raise bad(f"the resource is a {resource.get('resourceType')!r} but the URL names {resource_type}",
                      ".resource.resourceType")
    if method == "POST" and len(path) != 1:
        raise bad(f"POST takes the type's URL ('{resource_type}'), not '{url}'", ".request.url")
    if method in ("PUT", "DELETE"):
        if len(path) == 1 and query:
            criteria = writes.criteria_of(query)
        elif len(path) != 2 or query:
            raise bad(f"{method} takes 'Type/id' or 'Type?criteria', not '{url}'", ".request.url")
    try:
        if_match = writes.parse_if_match(request.get("ifMatch"))
    except FhirError as exc:
        raise bad(exc.diagnostics, ".request.ifMatch") from None
    full_url = raw.get("fullUrl")
    return _Entry(index, method, url, resource_type, res_id, criteria, path, query, resource,
                  str(full_url) if full_url else None, request.get("ifNoneExist") or None, if_match)


def _respond(entry: _Entry, outcome: writes.WriteOutcome, base: str, prefer: str) -> None:
    stored = outcome.stored
    response: dict[str, Any] = {"status": _status_line(outcome.status)}
    result: dict[str, Any] = {}
    if stored is not None:
        result["fullUrl"] = f"{base}/{stored.ref}"
        response["location"] = f"{stored.ref}/_history/{stored.version_id}"
        response["etag"] = f'W/"{stored.version_id}"'
        response["lastModified"] = stored.last_updated
        if prefer == "representation" and not stored.deleted:
            result["resource"] = stored.resource
    if prefer == "OperationOutcome":
        response["outcome"] = information(outcome.message)
    result["response"] = response
    entry.response = result


def _read(uow: UnitOfWork, entry: _Entry, base: str) -> None:
    """GET in a Bundle: read, vread, history or search (seeing this Bundle's writes)."""
    path, rtype = entry.path, entry.resource_type
    if rtype == "_history" or (path and path[-1] == "_history"):
        bundle = history_bundle(uow, base, entry.url.partition("?")[0], entry.query,
                                res_type=rtype if rtype != "_history" else None,
                                res_id=path[1] if len(path) == 3 else None)
        entry.response = {"resource": bundle, "response": {"status": "200 OK"}}
        return
    if rtype not in RESOURCE_TYPES:
        raise FhirError(404, f"resource type '{rtype}' is not supported here", code="not-supported")
    if len(path) == 1:
        try:
            result = search(uow, rtype, entry.query)
        except SearchError as exc:
            raise FhirError(400, str(exc), expression=[exc.param] if exc.param else None) from None
        bundle = searchset(result, base, rtype)
        entry.response = {"resource": bundle, "response": {"status": "200 OK"}}
        return
    if len(path) == 2:
        stored = uow.get(rtype, path[1])
        if stored is None:
            raise FhirError(404, f"{rtype}/{path[1]} is not known", code="not-found")
        resource, version, deleted = stored.resource, stored.version_id, stored.deleted
    elif len(path) == 4 and path[2] == "_history" and path[3].isdigit():
        row = uow.fetchone("SELECT deleted, content FROM resource_versions WHERE res_type=? AND res_id=? "
                           "AND version_id=?", (rtype, path[1], int(path[3])))
        if row is None:
            raise FhirError(404, f"{entry.url} is not known", code="not-found")
        resource, version, deleted = loads(row[1]), int(path[3]), bool(row[0])
    else:
        raise FhirError(400, f"GET '{entry.url}' is not supported in a Bundle", code="not-supported")
    if deleted:
        raise FhirError(410, f"{rtype}/{path[1]} was deleted", code="deleted")
    entry.response = {"fullUrl": f"{base}/{rtype}/{path[1]}", "resource": resource,
                      "response": {"status": "200 OK", "etag": f'W/"{version}"',
                                   "lastModified": resource.get("meta", {}).get("lastUpdated")}}


# --- references ---------------------------------------------------------------------------
def _resolve_references(uow: UnitOfWork, resource: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    """A copy of ``resource`` with every ``reference`` to an entry's fullUrl made
    ``Type/id`` and every conditional reference resolved to its one match."""
    cache: dict[str, str] = {}

    def resolve(reference: str) -> str:
        if reference in refs:
            return refs[reference]
        if reference.startswith(("urn:uuid:", "urn:oid:")):
            raise FhirError(400, f"reference '{reference}' names no entry's fullUrl in this Bundle",
                            code="not-found")
        if "?" in reference and not reference.startswith("#"):
            if reference not in cache:
                cache[reference] = _conditional_reference(uow, reference)
            return cache[reference]
        return reference

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    out[key] = resolve(value)
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(resource)


def _conditional_reference(uow: UnitOfWork, reference: str) -> str:
    rtype, _, query = reference.partition("?")
    rtype = rtype.rsplit("/", 1)[-1]
    if rtype not in RESOURCE_TYPES:
        raise FhirError(400, f"conditional reference '{reference}': unknown type '{rtype}'")
    found = writes.matching_ids(uow, rtype, writes.criteria_of(query))
    if len(found) != 1:
        raise FhirError(412, f"conditional reference '{reference}' matches "
                             f"{'no' if not found else 'more than one'} {rtype}; exactly one is needed",
                        code="not-found" if not found else "multiple-matches")
    return f"{rtype}/{found[0]}"


# --- errors -------------------------------------------------------------------------------
def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _entry_error(exc: FhirError, entry: _Entry) -> FhirError:
    """The error of one entry as the error of the whole transaction, naming the entry."""
    issues = []
    for issue in exc.outcome()["issue"]:
        issue = dict(issue)
        expressions = [entry.label]
        for expr in issue.get("expression") or ():
            if expr.startswith(entry.label):
                continue
            if expr == entry.resource_type or expr.startswith(entry.resource_type + "."):
                expressions.append(f"{entry.label}.resource{expr[len(entry.resource_type):]}")
            else:
                expressions.append(expr)
        issue["expression"] = expressions
        diagnostics = issue.get("diagnostics", "")
        if not diagnostics.startswith(entry.label):
            issue["diagnostics"] = f"{entry.label} ({entry.method} {entry.url}): {diagnostics}"
        issues.append(issue)
    return FhirError(exc.status, issues[0]["diagnostics"], issues=issues)

