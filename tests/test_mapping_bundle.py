"""to_transaction_bundle: conditional requests, urn:uuid fullUrls, delete and merge entries."""

import json
from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.bundle import conditional_url, to_transaction_bundle
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import Match, MappingResult, ResourceIntent

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "messages"


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def bundle_for(engine: MappingEngine, name: str) -> dict:
    return to_transaction_bundle(engine.map(parse_message((MESSAGES / name).read_bytes())))


def test_transaction_with_conditional_puts(engine):
    bundle = bundle_for(engine, "siu_s12_v251_full.hl7")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["fullUrl"].startswith("urn:uuid:")
    assert patient["request"] == {"method": "PUT",
                                  "url": "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919"}
    appointment = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Appointment")
    assert appointment["request"]["url"] == \
        "Appointment?identifier=https://fhir.gateway.example/id/careflow_pas/appointment|FA-778812"
    assert appointment["resource"]["participant"][0]["actor"]["reference"] == patient["fullUrl"]
    json.dumps(bundle)  # plain JSON


def test_delete_entry(engine):
    bundle = bundle_for(engine, "siu_s17_delete.hl7")
    delete = next(e for e in bundle["entry"] if e["request"]["method"] == "DELETE")
    assert delete == {"request": {"method": "DELETE", "url": "Appointment?identifier="
                                  "https://fhir.gateway.example/id/careflow_pas/appointment|FA-778812"}}


def test_merge_entry_is_inactive_patient_replaced_by_survivor(engine):
    bundle = bundle_for(engine, "adt_a40_merge.hl7")
    survivor, merged = bundle["entry"]
    assert merged["request"]["url"] == "Patient?identifier=https://fhir.gateway.example/id/rvh/patient|RVH7777777"
    assert merged["resource"]["active"] is False
    assert merged["resource"]["link"][0]["other"]["reference"] == survivor["fullUrl"]


def test_post_without_match_and_no_unconditional_delete():
    result = MappingResult("X^Y", [
        ResourceIntent("Patient", {"resourceType": "Patient"}, full_url="urn:uuid:1"),
        ResourceIntent("Appointment", {"resourceType": "Appointment"}, action="delete", full_url="urn:uuid:2"),
    ])
    bundle = to_transaction_bundle(result)
    assert [e["request"] for e in bundle["entry"]] == [{"method": "POST", "url": "Patient"}]


def test_conditional_url_escapes_query_characters():
    intent = ResourceIntent("Patient", {}, matches=[Match("https://x.example/id", "A&B #1")])
    assert conditional_url(intent) == "Patient?identifier=https://x.example/id|A%26B%20%231"
