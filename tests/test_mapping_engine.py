"""Engine behaviour that is not about one message type: repeatability, isolation, memoisation."""

from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingEngine

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "messages"


@pytest.fixture()
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def strip_urls(result) -> list:
    """Resources with the per-message urn:uuid references blanked, for comparison."""
    urls = {i.full_url: f"#{n}" for n, i in enumerate(result.intents)}

    def walk(obj):
        if isinstance(obj, dict):
            return {k: (urls.get(v, v) if k == "reference" else walk(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj
    return [(i.resource_type, walk(i.resource), i.matches) for i in result.intents]


def test_mapping_twice_gives_equal_but_independent_resources(engine):
    raw = (MESSAGES / "siu_s12_v251_full.hl7").read_bytes()
    first = engine.map(parse_message(raw))
    second = engine.map(parse_message(raw))   # memoised conversions this time
    assert strip_urls(first) == strip_urls(second)
    assert not {i.full_url for i in first.intents} & {i.full_url for i in second.intents}
    # The store may change what it receives; that must not leak into the next message.
    first.first("Practitioner").resource["identifier"][0]["value"] = "CHANGED"
    first.first("Appointment").resource["serviceType"][0]["coding"][0]["code"] = "CHANGED"
    third = engine.map(parse_message(raw))
    assert strip_urls(third) == strip_urls(second)


def test_full_urls_are_unique_uuid_urns(engine):
    import uuid

    result = engine.map(parse_message((MESSAGES / "siu_s12_v251_full.hl7").read_bytes()))
    urls = [i.full_url for i in result.intents]
    assert len(set(urls)) == len(urls)
    for url in urls:
        assert url.startswith("urn:uuid:") and uuid.UUID(url[9:]).version == 4


def test_memoised_conversion_still_reports_its_warning(engine):
    text = (MESSAGES / "siu_s15_cancel_by_patient.hl7").read_bytes().decode().replace("PAT^Cancelled", "ZZ^Snow")
    for _ in range(2):
        result = engine.map(parse_message(text))
        assert [(i.severity, i.code, i.field) for i in result.issues] == [("W", 103, 6)]


def test_same_text_from_two_senders_is_not_confused(engine):
    raw = (MESSAGES / "siu_s12_v251_full.hl7").read_bytes().decode()
    a = engine.map(parse_message(raw))
    b = engine.map(parse_message(raw.replace("|CAREFLOW_PAS|RVH|", "|CAREFLOW_PAS|NORTHGATE|", 1)))
    system_a = a.first("HealthcareService").resource["identifier"][0]["system"]
    system_b = b.first("HealthcareService").resource["identifier"][0]["system"]
    assert (system_a, system_b) == ("https://fhir.gateway.example/id/rvh/healthcare-service",
                                    "https://fhir.gateway.example/id/northgate/healthcare-service")


def test_non_standard_separators_map_the_same(engine):
    raw = (MESSAGES / "siu_s12_v251_full.hl7").read_bytes().decode()
    standard = engine.map(parse_message(raw))
    odd = raw.replace("^", "#").replace("MSH|#~\\&|", "MSH|#~\\&|")
    assert strip_urls(engine.map(parse_message(odd))) == strip_urls(standard)
