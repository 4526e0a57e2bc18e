"""The CapabilityStatement, generated from what is really implemented.

The interactions listed here are the routes in fhir.py / search_routes.py and the
Bundle processing in transaction.py; the conditional-delete mode follows
writes.conditional_delete ("multiple"), the search parameters come from the same
table that drives indexing and search.  tests/test_api_rest.py checks it against
the R4B CapabilityStatement model and against the server's behaviour.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__, codes
from gateway.notify.topics import advertise_topics
from gateway.store.search_params import RESOURCE_TYPES, params_for

# Per-type interactions served for every type in RESOURCE_TYPES.
TYPE_INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "history-type", "create",
                     "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")

# The $operations served (gateway/api/operations/, $everything in search_routes.py).
TYPE_OPERATIONS = {
    "Patient": (("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything"),
                ("missed-appointments", f"{codes.BASE}/OperationDefinition/Patient-missed-appointments")),
    "CarePlan": (("document", f"{codes.BASE}/OperationDefinition/CarePlan-document"),),
}
SYSTEM_OPERATIONS = (("import-gp-record", f"{codes.BASE}/OperationDefinition/import-gp-record"),)

_TYPE_DOCS = {"_id": "Logical id of the resource"}


def capability_statement(base: str) -> dict[str, Any]:
    resources = []
    for rtype in RESOURCE_TYPES:
        params = [
            {"name": p.name, "type": p.type if p.type != "uri" else "uri",
             "definition": f"http://hl7.org/fhir/SearchParameter/{rtype}-{p.name.lstrip('_')}"
             if not p.name.startswith("_") else f"http://hl7.org/fhir/SearchParameter/Resource-{p.name[1:]}"}
            for p in params_for(rtype).values()
        ]
        resources.append({
            "type": rtype,
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "multiple",
            "searchParam": params,
        })
    advertise_topics(resources)
    for entry in resources:
        entry.setdefault("operation", []).extend(
            {"name": name, "definition": url} for name, url in TYPE_OPERATIONS.get(entry["type"], ()))
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "kind": "instance",
        "software": {"name": "FHIR safeguarding gateway", "version": __version__},
        "implementation": {"description": "HL7 v2 and GP-record gateway joining up children's missed appointments",
                           "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{"mode": "server", "resource": resources,
                  "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                  "operation": [{"name": name, "definition": url} for name, url in SYSTEM_OPERATIONS]}],
    }
