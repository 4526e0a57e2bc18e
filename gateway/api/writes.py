"""The write service: every FHIR API write — a single create/update/delete or an
entry of a transaction or batch Bundle — goes through these functions.

They run inside a ``UnitOfWork`` (``store/unit_of_work.py``), the same single write
path HL7 ingest uses: validate, write the version + history + index rows through
the unit of work, and (in ``write_transaction``) turn the changes into outbox
events before the one commit.  Routes open one ``write_transaction`` per request; a
transaction Bundle opens one for all its entries; a batch gives each entry a
savepoint inside one.

The rules chosen where FHIR R4 leaves a choice are listed in docs/api.md
("Versioning and concurrency"); each function's docstring says which it applies.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qsl

from sqlalchemy.engine import Engine

from gateway.api.errors import FhirError
from gateway.api.validation import check_id, check_resource_type, validate_resource
from gateway.store import search as search_module
from gateway.store.ids import new_id
from gateway.store.search import SearchError
from gateway.store.hooks import WriteRejected, run_after_changes
from gateway.store.unit_of_work import Stored, UnitOfWork, VersionConflict, unit_of_work

# A conditional delete removes every match, up to this many; more is a 412.
MAX_CONDITIONAL_DELETE = 100


@dataclass(slots=True)
class WriteOutcome:
    """What one write interaction did, for the HTTP response or a Bundle entry."""

    status: int  # 200 | 201 | 204
    stored: Stored | None  # the version written, or found (conditional create), or None
    message: str  # for Prefer: return=OperationOutcome
    written: bool = True

    @property
    def created(self) -> bool:
        return self.status == 201


@contextmanager
def write_transaction(engine: Engine) -> Iterator[UnitOfWork]:
    """One database transaction for API writes: on success the changes become
    outbox events (same transaction) and everything commits; on any error nothing
    is stored."""
    try:
        with unit_of_work(engine) as uow:
            yield uow
            with refusals_as_outcomes():
                run_after_changes(uow)
    except Exception as exc:
        if any(cls.__name__ == "IntegrityError" for cls in type(exc).__mro__):
            # Two clients wrote the same new id (or version) at once; the loser retries.
            raise FhirError(409, "a concurrent write changed the same resource; retry", code="conflict") from exc
        raise


@contextmanager
def refusals_as_outcomes() -> Iterator[None]:
    """A business rule's refusal (store/hooks.py WriteRejected) answers as an
    OperationOutcome naming the element (422 unless the rule says otherwise)."""
    try:
        yield
    except WriteRejected as exc:
        raise FhirError(exc.status, exc.message, code=exc.code, expression=exc.expression or None) from None


# --- conditional matching -----------------------------------------------------------------
def criteria_of(query: str | list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Search criteria from a query string (``identifier=a|b&x=y``) or pairs,
    without the parameters that only shape a response."""
    pairs = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else list(query)
    return [(k, v) for k, v in pairs if k not in ("_format", "_pretty", "_count", "_summary", "_elements")]


def matching_ids(uow: UnitOfWork, resource_type: str, criteria: list[tuple[str, str]], *,
                 limit: int = 2) -> list[str]:
    """Ids of live resources matching a search (at most ``limit``; enough to tell
    0, 1 or more).  Unknown parameters are a 400: a conditional write must never
    silently ignore part of its condition."""
    if not criteria:
        raise FhirError(400, "a conditional interaction needs search criteria", code="invalid")
    _lock_criteria(uow, resource_type, criteria)
    try:
        finder = getattr(search_module, "matching_ids", None)
        if finder is not None:
            return list(finder(uow, resource_type, criteria))[:limit]
        result = search_module.search(uow, resource_type, criteria + [("_count", str(limit))], with_total=False)
    except SearchError as exc:
        raise FhirError(400, f"conditional criteria: {exc}", code="invalid",
                        expression=[exc.param] if exc.param else None) from None
    return [r["id"] for r in result.resources]


def _lock_criteria(uow: UnitOfWork, resource_type: str, criteria: list[tuple[str, str]]) -> None:
    """PostgreSQL: serialise conditional writes with the same criteria (two replicas
    must not both create "the Patient with this NHS number").  SQLite needs nothing:
    a write transaction there is already exclusive (BEGIN IMMEDIATE)."""
    if uow.dialect == "postgresql":
        key = resource_type + "?" + "&".join(f"{k}={v}" for k, v in sorted(criteria))
        uow.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (key,))


