"""Bad input gets a clear answer and loses nothing: every case through a real socket,
each raw message kept in the log, the listener still serving."""

from __future__ import annotations

import socket
from datetime import datetime

from gateway.hl7v2.ack import ack_code_of
from gateway.hl7v2.parser import parse_message
from gateway.ingest.mllp_client import MllpClient
from gateway.synthetic import make_child, siu_message

WHEN = datetime(2025, 6, 2, 10, 30)


def send_one(gw, message: str | bytes) -> str:
    with MllpClient("127.0.0.1", gw.mllp_port, timeout=30) as client:
        return client.send(message)


def errs(ack: str) -> list:
    return parse_message(ack).find_all("ERR")


def logged(gw, control_id: str) -> dict:
    with gw.http() as http:
        listing = http.get("/hl7v2/messages", params={"control_id": control_id}).json()["messages"]
        assert listing, f"message {control_id} is not in the log"
        return http.get(f"/hl7v2/messages/{listing[0]['id']}").json()


def good(index: int, control_id: str) -> str:
    return siu_message(make_child(index), 1, "S12", control_id=control_id, when=WHEN)


def test_unsupported_message_type_is_rejected_with_code_200(gateway):
    message = good(1, "U1").replace("SIU^S12^SIU_S12", "ORU^R01^ORU_R01")
    ack = send_one(gateway, message)
    assert ack_code_of(ack) == "AR"
    err = errs(ack)[0]
    assert err.value(3, 1) == "200"
    entry = logged(gateway, "U1")
    assert entry["outcome"] == "rejected"
    assert "ORU^R01" in entry["raw"]


def test_missing_pid_is_an_application_error_naming_pid(gateway):
    message = "\r".join(s for s in good(2, "P1").split("\r") if not s.startswith("PID"))
    ack = send_one(gateway, message)
    assert ack_code_of(ack) == "AE"
    assert any(e.value(2, 1) == "PID" or "PID" in e.value(8) for e in errs(ack))
    assert logged(gateway, "P1")["outcome"] == "error"
    with gateway.http() as http:
        errors = http.get("/hl7v2/messages", params={"outcome": "error"}).json()["messages"]
        assert any(m["control_id"] == "P1" for m in errors)


def test_bad_appointment_date_is_rejected_with_its_location(gateway):
    message = good(3, "B1").replace("TQ1|1||||||2025", "TQ1|1||||||2025139")
    ack = send_one(gateway, message)
    assert ack_code_of(ack) == "AE"
    assert any(e.value(3, 1) == "102" for e in errs(ack))


def test_unknown_status_code_is_named_in_the_ack(gateway):
    message = good(4, "S1").replace("||Booked", "||ARRIVED")
    ack = send_one(gateway, message)
    assert ack_code_of(ack) == "AE"
    found = [e for e in errs(ack) if e.value(2, 1) == "SCH" and e.value(2, 3) == "25"]
    assert found and "ARRIVED" in found[0].value(8)


def test_wrong_segment_order_is_an_application_error(gateway):
    segments = good(12, "O1").rstrip("\r").split("\r")  # MSH SCH TQ1 PID PV1 RGS AIS AIP AIL
    pid = next(s for s in segments if s.startswith("PID|"))
    segments.remove(pid)
    segments.insert(1, pid)  # PID before SCH
    ack = send_one(gateway, "\r".join(segments) + "\r")
    assert ack_code_of(ack) == "AE"
    found = [e for e in errs(ack) if e.value(3, 1) == "100" and e.value(2, 1) == "SCH"]
    assert found and "out of order" in found[0].value(8)
    assert logged(gateway, "O1")["outcome"] == "error"


def test_invalid_nhs_number_is_kept_as_a_local_identifier_with_a_warning(gateway):
    child = make_child(5)
    bad_nhs = child.nhs_number[:-1] + str((int(child.nhs_number[-1]) + 1) % 10)
    message = good(5, "W1").replace(child.nhs_number, bad_nhs)
    ack = send_one(gateway, message)
    assert ack_code_of(ack) == "AA"
    warnings = [e for e in errs(ack) if e.value(4) == "W"]
    assert warnings and warnings[0].value(2, 1) == "PID"
    with gateway.http() as http:
        found = http.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{bad_nhs}"})
        assert found.json()["total"] == 0
        local = http.get("/fhir/Patient", params={"identifier": bad_nhs}).json()
        assert local["total"] == 1


def test_no_msh_gets_a_generic_reject_and_the_bytes_are_kept(gateway):
    ack = send_one(gateway, b"PID|1||123^^^RXH^MR\rEVN|A04\r")
    assert ack_code_of(ack) == "AR"
    with gateway.http() as http:
        rejected = http.get("/hl7v2/messages", params={"outcome": "rejected"}).json()["messages"]
        entry = http.get(f"/hl7v2/messages/{rejected[0]['id']}").json()
    assert "PID|1||123" in entry["raw"]


def test_garbage_outside_frames_is_logged_and_the_connection_keeps_working(gateway):
    with socket.create_connection(("127.0.0.1", gateway.mllp_port), timeout=30) as sock:
        sock.sendall(b"GARBAGE-BEFORE\r\n" + b"\x0b" + good(6, "G1").encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            data += sock.recv(65536)
    assert ack_code_of(data.strip(b"\x0b\x1c\r").decode()) == "AA"
    with gateway.http() as http:
        fragments = http.get("/hl7v2/messages", params={"outcome": "fragment"}).json()["messages"]
        assert fragments
        entry = http.get(f"/hl7v2/messages/{fragments[0]['id']}").json()
    assert "GARBAGE-BEFORE" in entry["raw"]


def test_over_long_message_is_rejected_and_the_listener_keeps_serving(sqlite_url):
    from conftest import RunningGateway, gateway_settings

    gw = RunningGateway(gateway_settings(sqlite_url, mllp_max_message_bytes=4000)).start()
    try:
        huge = good(7, "L1").rstrip("\r") + "\rNTE|1||" + "x" * 10_000 + "\r"
        with MllpClient("127.0.0.1", gw.mllp_port, timeout=30) as client:
            assert ack_code_of(client.send(huge)) == "AR"
            assert ack_code_of(client.send(good(8, "L2"))) == "AA"
        assert logged(gw, "L1")["outcome"] == "rejected"
    finally:
        gw.stop()


def test_truncated_frame_is_kept_and_other_connections_are_unaffected(gateway):
    partial = b"\x0b" + good(9, "T1").encode()[:80]
    with socket.create_connection(("127.0.0.1", gateway.mllp_port), timeout=30) as sock:
        sock.sendall(partial)
    assert ack_code_of(send_one(gateway, good(10, "T2"))) == "AA"
    import time

    deadline = time.time() + 10
    while time.time() < deadline:
        with gateway.http() as http:
            fragments = http.get("/hl7v2/messages", params={"outcome": "fragment"}).json()["messages"]
        if fragments:
            break
        time.sleep(0.1)
    assert fragments, "the truncated frame was not kept"


def test_errored_message_can_be_listed_and_replayed(gateway):
    message = good(11, "R1").replace("||Booked", "||ARRIVED")
    assert ack_code_of(send_one(gateway, message)) == "AE"
    entry = logged(gateway, "R1")
    assert entry["ack"].startswith("MSH")
    assert "ARRIVED" in entry["raw"]
