"""Datatype converters (gateway.mapping.datatypes), fed real ER7 field text."""

from pathlib import Path

import pytest

from gateway.hl7v2.parser import DEFAULT_ENCODING, Encoding
from gateway.mapping.datatypes import (
    CONVERTERS,
    cwe_to_codeable_concept,
    cx_to_identifier,
    ei_to_identifier,
    pl_to_location,
    split_repetition,
    xad_to_address,
    xcn_to_practitioner,
    xon_to_organization,
    xpn_to_human_name,
    xtn_to_contact_point,
)
from gateway.mapping.engine import MappingEngine

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(MAPPINGS)


@pytest.fixture()
def ctx(engine):
    context = engine.new_context()
    context.sender = "rvh"
    context.at("PID", 1, 3, 1)
    return context


def c(raw: str, enc: Encoding = DEFAULT_ENCODING) -> list[str]:
    return split_repetition(raw, enc)


# -- XPN -------------------------------------------------------------------------------------------
def test_xpn_full_name(ctx):
    name = xpn_to_human_name(c("WILLIAMS^AMELIA^ROSE^JR^MISS^^L"), ctx)
    assert name == {"use": "official", "family": "WILLIAMS", "given": ["AMELIA", "ROSE"],
                    "prefix": ["MISS"], "suffix": ["JR"]}


@pytest.mark.parametrize("name_type, use", [("L", "official"), ("D", "usual"), ("M", "maiden"),
                                            ("N", "nickname"), ("A", "anonymous"), ("l", "official")])
def test_xpn_name_type_to_use(ctx, name_type, use):
    assert xpn_to_human_name(c(f"SMITH^JO^^^^^{name_type}"), ctx)["use"] == use


def test_xpn_unknown_name_type_leaves_use_out(ctx):
    assert "use" not in xpn_to_human_name(c("SMITH^JO^^^^^Q"), ctx)


def test_xpn_surname_prefix_subcomponent(ctx):
    assert xpn_to_human_name(c("BERG&VAN^ANNA"), ctx)["family"] == "VAN BERG"


def test_xpn_escapes_are_decoded(ctx):
    name = xpn_to_human_name(c("O'NEILL^SIOBH\\XC381\\N"), ctx)
    assert name["given"] == ["SIOBHÁN"]
    escaped = xpn_to_human_name(c("SMITH\\T\\JONES^ALEX"), ctx)
    assert escaped["family"] == "SMITH&JONES"  # an escaped & is text, not a sub-component separator


def test_xpn_validity_period_v25_and_v27(ctx):
    v25 = xpn_to_human_name(c("SMITH^JO^^^^^L^^^20200101&20231231"), ctx)
    assert v25["period"] == {"start": "2020-01-01", "end": "2023-12-31"}
    v27 = xpn_to_human_name(c("SMITH^JO^^^^^L^^^^^20200101"), ctx)
    assert v27["period"] == {"start": "2020-01-01"}


def test_xpn_empty_is_none(ctx):
    assert xpn_to_human_name(c("^^^^^^L"), ctx) is None


# -- CX --------------------------------------------------------------------------------------------
def test_cx_mrn_uses_namespace_system(ctx):
    ident = cx_to_identifier(c("RVH1234567^^^RVH^MR"), ctx)
    assert ident == {"system": "https://fhir.gateway.example/id/rvh/patient", "value": "RVH1234567",
                     "type": {"coding": [{"system": V2_0203, "code": "MR"}]}}


def test_cx_oid_authority_is_urn_oid(ctx):
    ident = cx_to_identifier(c("A1^^^&1.2.826.0.1.999&ISO^MR"), ctx)
    assert ident["system"] == "urn:oid:1.2.826.0.1.999"


def test_cx_without_authority_uses_sender_namespace(ctx):
    assert cx_to_identifier(c("12345"), ctx)["system"] == "https://fhir.gateway.example/id/rvh/patient"


@pytest.mark.parametrize("raw", [
    "9434765919^^^NHS^NH",
    "9434765919^^^NHSNBR",
    "9434765919^^^NHSNMBR",
    "9434765919^^^^NH",
    "9434765919^^^&2.16.840.1.113883.2.1.4.1&ISO",
    "943 476 5919^^^NHS",
])
def test_cx_nhs_number_forms(ctx, raw):
    ident = cx_to_identifier(c(raw), ctx)
    assert ident["system"] == NHS
    assert ident["value"] == "9434765919"
    assert ctx.issues == []


def test_cx_nhs_number_failing_check_digit_is_local_with_warning(ctx):
    ctx.at("PID", 1, 3, 2)
    ident = cx_to_identifier(c("9434765918^^^NHS^NH"), ctx)
    assert ident["system"] == "https://fhir.gateway.example/id/rvh/nhs-number-unverified"
    assert ident["value"] == "9434765918"
    assert "type" not in ident or "coding" not in ident["type"]
    [issue] = ctx.issues
    assert (issue.severity, issue.code, issue.segment, issue.field, issue.repetition) == ("W", 102, "PID", 3, 2)
    assert "check digit" in issue.text and "9434765918" in issue.text