def _lock_row(uow: UnitOfWork, resource_type: str, res_id: str) -> None:
    """PostgreSQL: hold the row while its version is checked and replaced, so two
    concurrent updates cannot both pass the same If-Match."""
    if uow.dialect == "postgresql":
        uow.execute("SELECT 1 FROM resources WHERE res_type=? AND res_id=? FOR UPDATE", (resource_type, res_id))


# --- the interactions ---------------------------------------------------------------------
def prepare(resource_type: str, resource: dict[str, Any]) -> dict[str, Any]:
    """Validate a resource a client sent and strip what the server owns.

    ``meta.versionId`` and ``meta.lastUpdated`` are the server's: whatever the
    client sent there is replaced (the store sets both).  ``meta.source``,
    ``meta.profile``, ``meta.tag`` and ``meta.security`` are the client's and kept.
    """
    check_resource_type(resource, resource_type)
    validate_resource(resource_type, resource)
    return resource


def conditional_create_target(uow: UnitOfWork, resource_type: str, if_none_exist: str) -> str | None:
    """The id of the one resource matching If-None-Exist, None for no match, 412 for more."""
    found = matching_ids(uow, resource_type, criteria_of(if_none_exist))
    if len(found) > 1:
        raise FhirError(412, f"If-None-Exist '{if_none_exist}' matches more than one {resource_type}",
                        code="duplicate")
    return found[0] if found else None


def create(uow: UnitOfWork, resource_type: str, resource: dict[str, Any], *,
           if_none_exist: str | None = None, res_id: str | None = None) -> WriteOutcome:
    """POST: the server assigns the id (any id in the body is ignored, as R4 says).

    ``If-None-Exist``: no match creates; one match answers 200 with that resource
    and writes nothing; more than one is 412.
    """
    resource = {k: v for k, v in resource.items() if k != "id"}
    prepare(resource_type, resource)
    if if_none_exist:
        existing_id = conditional_create_target(uow, resource_type, if_none_exist)
        if existing_id is not None:
            return found_existing(uow, resource_type, existing_id)
    with refusals_as_outcomes():
        stored = uow.create(resource_type, resource, res_id=res_id or new_id())
    return WriteOutcome(201, stored, f"created {stored.ref} (version 1)")


def found_existing(uow: UnitOfWork, resource_type: str, res_id: str) -> WriteOutcome:
    existing = uow.get(resource_type, res_id)
    return WriteOutcome(200, existing, f"{existing.ref} already matches If-None-Exist; nothing written",
                        written=False)


def update(uow: UnitOfWork, resource_type: str, res_id: str, resource: dict[str, Any], *,
           if_match: int | None = None, id_required: bool = True) -> WriteOutcome:
    """PUT Type/id: a new version; update-as-create when the id is new (201).

    The body's id must equal the URL's (400 otherwise).  Without If-Match a deleted
    resource is revived as a new version (201: it did not exist for readers).  With
    If-Match the version must be the current one (412 otherwise); If-Match on a
    deleted resource is 409 (what the client holds was deleted).
    """
    check_id(res_id)
    body_id = resource.get("id")
    if body_id is None and id_required:
        raise FhirError(400, f"the resource has no id; PUT {resource_type}/{res_id} needs \"id\": \"{res_id}\"",
                        code="invalid", expression=[f"{resource_type}.id"])
    if body_id is not None and body_id != res_id:
        raise FhirError(400, f"the resource's id '{body_id}' does not match the target's '{res_id}'",
                        code="invalid", expression=[f"{resource_type}.id"])
    prepare(resource_type, resource)
    _lock_row(uow, resource_type, res_id)
    before = uow.get(resource_type, res_id)
    if if_match is not None:
        if before is None:
            raise FhirError(412, f"If-Match: {resource_type}/{res_id} does not exist", code="conflict")
        if before.deleted:
            raise FhirError(409, f"{resource_type}/{res_id} was deleted (version {before.version_id}); "
                                 f"PUT without If-Match to re-create it", code="conflict")
    try:
        with refusals_as_outcomes():
            stored = uow.update(resource_type, res_id, resource, expected_version=if_match, before=before)
    except VersionConflict as exc:
        raise FhirError(412, f"If-Match failed: {exc}", code="conflict") from None
    if before is None or before.deleted:
        return WriteOutcome(201, stored, f"created {stored.ref} (version {stored.version_id})")
    return WriteOutcome(200, stored, f"updated {stored.ref} to version {stored.version_id}")


