"""Apply a mapping's resource intents to the store: match, merge, version.

This is where "one child, one record" is enforced for feeds:
- an intent finds its resource by its identifiers, in order (NHS number, then the
  sender's MRN; filler then placer appointment id);
- two different NHS numbers are never merged, whatever else matches;
- an older message (by MSH-7) never overwrites what a newer one wrote;
- re-sent content that changes nothing writes no new version.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway.hl7v2.errors import Issue
from gateway.mapping.model import MappingResult, ResourceIntent
from gateway.store import indexer
from gateway.store.ids import new_id
from gateway.store.unit_of_work import Stored, UnitOfWork

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
# Identifier systems of which one resource holds one value: a different value is a
# different person, so such a match is never taken.
EXCLUSIVE_SYSTEMS = {"Patient": (NHS_NUMBER,)}
# Resources whose state a late message could turn back (a no-show into booked, a
# new address into the old one).  Shared reference data (practitioners, locations,
# services), written by nearly every message, is not guarded: that keeps a
# watermark write off every message for no safeguarding value.
GUARDED_TYPES = frozenset({"Patient", "Appointment", "ServiceRequest", "Encounter", "Condition"})


@dataclass(slots=True)
class ApplyOutcome:
    touched: list[str] = field(default_factory=list)  # "Type/id/_history/v"
    issues: list[Issue] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # full_url -> "Type/id"


def apply_intents(uow: UnitOfWork, result: MappingResult, *, source: str = "") -> ApplyOutcome:
    outcome = ApplyOutcome()
    resolved: dict[str, tuple[str, str, Stored | None]] = {}
    # 1. Find (or allot) an id for every intent before writing anything, so
    #    references between intents can be rewritten to real ids.
    allotted: dict[tuple[str, str, str], str] = {}  # same identifier twice in one message -> one id
    for intent in result.intents:
        keys = [(intent.resource_type, m.system, m.value) for m in intent.matches]
        if not keys and intent.same:  # e.g. the same diagnosis twice in one message: one Condition
            keys = [(intent.resource_type, "same", orjson.dumps(intent.same, option=orjson.OPT_SORT_KEYS).decode())]
        earlier = next((allotted[k] for k in keys if k in allotted), None)
        existing = None if earlier else (_find_existing(uow, intent) or _find_same(uow, intent, outcome.ids, source))
        res_id = earlier or (existing.res_id if existing else _new_id())
        for key in keys:
            allotted.setdefault(key, res_id)
        resolved[intent.full_url] = (intent.resource_type, res_id, existing)
        outcome.ids[intent.full_url] = f"{intent.resource_type}/{res_id}"
    # 2. Write them.
    written: set[tuple[str, str]] = set()
    # Upserts first, so a merge (A40) or delete (S17) sees the message's own writes.
    ordered = sorted(result.intents, key=lambda i: i.action != "upsert")
    for intent in ordered:
        res_type, res_id, existing = resolved[intent.full_url]
        if (res_type, res_id) in written:  # written once already by this message: merge onto that
            existing = uow.get(res_type, res_id)
        written.add((res_type, res_id))
        if intent.action == "delete":
            if existing and not existing.deleted and not _is_stale(uow, intent, existing):
                stored = uow.delete(res_type, res_id)
                if stored:
                    outcome.touched.append(_versioned(stored))
            continue
        if intent.action == "merge-into":
            target = resolved.get(intent.merge_target or "")
            if existing is None:
                outcome.issues.append(Issue("W", 204, "the prior patient named in MRG-1 is not known here; "
                                                      "nothing to merge", segment="MRG", field=1))
            elif target and target[1] != res_id:
                _merge_into(uow, existing, target[1], outcome, source)
            continue
        resource = _rewrite_references(intent.resource, outcome.ids)
        if existing is not None and _is_stale(uow, intent, existing):
            outcome.issues.append(Issue(
                "I", 0, f"{res_type} not changed: this message (MSH-7) is older than the newest one "
                        f"already applied", segment="MSH", field=7))
            continue
        merged = _merge(existing.resource if existing and not existing.deleted else None, resource, intent)
        if existing is not None and not existing.deleted and _same(existing.resource, merged):
            _raise_watermark(uow, intent, res_type, res_id)
            continue
        stored = uow.update(res_type, res_id, merged, source=source, before=existing)
        _raise_watermark(uow, intent, res_type, res_id)
        outcome.touched.append(_versioned(stored))
    return outcome


def _new_id() -> str:
    return new_id()


def _versioned(stored: Stored) -> str:
    return f"{stored.res_type}/{stored.res_id}/_history/{stored.version_id}"


def _find_existing(uow: UnitOfWork, intent: ResourceIntent) -> Stored | None:
    exclusive = EXCLUSIVE_SYSTEMS.get(intent.resource_type, ())
    incoming = {i.get("system"): i.get("value") for i in intent.resource.get("identifier") or ()
                if i.get("system") in exclusive}
    for match in intent.matches:
        for res_id in uow.find_by_token(intent.resource_type, "identifier", match.system, match.value):
            stored = _follow_replaced_by(uow, uow.get(intent.resource_type, res_id))
            if stored is None:
                continue
            if _conflicts(stored.resource, incoming):
                continue
            return stored
    return None


def _find_same(uow: UnitOfWork, intent: ResourceIntent, ids: dict[str, str], source: str) -> Stored | None:
    """No identifier (a DG1 without DG1-20): the stored resource this feed wrote earlier for
    the same subject with the same code is this one -- so a resent message adds nothing.
    Only the same feed's resources (meta.source): a GP record's Condition with the same
    code is another record, never overwritten by a hospital diagnosis."""
    if intent.matches or len(intent.same) < 2:
        return None
    from gateway.store.search import matching_ids  # search imports the store modules this one does

    (ref_element, ref_value), *rest = intent.same.items()
    reference = ref_value.get("reference", "") if isinstance(ref_value, dict) else ""
    reference = ids.get(reference, reference)  # this message's placeholder -> Type/id
    if not reference or reference.startswith("urn:"):
        return None
    for res_id in matching_ids(uow, intent.resource_type, [(ref_element, reference)]):
        stored = uow.get(intent.resource_type, res_id)
        if stored is None or stored.deleted or (stored.resource.get("meta") or {}).get("source", "") != source:
            continue
        if all(_same_value(stored.resource.get(element), value) for element, value in rest):
            return stored
    return None


def _same_value(stored: Any, incoming: Any) -> bool:
    """Equal for identity: CodeableConcepts sharing a coding (system + code), or -- without
    codings -- the same text; anything else compared as is."""
    if isinstance(stored, dict) and isinstance(incoming, dict) and ("coding" in incoming or "text" in incoming):
        wanted = {(c.get("system"), c.get("code")) for c in incoming.get("coding") or () if c.get("code")}
        if wanted:
            return any((c.get("system"), c.get("code")) in wanted for c in stored.get("coding") or ())
        return (stored.get("text") or "").strip().lower() == (incoming.get("text") or "").strip().lower() != ""
    return stored == incoming


def _follow_replaced_by(uow: UnitOfWork, stored: Stored | None) -> Stored | None:
    """A merged-away patient (A40) answers for its survivor: later messages that still
    carry the old identifiers land on the surviving record."""
    for _hop in range(5):
        if stored is None:
            return None
        link = next((lk for lk in stored.resource.get("link") or () if lk.get("type") == "replaced-by"), None)
        if link is None:
            return stored
        target = indexer.split_reference(link.get("other", {}).get("reference", ""))
        stored = uow.get(*target) if target else None
    return stored


def _conflicts(resource: dict[str, Any], incoming: dict[str, str]) -> bool:
    """True when the stored resource holds a different value of an exclusive system."""
    if not incoming:
        return False
    for ident in resource.get("identifier") or ():
        system = ident.get("system")
        if system in incoming and ident.get("value") != incoming[system]:
            return True
    return False


def _guard_us(intent: ResourceIntent) -> int | None:
    if not intent.guard_time or intent.resource_type not in GUARDED_TYPES:
        return None
    try:
        return indexer.to_us(datetime.fromisoformat(intent.guard_time.replace("Z", "+00:00")))
    except ValueError:
        return None


def _is_stale(uow: UnitOfWork, intent: ResourceIntent, existing: Stored) -> bool:
    guard = _guard_us(intent)
    if guard is None:
        return False
    stored = _watermark(uow, existing.res_type, existing.res_id)
    return stored is not None and stored > guard


def _watermark(uow: UnitOfWork, res_type: str, res_id: str) -> int | None:
    cache = uow.cache
    if cache is not None and (res_type, res_id) in cache.watermarks:
        return cache.watermarks[(res_type, res_id)]
    row = uow.fetchone("SELECT event_us FROM source_watermarks WHERE res_type=? AND res_id=?", (res_type, res_id))
    value = row[0] if row else None
    if cache is not None:
        cache.watermarks.put((res_type, res_id), value)
    return value


def _raise_watermark(uow: UnitOfWork, intent: ResourceIntent, res_type: str, res_id: str) -> None:
    guard = _guard_us(intent)
    if guard is None:
        return
    if uow.cache is not None:
        current = _watermark(uow, res_type, res_id)
        if current is not None and current >= guard:
            return
        uow.cache.watermarks.put((res_type, res_id), guard)
    uow.execute(
        "INSERT INTO source_watermarks (res_type, res_id, event_us) VALUES (?,?,?) "
        "ON CONFLICT (res_type, res_id) DO UPDATE SET event_us=excluded.event_us "
        "WHERE excluded.event_us > source_watermarks.event_us",
        (res_type, res_id, guard))


def _rewrite_references(node: Any, ids: dict[str, str]) -> Any:
    """Replace placeholder references (urn:uuid:..., or Type/id when re-pointing a
    merged patient) with their resolved Type/id, everywhere in a resource.

    Done on the JSON text: one C-speed serialise, a few replaces and one parse beat
    walking every element in Python on the hot path.
    """
    text = orjson.dumps(node)
    changed = False
    for placeholder, target in ids.items():
        quoted = b'"reference":"' + placeholder.encode() + b'"'
        if quoted in text:
            text = text.replace(quoted, b'"reference":"' + target.encode() + b'"')
            changed = True
    return orjson.loads(text) if changed else node


def _merge(current: dict[str, Any] | None, incoming: dict[str, Any], intent: ResourceIntent) -> dict[str, Any]:
    """Elements the message carries replace the stored ones; ``union`` elements keep
    every distinct entry from both; elements the message does not carry are kept
    (another source may own them, e.g. a GP record's generalPractitioner)."""
    if current is None:
        return incoming
    merged = {k: v for k, v in current.items() if k not in ("id", "meta")}
    if "meta" in current:
        merged["meta"] = {k: v for k, v in current["meta"].items() if k not in ("versionId", "lastUpdated")}
    for key, value in incoming.items():
        if intent.merge.get(key) == "union" and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = _union(merged[key], value)
        else:
            merged[key] = value
    return merged


def _union(old: list[Any], new: list[Any]) -> list[Any]:
    out = list(new)
    keys = {_identity(v) for v in new}
    for item in old:
        if _identity(item) not in keys:
            out.append(item)
    return out


def _identity(item: Any) -> Any:
    if isinstance(item, dict) and "value" in item and "system" in item:
        return ("sv", item.get("system"), item.get("value"))
    return repr(item)


def _same(stored: dict[str, Any], merged: dict[str, Any]) -> bool:
    a = {k: v for k, v in stored.items() if k not in ("id", "meta", "resourceType")}
    b = {k: v for k, v in merged.items() if k not in ("id", "meta", "resourceType")}
    return a == b


def _merge_into(uow: UnitOfWork, old: Stored, survivor_id: str, outcome: ApplyOutcome, source: str) -> None:
    """ADT A40: every reference to the old patient moves to the survivor; the old
    record is kept, inactive, linked ``replaced-by`` (never deleted: its history is
    evidence)."""
    old_ref = f"{old.res_type}/{old.res_id}"
    new_ref = f"{old.res_type}/{survivor_id}"
    for res_type, res_id in uow.referrers(old.res_type, old.res_id):
        if (res_type, res_id) == (old.res_type, old.res_id):
            continue
        stored = uow.get(res_type, res_id)
        if stored is None or stored.deleted:
            continue
        moved = _rewrite_references(stored.resource, {old_ref: new_ref})
        if moved != stored.resource:
            outcome.touched.append(_versioned(uow.update(res_type, res_id, moved, before=stored,
                                                         source=stored.resource.get("meta", {}).get("source", ""))))
    survivor = uow.get(old.res_type, survivor_id)
    if survivor is not None:
        content = copy.deepcopy(survivor.resource)
        links = [lk for lk in content.get("link", []) if lk.get("other", {}).get("reference") != old_ref]
        links.append({"other": {"reference": old_ref}, "type": "replaces"})
        content["link"] = links
        carried = {(i.get("system"), i.get("value")) for i in content.get("identifier", [])}
        for ident in old.resource.get("identifier", []):
            if ident.get("system") == NHS_NUMBER:
                continue
            if (ident.get("system"), ident.get("value")) not in carried:
                content.setdefault("identifier", []).append({**ident, "use": "old"})
        outcome.touched.append(_versioned(uow.update(old.res_type, survivor_id, content, before=survivor,
                                                     source=source)))
    retired = copy.deepcopy(old.resource)
    retired["active"] = False
    retired["link"] = [{"other": {"reference": new_ref}, "type": "replaced-by"}]
    outcome.touched.append(_versioned(uow.update(old.res_type, old.res_id, retired, before=old, source=source)))
