"""FHIR operations (``$name``), one module per operation.

| operation | module |
| --- | --- |
| `GET /fhir/Patient/{id}/$missed-appointments` | missed_appointments.py (rules R3) |
| `GET /fhir/CarePlan/{id}/$document` | careplan_document.py |
| `GET /fhir/Subscription/{id}/$status`, `$events` | subscription_status.py |
| `POST /fhir/$import-gp-record` | import_gp_record.py |

(`$everything` lives with search, in search_routes.py.)  This router is mounted
before the generic REST routes so ``/fhir/$import-gp-record`` is not taken for a
create of a type called ``$import-gp-record``.
"""

from fastapi import APIRouter

from gateway.api.operations import careplan_document, import_gp_record, missed_appointments, subscription_status

router = APIRouter()
for _module in (missed_appointments, careplan_document, subscription_status, import_gp_record):
    router.include_router(_module.router)
