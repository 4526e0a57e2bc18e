"""Wrong segment order gets a clear answer: ERR code 100 naming the segment and where it is.

The standard orders are data (`segment_order` in mappings/messages/*.yaml); a sender file may
turn the check into a warning or off (`segment_order: warn | ignore`)."""

import shutil
from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingConfigError, MappingEngine
from gateway.mapping.model import MappingResult

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "messages"

# Lines of the v2.5.1 sample, by segment name: MSH SCH TQ1 NTE PID PD1 RGS AIS AIG AIL AIP.
SIU = {line[:3]: line for line in (MESSAGES / "siu_s12_v251_full.hl7").read_text().splitlines() if line}
SIU["PV1"] = "PV1|1|O"
SIU["ZXX"] = "ZXX|1|local extras"
ADT = {line[:3]: line for line in (MESSAGES / "adt_a40_merge.hl7").read_text().splitlines() if line}


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def siu(*names: str, lines: dict[str, str] = SIU) -> str:
    return "\r".join(lines[n] for n in names) + "\r"


def order_issues(result: MappingResult) -> list[tuple[str, int, str, int, str]]:
    return [(i.severity, i.code, i.segment, i.sequence, i.text) for i in result.issues if i.code == 100]


@pytest.mark.parametrize("path", sorted(MESSAGES.glob("*.hl7")), ids=lambda p: p.name)
def test_every_sample_message_is_in_standard_order(engine, path):
    result = engine.map(parse_message(path.read_bytes()))
    assert order_issues(result) == []


def test_pid_before_sch_is_an_error_naming_sch_and_its_position(engine):
    result = engine.map(parse_message(siu("MSH", "PID", "SCH", "RGS", "AIS")))
    assert order_issues(result) == [
        ("E", 100, "SCH", 1, "SCH at segment 3 is out of order: it must come before PID (segment 2)")]
    assert result.errors  # -> ACK AE, nothing stored


def test_every_late_segment_is_reported(engine):
    result = engine.map(parse_message(siu("MSH", "PID", "SCH", "TQ1", "RGS", "AIS")))
    assert [(s, c, seg) for s, c, seg, _, _ in order_issues(result)] == [("E", 100, "SCH"), ("E", 100, "TQ1")]


def test_ais_before_pid_is_an_error(engine):
    result = engine.map(parse_message(siu("MSH", "SCH", "TQ1", "AIS", "PID", "RGS", "AIL")))
    assert order_issues(result) == [
        ("E", 100, "PID", 1, "PID at segment 5 is out of order: it must come before AIS (segment 4)")]


def test_pid_after_the_resource_groups_is_an_error(engine):
    result = engine.map(parse_message(siu("MSH", "SCH", "PID", "PV1", "RGS", "AIS", "PID")))
    # ERR-2 sequence 2: the second PID of the message
    assert order_issues(result) == [
        ("E", 100, "PID", 2, "PID at segment 7 is out of order: it must come before RGS (segment 5)"),
        ("W", 100, "PID", 2, "2 PID segments; only the first is mapped to Patient"),  # the existing warning
    ]


def test_pd1_after_pv1_is_an_error(engine):
    result = engine.map(parse_message(siu("MSH", "SCH", "PID", "PV1", "PD1", "RGS", "AIS")))
    assert order_issues(result) == [
        ("E", 100, "PD1", 1, "PD1 at segment 5 is out of order: it must come before PV1 (segment 4)")]


def test_repeated_resource_groups_are_in_order(engine):
    result = engine.map(parse_message(siu("MSH", "SCH", "TQ1", "PID", "RGS", "AIS", "AIL", "RGS", "AIS", "AIP")))
    assert order_issues(result) == []
    assert result.errors == []


def test_ai_segments_may_interleave(engine):
    result = engine.map(parse_message(siu("MSH", "SCH", "PID", "RGS", "AIP", "AIL", "AIS", "AIG", "AIP")))
    assert order_issues(result) == []


def test_repeated_patient_groups_are_in_order_but_only_the_first_pid_is_mapped(engine):
    result = engine.map(parse_message(siu("MSH", "SCH", "PID", "PV1", "PID", "PV1", "RGS", "AIS")))
    # not an order problem; the existing "several PID segments" warning still applies
    assert [(i.severity, i.code, i.segment, i.sequence) for i in result.issues] == [("W", 100, "PID", 2)]


def test_nte_and_z_segments_may_appear_anywhere(engine):
    text = siu("MSH", "NTE", "SCH", "ZXX", "TQ1", "NTE", "PID", "ZXX", "NTE", "RGS", "NTE", "AIS", "NTE", "ZXX",
               "AIL", "NTE")
    result = engine.map(parse_message(text))
    assert order_issues(result) == []
    assert result.errors == []


def test_adt_a40_in_standard_order(engine):
    result = engine.map(parse_message(siu("MSH", "EVN", "PID", "MRG", lines=ADT)))
    assert order_issues(result) == []
    assert result.errors == []