def conditional_update_target(uow: UnitOfWork, resource_type: str, criteria: list[tuple[str, str]],
                              resource: dict[str, Any], *, if_match: int | None = None) -> str | None:
    """Which resource PUT Type?criteria writes: the one match; with no match the
    body's id (update-as-create; 409 if that id exists and does not match) or None
    (a new id).  More than one match is 412."""
    found = matching_ids(uow, resource_type, criteria)
    if len(found) > 1:
        raise FhirError(412, f"the criteria match more than one {resource_type}", code="multiple-matches")
    if found:
        return found[0]
    body_id = resource.get("id")
    if if_match is not None:
        raise FhirError(412, f"If-Match given, but no {resource_type} matches the criteria", code="conflict")
    if body_id:
        existing = uow.get(resource_type, str(body_id))
        if existing is not None and not existing.deleted:
            raise FhirError(409, f"no {resource_type} matches the criteria, but {resource_type}/{body_id} "
                                 f"exists and does not match them", code="conflict")
        return str(body_id)
    return None


def conditional_update(uow: UnitOfWork, resource_type: str, criteria: list[tuple[str, str]],
                       resource: dict[str, Any], *, if_match: int | None = None) -> WriteOutcome:
    """PUT Type?criteria: no match creates, one match updates it, more than one is 412."""
    target = conditional_update_target(uow, resource_type, criteria, resource, if_match=if_match)
    if target is None:
        return create(uow, resource_type, resource)
    return update(uow, resource_type, target, resource, if_match=if_match, id_required=False)


def delete(uow: UnitOfWork, resource_type: str, res_id: str, *, if_match: int | None = None) -> WriteOutcome:
    """DELETE Type/id: a deletion version (history keeps every earlier one).

    Deleting an unknown or already-deleted resource writes nothing and still
    answers 204 (R4: "or if the resource does not exist at all").  If-Match against
    a live resource must name its current version (412 otherwise).
    """
    check_id(res_id)
    _lock_row(uow, resource_type, res_id)
    before = uow.get(resource_type, res_id)
    if before is None or before.deleted:
        what = "is not known" if before is None else "was already deleted"
        return WriteOutcome(204, None, f"{resource_type}/{res_id} {what}; nothing to delete", written=False)
    try:
        stored = uow.delete(resource_type, res_id, expected_version=if_match)
    except VersionConflict as exc:
        raise FhirError(412, f"If-Match failed: {exc}", code="conflict") from None
    return WriteOutcome(204, stored, f"deleted {resource_type}/{res_id} (version {stored.version_id})")


def conditional_delete(uow: UnitOfWork, resource_type: str, criteria: list[tuple[str, str]]) -> WriteOutcome:
    """DELETE Type?criteria: deletes every match ("multiple"), up to
    MAX_CONDITIONAL_DELETE; more than that is 412 and deletes nothing."""
    found = matching_ids(uow, resource_type, criteria, limit=MAX_CONDITIONAL_DELETE + 1)
    if len(found) > MAX_CONDITIONAL_DELETE:
        raise FhirError(412, f"the criteria match more than {MAX_CONDITIONAL_DELETE} {resource_type} "
                             f"resources; narrow them", code="too-costly")
    last = None
    for res_id in found:
        last = uow.delete(resource_type, res_id)
    if not found:
        return WriteOutcome(204, None, f"no {resource_type} matches; nothing deleted", written=False)
    return WriteOutcome(204, last if len(found) == 1 else None,
                        f"deleted {len(found)} {resource_type} resource(s): {', '.join(found)}")


def parse_if_match(value: str | None) -> int | None:
    """``W/"3"`` (or ``"3"`` or ``3``) -> 3; absent -> None; anything else 400."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise FhirError(400, f"If-Match '{value}' is not a version ETag like W/\"3\"", code="invalid")
    return int(text)
