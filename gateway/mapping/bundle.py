"""A MappingResult as a FHIR R4 transaction Bundle (what ``gateway convert`` prints).

Why conditional requests: the intents say "the Patient with this NHS number",
not "Patient/123" -- the gateway has no ids until the store resolves them.  A
transaction with conditional PUT/DELETE says exactly that to any FHIR server,
and the ``urn:uuid:`` fullUrls let entries reference each other.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from gateway.mapping.model import MappingResult, ResourceIntent

__all__ = ["conditional_url", "to_transaction_bundle"]


def conditional_url(intent: ResourceIntent) -> str | None:
    """``Patient?identifier=system|value`` for the intent's best match, or None without one."""
    if not intent.matches:
        return None
    match = intent.matches[0]
    token = quote(f"{match.system}|{match.value}", safe=":/|.-_~")
    return f"{intent.resource_type}?identifier={token}"


def _entry(intent: ResourceIntent) -> dict[str, Any] | None:
    url = conditional_url(intent)
    if intent.action == "delete":
        # Never an unconditional DELETE of a whole type: without a match there is nothing to delete.
        return {"request": {"method": "DELETE", "url": url}} if url else None
    # upsert, and merge-into: the non-surviving Patient is written inactive with a
    # link of type replaced-by to the survivor -- FHIR R4's own way to record a merge.
    request = {"method": "PUT", "url": url} if url else {"method": "POST", "url": intent.resource_type}
    return {"fullUrl": intent.full_url, "resource": intent.resource, "request": request}


def to_transaction_bundle(result: MappingResult) -> dict[str, Any]:
    """Render the intents, in order, as a ``transaction`` Bundle (a plain dict)."""
    entries = [e for e in (_entry(i) for i in result.intents) if e is not None]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
