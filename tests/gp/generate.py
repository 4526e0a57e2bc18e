"""Synthetic bulk NDJSON for tests and bench/import.py: made-up children (999 test-range
NHS numbers), each with Conditions, Observations and Appointments referring back to them."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.synthetic import nhs_check_digit

SCT = "http://snomed.info/sct"


def lines(total: int, *, per_child: int = 10, seed: int = 0):
    """``total`` resources: one Patient then ``per_child - 1`` resources about them, repeated."""
    child = 0
    n = 0
    numbers = _nhs_numbers(seed)
    while n < total:
        child += 1
        pid = f"p{seed}-{child}"
        yield {"resourceType": "Patient", "id": pid,
               "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": next(numbers)}],
               "name": [{"family": "Bulk", "given": [f"Child{child}"]}], "gender": "female",
               "birthDate": "2014-03-01"}
        n += 1
        for k in range(1, per_child):
            if n >= total:
                return
            if k % 3 == 0:
                yield {"resourceType": "Appointment", "id": f"a{child}-{k}",
                       "status": "noshow" if k % 2 else "fulfilled",
                       "start": "2024-05-01T10:00:00Z", "end": "2024-05-01T10:15:00Z",
                       "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}]}
            elif k % 3 == 1:
                yield {"resourceType": "Observation", "id": f"o{child}-{k}", "status": "final",
                       "code": {"coding": [{"system": SCT, "code": "27113001", "display": "Body weight"}]},
                       "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-01-02T09:00:00Z",
                       "valueQuantity": {"value": 20 + k, "unit": "kg", "system": "http://unitsofmeasure.org",
                                         "code": "kg"}}
            else:
                yield {"resourceType": "Condition", "id": f"c{child}-{k}",
                       "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                      "condition-clinical", "code": "active"}]},
                       "code": {"coding": [{"system": SCT, "code": "195967001", "display": "Asthma"}]},
                       "subject": {"reference": f"Patient/{pid}"}}
            n += 1


def _nhs_numbers(seed: int):
    """Distinct valid test-range NHS numbers (999 + 6 digits + check digit), in order."""
    for n in range(200_000 + seed * 100_000, 1_000_000):
        first9 = f"999{n:06d}"
        check = nhs_check_digit(first9)
        if check is not None:
            yield first9 + str(check)


def write(path: Path, total: int, **kwargs) -> Path:
    with open(path, "wb") as fh:
        for resource in lines(total, **kwargs):
            fh.write(orjson.dumps(resource) + b"\n")
    return path
