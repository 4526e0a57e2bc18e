"""Synthetic REF^I12/I13/I14/I15 referral messages (tests, benchmarks, the sandbox).

Only made-up children (``gateway.synthetic.make_child``: 999-range NHS numbers).
"""

from __future__ import annotations

from datetime import datetime

from gateway.synthetic import Child, pid_segment

# (code, text) in ICD-10: typical concerns of a community paediatrics referral
CONCERNS = [("F98.0", "Non-organic enuresis"), ("R62.5", "Failure to thrive"),
            ("Z63.8", "Family circumstances of concern"), ("F80.9", "Speech and language delay"),
            ("E66.9", "Obesity")]


def ref_message(child: Child, event: str, *, control_id: str, referral_id: str,
                concerns: list[tuple[str, str]] | None = None, status: str = "",
                reason: str = "", sent: datetime | None = None, with_prd: bool = True) -> str:
    """A REF message for one child's referral.  ``status``: RF1-1 (A, C, R ...);
    ``reason``: RF1-10 (on I14/I15 the closure reason, e.g. DNA); ``concerns``: one DG1 each."""
    sent = sent or datetime(2025, 3, 1, 9, 30)
    stamp = sent.strftime("%Y%m%d%H%M%S")
    concerns = CONCERNS[:3] if concerns is None else concerns
    segments = [
        f"MSH|^~\\&|CHPAS|RXH|FHIRGW|GW|{stamp}||REF^{event}^REF_I12|{control_id}|P|2.5.1",
        f"RF1|{status}|R^Routine^HL70280|MED^Medical^HL70281||O^Outpatient^HL70284|{referral_id}^RXPAS|"
        f"{sent.strftime('%Y%m%d')}||{sent.strftime('%Y%m%d')}|{reason}",
    ]
    if with_prd:
        segments += [
            "PRD|RP^Referring provider^HL70286|Okoro^Ada^^^Dr|||^WPN^PH^^^^^^^^^01632960100||G1234567^GMP",
            "PRD|RT^Referred to provider^HL70286|Whitfield^Jo^^^Dr|||^WPN^PH^^^^^^^^^01632960200~"
            "^NET^Internet^community.paeds@example.nhs.uk||C1234567^GMC|||Community Paediatrics^^^^^^^^^RXCP1",
        ]
    segments += [pid_segment(child), "PD1|||Mill Lane Surgery^^M85001^^^^^^^M85001"]
    segments += [f"DG1|{i}||{code}^{text}^I10||{sent.strftime('%Y%m%d')}|W"
                 for i, (code, text) in enumerate(concerns, 1)]
    segments.append("OBR|1|||COMPAED^Community paediatric assessment^L")
    return "\r".join(segments) + "\r"
