"""Searchset Bundles: entries, paging links, included resources, _summary/_elements.

The store (``gateway.store.search``) answers *which* resources; this module shapes
*how* they are returned.  Links are always GET URLs (also for POST ``_search``), and
next/previous carry an opaque keyset cursor (``_cursor``) instead of an offset.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

from gateway.store.search import SearchResult

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "Resource encoded in summary mode"}
_ALWAYS = ("resourceType", "id", "meta")


@lru_cache(maxsize=None)
def summary_elements(resource_type: str) -> frozenset[str]:
    """The elements FHIR marks ``isSummary`` for a type, from the fhir.resources R4B
    model metadata (R4B's summary flags match R4's for the types served here)."""
    try:
        from fhir.resources.R4B import get_fhir_model_class

        model = get_fhir_model_class(resource_type)
    except Exception:  # an unknown type: keep the mandatory minimum
        return frozenset(_ALWAYS)
    names = {field.alias or name for name, field in model.model_fields.items()
             if (field.json_schema_extra or {}).get("summary_element_property")}
    return frozenset(names | set(_ALWAYS))


def _mark_subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag") or () if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    resource["meta"] = meta
    return resource


def shape(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """Apply _summary / _elements to one resource (a copy; the input is not changed)."""
    if summary in ("true", "text", "data"):
        if summary == "true":
            keep = summary_elements(resource.get("resourceType", ""))
            out = {k: v for k, v in resource.items() if k in keep}
        elif summary == "text":
            out = {k: v for k, v in resource.items() if k in (*_ALWAYS, "text")}
        else:
            out = {k: v for k, v in resource.items() if k != "text"}
        return _mark_subsetted(out)
    if elements:
        wanted = set(elements) | set(_ALWAYS)
        return _mark_subsetted({k: v for k, v in resource.items() if k in wanted})
    return resource


def page_url(base: str, path: str, params: list[tuple[str, str]]) -> str:
    return f"{base}/{path}?{urlencode(params)}" if params else f"{base}/{path}"


def searchset(result: SearchResult, base: str, path: str, cursor: str | None = None) -> dict[str, Any]:
    """The Bundle for one page.  ``path`` is what the links point at (``Appointment``,
    ``Patient/1/$everything``)."""
    req = result.request
    params = [*(req.used if req else []), *(req.options if req else [])]
    summary = req.summary if req else None
    elements = req.elements if req else None
    links = [{"relation": "self", "url": page_url(base, path, params + ([("_cursor", cursor)] if cursor else []))}]
    if result.next_cursor:
        links.append({"relation": "next", "url": page_url(base, path, params + [("_cursor", result.next_cursor)])})
    if result.prev_cursor:
        links.append({"relation": "previous",
                      "url": page_url(base, path, params + [("_cursor", result.prev_cursor)])})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    if summary == "count":
        return bundle
    entries = [_entry(base, shape(r, summary, elements), "match") for r in result.resources]
    entries += [_entry(base, shape(r, summary, elements), "include") for r in result.included]
    bundle["entry"] = entries
    return bundle


def _entry(base: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource,
            "search": {"mode": mode}}