def test_cx_nhs_authority_only_applies_to_patients(ctx):
    # An organization "assigned by NHS" is not an NHS number.
    ident = cx_to_identifier(c("Y12345^^^NHS"), ctx, kind="organization")
    assert ident["system"] == "https://fhir.gateway.example/id/nhs/organization"


def test_cx_period(ctx):
    ident = cx_to_identifier(c("X1^^^RVH^MR^^20200101^20251231"), ctx)
    assert ident["period"] == {"start": "2020-01-01", "end": "2025-12-31"}


def test_cx_empty_value_is_none(ctx):
    assert cx_to_identifier(c("^^^RVH^MR"), ctx) is None


# -- EI / HD ---------------------------------------------------------------------------------------
def test_ei_namespace_and_universal_id(ctx):
    assert ei_to_identifier(c("A1^CAREFLOW_PAS"), ctx, "appointment")["system"] == \
        "https://fhir.gateway.example/id/careflow_pas/appointment"
    assert ei_to_identifier(c("A1^EPR^2.16.840.1.999.1^ISO"), ctx, "appointment")["system"] == \
        "urn:oid:2.16.840.1.999.1"
    assert ei_to_identifier(c("A1^^https://pas.example/ids^URI"), ctx, "appointment")["system"] == \
        "https://pas.example/ids"
    assert ei_to_identifier(c("A1"), ctx, "appointment", "FILL")["type"]["coding"][0]["code"] == "FILL"


def test_hd_converter(engine, ctx):
    convert = CONVERTERS["HD[uri]"]("HD[uri]", {"kind": "facility"}, {})
    assert convert(c("RVH"), ctx, None) == "https://fhir.gateway.example/id/rvh/facility"
    assert convert(c("^1.2.3^ISO"), ctx, None) == "urn:oid:1.2.3"
    assert convert(c(""), ctx, None) is None


# -- XAD -------------------------------------------------------------------------------------------
def test_xad_home_address(ctx):
    address = xad_to_address(c("12 Orchard Way^Flat 1^Riverside^Wessex^RV1 2AB^GBR^H^^Riverside County"), ctx)
    assert address == {"line": ["12 Orchard Way", "Flat 1"], "city": "Riverside", "district": "Riverside County",
                       "state": "Wessex", "postalCode": "RV1 2AB", "country": "GBR", "use": "home"}


def test_xad_mailing_and_escapes(ctx):
    address = xad_to_address(c("Rose \\T\\ Crown Cottages^^Riverside^^RV2 5CD^^M"), ctx)
    assert address["line"] == ["Rose & Crown Cottages"]
    assert address["type"] == "postal" and "use" not in address


def test_xad_validity_period(ctx):
    address = xad_to_address(c("1 Road^^Town^^^^H^^^^^20190101&20211231"), ctx)
    assert address["period"] == {"start": "2019-01-01", "end": "2021-12-31"}


def test_xad_empty_is_none(ctx):
    assert xad_to_address(c("^^^^^^H"), ctx) is None


# -- XTN -------------------------------------------------------------------------------------------
def test_xtn_v25_components(ctx):
    assert xtn_to_contact_point(c("^PRN^PH^^44^1632^960123"), ctx) == \
        {"system": "phone", "value": "+44 1632 960123", "use": "home"}


def test_xtn_mobile_and_extension(ctx):
    assert xtn_to_contact_point(c("^PRN^CP^^44^7700^900123"), ctx)["use"] == "mobile"
    assert xtn_to_contact_point(c("^WPN^PH^^^01632^960000^42"), ctx)["value"] == "01632 960000 ext. 42"


def test_xtn_v23_formatted_number_and_default_use(ctx):
    assert xtn_to_contact_point(c("(01632) 960555"), ctx, default_use="home") == \
        {"system": "phone", "value": "(01632) 960555", "use": "home"}
    # A sent use code wins over the default, even when it maps to no FHIR use.
    assert "use" not in xtn_to_contact_point(c("01632 960555^ASN"), ctx, default_use="home")


def test_xtn_email(ctx):
    assert xtn_to_contact_point(c("^NET^Internet^family@example.org"), ctx) == \
        {"system": "email", "value": "family@example.org"}
    assert xtn_to_contact_point(c("family@example.org"), ctx)["system"] == "email"


def test_xtn_unformatted_number_component_12(ctx):
    assert xtn_to_contact_point(c("^PRN^PH^^^^^^^^^+441632960999"), ctx)["value"] == "+441632960999"


def test_xtn_fax(ctx):
    assert xtn_to_contact_point(c("^WPN^FX^^44^1632^960001"), ctx)["system"] == "fax"


# -- CWE -------------------------------------------------------------------------------------------
def test_cwe_codings_and_original_text(ctx):
    concept = cwe_to_codeable_concept(c("271737000^Anaemia^SCT^D64.9^Anaemia, unspecified^I10^^^Low blood"), ctx)
    assert concept == {"coding": [
        {"system": "http://snomed.info/sct", "code": "271737000", "display": "Anaemia"},
        {"system": "http://hl7.org/fhir/sid/icd-10", "code": "D64.9", "display": "Anaemia, unspecified"},
    ], "text": "Low blood"}


