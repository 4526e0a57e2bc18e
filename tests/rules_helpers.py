"""Helpers for the rules tests: timelines through MLLP, FHIR reads over HTTP."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime, timedelta, timezone

from gateway import codes
from gateway.hl7v2.ack import ack_code_of
from gateway.ingest.mllp_client import MllpClient
from gateway.synthetic import Child, adt_message, make_child, siu_message

NOW = datetime.now().replace(second=0, microsecond=0)
CARD = ("CARD", "Paediatric cardiology")
DIET = ("DIET", "Dietetics")
SALT = ("SALT", "Speech and language therapy")
PHYS = ("PHYS", "Physiotherapy")
_counter = itertools.count(1)
_sent_base = datetime(2024, 1, 1)


def _next() -> tuple[str, datetime]:
    n = next(_counter)
    return f"R{n:07d}", _sent_base + timedelta(seconds=n)


class Timeline:
    """Builds one child's messages; ``send`` delivers them over MLLP and checks every ACK."""

    def __init__(self, gw, index: int, *, birth_date: str | None = None) -> None:  # noqa: ANN001
        self.gw = gw
        child = make_child(index)
        self.child: Child = dataclasses.replace(child, birth_date=birth_date) if birth_date else child
        self.messages: list[str] = []

    def registered(self) -> "Timeline":
        cid, sent = _next()
        self.messages.append(adt_message(self.child, "A04", control_id=cid, sent=sent))
        return self

    def event(self, n: int, event: str, when: datetime, service: tuple[str, str], *, reason: str = "",
              note: str = "", cancel: str = "") -> "Timeline":
        cid, sent = _next()
        text = siu_message(self.child, n, event, control_id=cid, when=when, sent=sent, service=service)
        if reason:  # SCH-6 on a no-show (e.g. DISCH^Discharged^L)
            text = text.replace("RXPAS|||||ROUTINE", f"RXPAS||||{reason}|ROUTINE", 1)
        if cancel:  # replace the synthetic patient cancellation reason
            text = text.replace("PAT^Patient cancelled^HL70276", cancel, 1)
        if note:
            lines = text.split("\r")
            lines.insert(2, f"NTE|1||{note}")
            text = "\r".join(lines)
        self.messages.append(text)
        return self

    def booked(self, n: int, when: datetime, service: tuple[str, str]) -> "Timeline":
        return self.event(n, "S12", when, service)

    def missed(self, n: int, when: datetime, service: tuple[str, str], **kw) -> "Timeline":  # noqa: ANN003
        return self.event(n, "S12", when, service).event(n, "S26", when, service, **kw)

    def send(self) -> list[str]:
        acks = send(self.gw, *self.messages)
        self.messages = []
        return acks

    def patient_id(self, http) -> str:  # noqa: ANN001
        bundle = http.get("/fhir/Patient", params={"identifier": f"{codes.NHS_NUMBER}|{self.child.nhs_number}"}).json()
        return bundle["entry"][0]["resource"]["id"]


def send(gw, *messages: str) -> list[str]:  # noqa: ANN001
    with MllpClient("127.0.0.1", gw.mllp_port, timeout=30) as client:
        acks = [client.send(m) for m in messages]
    assert [ack_code_of(a) for a in acks] == ["AA"] * len(acks), [a.replace("\r", "\n") for a in acks]
    return acks


def search(http, rtype: str, **params) -> list[dict]:  # noqa: ANN001, ANN003
    params.setdefault("_count", "200")
    response = http.get(f"/fhir/{rtype}", params=params)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


def flags(http, pid: str, code: str, status: str | None = None) -> list[dict]:  # noqa: ANN001
    params = {"patient": f"Patient/{pid}", "code": f"{codes.FLAG_CODES}|{code}"}
    if status:
        params["status"] = status
    return search(http, "Flag", **params)


def tasks(http, pid: str, code: str) -> list[dict]:  # noqa: ANN001
    return search(http, "Task", patient=f"Patient/{pid}", code=f"{codes.TASK_CODES}|{code}")


def ext(resource: dict, url: str) -> list:
    return [e for e in resource.get("extension") or () if e.get("url") == url]


def detail_refs(flag: dict) -> list[str]:
    return [e["valueReference"]["reference"] for e in ext(flag, codes.FLAG_DETAIL)]


def level(flag: dict) -> int:
    return ext(flag, codes.EXT_ESCALATION_LEVEL)[0]["valueInteger"]


def priority(flag: dict) -> str:
    return ext(flag, codes.FLAG_PRIORITY)[0]["valueCodeableConcept"]["coding"][0]["code"]


def marker(http, pid: str, code: str) -> dict:  # noqa: ANN001
    """A marker recorded explicitly by a professional (a Practitioner is the author)."""
    practitioner = http.post("/fhir/Practitioner", json={
        "resourceType": "Practitioner", "name": [{"family": "Marsh", "given": ["Ruth"], "prefix": ["Dr"]}],
        "telecom": [{"system": "phone", "value": "01632 960500"}]}).json()
    response = http.post("/fhir/Flag", json={
        "resourceType": "Flag", "status": "active",
        "code": {"coding": [{"system": codes.FLAG_CODES, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "author": {"reference": f"Practitioner/{practitioner['id']}"}})
    assert response.status_code == 201, response.text
    return response.json()


def utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)
