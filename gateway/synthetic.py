"""Synthetic children and HL7 v2 messages: for tests, benchmarks and the sandbox.

Only made-up people.  NHS numbers come from the 999 test range with valid Modulus
11 check digits, so they pass validation and can never be a real patient's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

GIVEN = ["Amara", "Ben", "Chloe", "Dev", "Ella", "Finn", "Grace", "Hari", "Isla", "Jay", "Kai", "Lila",
         "Milo", "Nia", "Oscar", "Priya", "Quinn", "Rosa", "Sami", "Tia"]
FAMILY = ["Ashworth", "Bellamy", "Carrow", "Dunmore", "Ellery", "Fenwick", "Garside", "Holloway",
          "Ingram", "Jessop", "Kershaw", "Lindqvist", "Marlow", "Nettleton", "Okafor", "Pendry"]
SERVICES = [("CARD", "Paediatric cardiology"), ("DIET", "Dietetics"), ("SALT", "Speech and language therapy"),
            ("PHYS", "Physiotherapy"), ("ENDO", "Paediatric endocrinology"), ("OPTH", "Orthoptics")]


def nhs_check_digit(first9: str) -> int | None:
    total = sum(int(d) * w for d, w in zip(first9, range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def synthetic_nhs_number(n: int) -> str:
    """The n-th valid NHS number of the 999 test range (deterministic)."""
    candidate = n
    while True:
        first9 = f"999{candidate % 1_000_000:06d}"
        check = nhs_check_digit(first9)
        if check is not None:
            return first9 + str(check)
        candidate += 1_000_003  # skip numbers whose check digit would be 10


@dataclass(frozen=True, slots=True)
class Child:
    index: int
    nhs_number: str
    mrn: str
    family: str
    given: str
    birth_date: str  # YYYYMMDD
    sex: str


def make_child(index: int, seed: int = 7) -> Child:
    rng = random.Random(seed * 1_000_003 + index)
    birth = datetime(2010, 1, 1) + timedelta(days=rng.randrange(0, 12 * 365))
    return Child(index, synthetic_nhs_number(index * 7 + 11), f"RX{100000 + index}", rng.choice(FAMILY),
                 rng.choice(GIVEN), birth.strftime("%Y%m%d"), rng.choice("MF"))


def pid_segment(child: Child) -> str:
    return (f"PID|1||{child.nhs_number}^^^NHS^NH~{child.mrn}^^^RXH^MR||{child.family}^{child.given}^^^^^L||"
            f"{child.birth_date}|{child.sex}|||1 Mill Lane^^Wolverhampton^^WV1 1AA^GBR^H||"
            f"01632960{child.index % 1000:03d}^PRN^PH")


def siu_message(child: Child, appointment_no: int, event: str, *, control_id: str, when: datetime,
                sent: datetime | None = None, service: tuple[str, str] | None = None) -> str:
    """An SIU^S12/S14/S15/S26 for one child's appointment (same SCH ids across events)."""
    status = {"S12": "Booked", "S13": "Booked", "S14": "Booked", "S15": "Cancelled", "S26": "Noshow"}[event]
    sent = sent or datetime(2025, 1, 1)
    code, name = service or SERVICES[appointment_no % len(SERVICES)]
    start = when.strftime("%Y%m%d%H%M")
    appt = f"A{child.index:06d}-{appointment_no:03d}"
    cancel = "|PAT^Patient cancelled^HL70276" if event == "S15" else "|"
    return "\r".join([
        f"MSH|^~\\&|RXPAS|RXH|FHIRGW|GW|{sent.strftime('%Y%m%d%H%M%S')}||SIU^{event}^SIU_S12|{control_id}|P|2.5.1",
        f"SCH|{appt}^RXPAS|{appt}F^RXPAS||||{cancel[1:]}|ROUTINE^Routine^HL70276|FOLLOWUP^Follow-up|20|min|"
        f"^^M20^{start}^{start}||||||||||||||{status}",
        "TQ1|1||||||" + start + "00|" + (when + timedelta(minutes=20)).strftime("%Y%m%d%H%M") + "00",
        pid_segment(child),
        "PV1|1|O|PAED^^^RXH||||C1234567^Whitfield^Jo^^^Dr^^^GMC",
        "RGS|1|A",
        f"AIS|1|A|{code}^{name}^L|{start}00|0|min|20|min",
        "AIP|1|A|C1234567^Whitfield^Jo^^^Dr^^^GMC|CON^Consultant",
        "AIL|1|A|PAED^CLINIC1^^RXH^^^^^Paediatric outpatients",
    ]) + "\r"


def adt_message(child: Child, event: str, *, control_id: str, sent: datetime | None = None) -> str:
    sent = sent or datetime(2025, 1, 1)
    return "\r".join([
        f"MSH|^~\\&|RXPAS|RXH|FHIRGW|GW|{sent.strftime('%Y%m%d%H%M%S')}||ADT^{event}^ADT_A01|{control_id}|P|2.5.1",
        f"EVN|{event}|{sent.strftime('%Y%m%d%H%M%S')}",
        pid_segment(child),
        "PD1|||Mill Lane Surgery^^M85001^^^^^^^M85001|G1234567^Okoro^Ada^^^Dr",
        "PV1|1|O",
    ]) + "\r"


def siu_mix(children: int, messages: int, seed: int = 1) -> list[str]:
    """A realistic feed: each appointment booked (S12), sometimes modified (S14),
    sometimes missed (S26).  Control ids are unique; order is feed order."""
    rng = random.Random(seed)
    out: list[str] = []
    base = datetime(2025, 3, 3, 9, 0)
    booked: list[tuple[int, int, datetime]] = []
    n = 0
    while len(out) < messages:
        roll = rng.random()
        if booked and roll < 0.35:
            child_index, appt_no, when = booked[rng.randrange(len(booked))]
            event = "S26" if roll < 0.15 else "S14"
        else:
            child_index = rng.randrange(children)
            appt_no = rng.randrange(1000)
            when = base + timedelta(days=rng.randrange(0, 300), minutes=15 * rng.randrange(0, 32))
            booked.append((child_index, appt_no, when))
            event = "S12"
        n += 1
        out.append(siu_message(make_child(child_index), appt_no, event, control_id=f"MSG{n:08d}", when=when,
                               sent=datetime(2025, 1, 1) + timedelta(seconds=n)))
    return out