def test_cwe_hl7_table_and_local_systems(ctx):
    assert cwe_to_codeable_concept(c("FOLLOWUP^Follow-up^HL70277"), ctx)["coding"][0]["system"] == \
        "http://terminology.hl7.org/CodeSystem/v2-0277"
    # Local code systems are per sender, so two PASs' "L" codes never collide.
    assert cwe_to_codeable_concept(c("X^Y^L"), ctx)["coding"][0]["system"] == \
        "https://fhir.gateway.example/CodeSystem/rvh/l"
    assert "system" not in cwe_to_codeable_concept(c("X^Y"), ctx)["coding"][0]


def test_cwe_text_only(ctx):
    assert cwe_to_codeable_concept(c("^Headache"), ctx) == {"text": "Headache"}
    assert cwe_to_codeable_concept(c(""), ctx) is None


def test_cwe_translation_prepends_mapped_code(engine, ctx):
    convert = CONVERTERS["CWE[CodeableConcept]"](
        "CWE[CodeableConcept]",
        {"codes": "cancellation-reason", "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"},
        engine.new_context().codes)
    concept = convert(c("PAT^Cancelled by parent^L"), ctx, None)
    assert concept["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                                    "code": "pat", "display": "Patient"}
    assert concept["coding"][1]["code"] == "PAT"


# -- XCN / XON / PL (resources implied by a field) ------------------------------------------------
def test_xcn_creates_one_practitioner_per_identifier(ctx):
    ref = xcn_to_practitioner(c("7012345^PATEL^ANIKA^^^DR^^^GMC"), ctx)
    again = xcn_to_practitioner(c("7012345^PATEL^ANIKA^^^DR^^^GMC"), ctx)
    assert ref["reference"] == again["reference"] and ref["reference"].startswith("urn:uuid:")
    assert ref["display"] == "DR ANIKA PATEL"
    [intent] = ctx.intents
    assert intent.resource_type == "Practitioner"
    assert intent.resource["identifier"] == [{"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "7012345"}]
    assert intent.resource["name"] == [{"family": "PATEL", "given": ["ANIKA"], "prefix": ["DR"]}]
    assert [(m.system, m.value) for m in intent.matches] == [("https://fhir.hl7.org.uk/Id/gmc-number", "7012345")]


def test_xcn_default_system_when_no_authority(ctx):
    xcn_to_practitioner(c("G7654321^OKAFOR^GRACE"), ctx, default_system="https://fhir.nhs.uk/Id/sds-user-id")
    assert ctx.intents[0].resource["identifier"][0]["system"] == "https://fhir.nhs.uk/Id/sds-user-id"


def test_xcn_without_id_is_a_display_only_reference(ctx):
    assert xcn_to_practitioner(c("^BROWN^KATE"), ctx) == {"display": "KATE BROWN"}
    assert ctx.intents == []


def test_xon_ods_code_from_component_10_or_3(ctx):
    ods = "https://fhir.nhs.uk/Id/ods-organization-code"
    xon_to_organization(c("Riverside Medical Practice^^^^^^^^^Y12345"), ctx, default_system=ods)
    xon_to_organization(c("Northgate Surgery^^Y54321"), ctx, default_system=ods)
    assert [i.resource["identifier"][0] for i in ctx.intents] == [
        {"system": ods, "value": "Y12345"}, {"system": ods, "value": "Y54321"}]
    assert ctx.intents[0].resource["name"] == "Riverside Medical Practice"


def test_pl_builds_an_identifier_from_its_parts(ctx):
    ref = pl_to_location(c("PAEDOPD^ROOM3^^RVH^^^MAIN^1^Paediatric outpatients room 3"), ctx)
    [intent] = ctx.intents
    assert intent.resource["identifier"] == [
        {"system": "https://fhir.gateway.example/id/rvh/location", "value": "MAIN/1/PAEDOPD/ROOM3"}]
    assert intent.resource["name"] == ref["display"] == "Paediatric outpatients room 3"


def test_pl_uses_comprehensive_location_identifier(ctx):
    pl_to_location(c("WARD7^^^RVH^^^^^^LOC-77&RVH_ESTATES"), ctx)
    assert ctx.intents[0].resource["identifier"] == [
        {"system": "https://fhir.gateway.example/id/rvh_estates/location", "value": "LOC-77"}]


def test_pl_empty_is_none(ctx):
    assert pl_to_location(c("^^^RVH"), ctx) is None


def test_converter_options_are_checked_at_load_time(engine):
    with pytest.raises(ValueError, match="unknown option"):
        CONVERTERS["XPN[HumanName]"]("XPN[HumanName]", {"kindd": "x"}, {})
    with pytest.raises(ValueError, match="no code map"):
        CONVERTERS["CWE[code]"]("CWE[code]", {"codes": "no-such-map"}, engine.new_context().codes)
