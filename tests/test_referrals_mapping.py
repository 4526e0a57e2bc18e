"""REF mapping as data, without a database: identity, status, closure reason, PRD roles, and
the clear rejections (no concern, no RF1, unknown status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import codes
from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingError
from gateway.referrals.synthetic import ref_message
from gateway.synthetic import make_child

ROOT = Path(__file__).resolve().parent.parent
CHILD = make_child(51)


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def referral_of(engine: MappingEngine, text: str) -> dict:
    result = engine.map(parse_message(text))
    assert result.errors == [], result.errors
    return result.first("ServiceRequest").resource


@pytest.mark.parametrize("event", ["I12", "I13", "I14", "I15"])
def test_every_ref_event_is_supported(engine, event):
    sr = referral_of(engine, ref_message(CHILD, event, control_id="X", referral_id="R-1"))
    assert sr["identifier"][0]["value"] == "R-1"
    assert sr["identifier"][0]["type"]["coding"][0]["code"] == "PLAC"


@pytest.mark.parametrize("event,rf1_1,status", [
    ("I12", "", "active"), ("I12", "P^Pending^HL70283", "active"), ("I13", "", None),
    ("I14", "A", "revoked"), ("I15", "C", "completed"), ("I15", "R", "revoked"), ("I15", "", None)])
def test_status_per_event(engine, event, rf1_1, status):
    sr = referral_of(engine, ref_message(CHILD, event, control_id="X", referral_id="R-1", status=rf1_1))
    assert sr.get("status") == status


def test_closure_reason_only_on_a_closed_referral(engine):
    closed = referral_of(engine, ref_message(CHILD, "I15", control_id="X", referral_id="R-1", status="C",
                                             reason="WNB^Was not brought^L"))
    [ext] = closed["extension"]
    assert ext["url"] == codes.EXT_CLOSURE_REASON
    assert ext["valueCodeableConcept"]["coding"][0]["code"] == "non-attendance"
    open_ = referral_of(engine, ref_message(CHILD, "I12", control_id="X", referral_id="R-1", reason="S^Second opinion^HL70336"))
    assert "extension" not in open_


def test_prd_roles_choose_requester_and_performer(engine):
    result = engine.map(parse_message(ref_message(CHILD, "I12", control_id="X", referral_id="R-1")))
    sr = result.first("ServiceRequest").resource
    by_url = {i.full_url: i for i in result.intents}
    assert by_url[sr["requester"]["reference"]].resource_type == "Practitioner"
    assert by_url[sr["requester"]["reference"]].resource["identifier"][0]["system"] == "https://fhir.hl7.org.uk/Id/gmp-number"
    assert by_url[sr["performer"][0]["reference"]].resource_type == "PractitionerRole"
    assert sr["performer"][0]["display"] == "Dr Jo Whitfield (Community Paediatrics)"


def test_no_concern_is_rejected_naming_dg1_3(engine):
    for event in ("I12", "I13"):
        with pytest.raises(MappingError) as caught:
            engine.map(parse_message(ref_message(CHILD, event, control_id="X", referral_id="R-1", concerns=[])))
        [issue] = caught.value.issues
        assert (issue.severity, issue.code, issue.segment, issue.field) == ("E", 101, "DG1", 3)
    # A cancel or a status update need not repeat the concerns.
    assert referral_of(engine, ref_message(CHILD, "I14", control_id="X", referral_id="R-1", concerns=[]))


def test_missing_rf1_unknown_status_and_empty_rf1_6_are_errors(engine):
    text = ref_message(CHILD, "I12", control_id="X", referral_id="R-1")
    without_rf1 = "\r".join(s for s in text.split("\r") if not s.startswith("RF1"))
    with pytest.raises(MappingError) as caught:
        engine.map(parse_message(without_rf1))
    assert caught.value.issues[-1].code == 100 and caught.value.issues[-1].segment == "RF1"
    result = engine.map(parse_message(ref_message(CHILD, "I15", control_id="X", referral_id="R-1", status="ZZ")))
    assert [(e.code, e.segment, e.field) for e in result.errors] == [(103, "RF1", 1)]
    with pytest.raises(MappingError) as caught:
        engine.map(parse_message(ref_message(CHILD, "I12", control_id="X", referral_id="")))
    assert (caught.value.issues[-1].segment, caught.value.issues[-1].field) == ("RF1", 6)