def test_adt_a40_with_pd1_and_pv1_in_order(engine):
    lines = {**ADT, "PD1": "PD1|||Riverside Medical Practice^^^^^^^^^Y12345", "PV1": "PV1|1|O"}
    result = engine.map(parse_message(siu("MSH", "EVN", "PID", "PD1", "MRG", "PV1", lines=lines)))
    assert order_issues(result) == []


def test_adt_a40_mrg_after_pv1_is_an_error(engine):
    lines = {**ADT, "PV1": "PV1|1|O"}
    result = engine.map(parse_message(siu("MSH", "EVN", "PID", "PV1", "MRG", lines=lines)))
    assert [(s, c, seg, n) for s, c, seg, n, _ in order_issues(result)] == [("E", 100, "MRG", 1)]


def test_adt_a01_pv1_before_pid_is_an_error(engine):
    text = (MESSAGES / "adt_a01_admit.hl7").read_text()
    lines = {line[:3]: line for line in text.splitlines() if line}
    result = engine.map(parse_message(siu("MSH", "EVN", "PV1", "PID", "PD1", lines=lines)))
    issues = order_issues(result)
    assert [(s, c, seg) for s, c, seg, _, _ in issues] == [("E", 100, "PID"), ("E", 100, "PD1")]
    assert issues[0][4] == "PID at segment 4 is out of order: it must come before PV1 (segment 3)"


def test_riverside_keeps_the_strict_default(engine):
    # riverside-pas.yaml spells out the default, segment_order: error
    text = siu("MSH", "PID", "SCH").replace("CAREFLOW_PAS", "RIVERSIDE_PAS")
    result = engine.map(parse_message(text))
    assert engine.profile_for(parse_message(text)).name == "Riverside PAS"
    assert [(s, c, seg) for s, c, seg, _, _ in order_issues(result)] == [("E", 100, "SCH")]


# -- per-sender override ------------------------------------------------------------------
@pytest.fixture()
def mappings(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", target)
    return target


def lax_sender(mappings: Path, mode: str) -> MappingEngine:
    (mappings / "senders" / "lax-pas.yaml").write_text(
        "sender:\n  name: Lax PAS\n  match:\n    - {application: LAX_PAS}\n"
        f"segment_order: {mode}\n")
    return MappingEngine(mappings)


def test_sender_with_segment_order_warn_gets_a_warning(mappings):
    engine = lax_sender(mappings, "warn")
    text = siu("MSH", "PID", "SCH", "RGS", "AIS")
    lax = engine.map(parse_message(text.replace("CAREFLOW_PAS", "LAX_PAS")))
    assert order_issues(lax) == [
        ("W", 100, "SCH", 1, "SCH at segment 3 is out of order: it must come before PID (segment 2)")]
    assert lax.errors == []  # processed: ACK AA with an ERR warning
    assert lax.first("Appointment") is not None and lax.first("Patient") is not None
    # other senders are unaffected
    assert [s for s, *_ in order_issues(engine.map(parse_message(text)))] == ["E"]


def test_sender_with_segment_order_ignore_is_not_checked(mappings):
    engine = lax_sender(mappings, "ignore")
    text = siu("MSH", "PID", "SCH", "RGS", "AIS").replace("CAREFLOW_PAS", "LAX_PAS")
    result = engine.map(parse_message(text))
    assert order_issues(result) == [] and result.errors == []


def test_sender_file_without_segment_order_gets_the_strict_default(mappings):
    (mappings / "senders" / "quiet-pas.yaml").write_text(
        "sender:\n  name: Quiet PAS\n  match:\n    - {application: QUIET_PAS}\n")
    engine = MappingEngine(mappings)
    text = siu("MSH", "PID", "SCH", "RGS", "AIS").replace("CAREFLOW_PAS", "QUIET_PAS")
    assert [s for s, *_ in order_issues(engine.map(parse_message(text)))] == ["E"]


def test_misspelt_sender_segment_order_fails_at_load(mappings):
    with pytest.raises(MappingConfigError, match="segment_order must be error, warn or ignore"):
        lax_sender(mappings, "warning")


@pytest.mark.parametrize("file, old, new, error", [
    ("siu.yaml", "  - [TQ1]\n", "  - [TQ1, SCH]\n", "SCH appears twice"),
    ("siu.yaml", "  - [TQ1]\n", "  - [TQ1, NOTASEGMENT]\n", "not a segment name"),
    ("siu.yaml", "  - [TQ1]\n", "  - []\n", "non-empty list"),
    ("siu.yaml", "  - repeat: [[RGS],", "  - again: [[RGS],", "repeating group"),
    ("adt.yaml", "  A40:\n    - [MSH]", "  A99:\n    - [MSH]", "event A99"),
])
def test_bad_segment_order_fails_at_load(mappings, file, old, new, error):
    path = mappings / "messages" / file
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    with pytest.raises(MappingConfigError, match=error):
        MappingEngine(mappings)
