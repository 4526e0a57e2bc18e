"""The CLI through its real entry point: convert, send, reprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from gateway.synthetic import make_child, siu_message

WHEN = datetime(2025, 6, 2, 10, 30)


def gateway_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_convert_prints_a_transaction_bundle_per_message(tmp_path: Path):
    child = make_child(1)
    path = tmp_path / "feed.hl7"
    path.write_text(siu_message(child, 1, "S12", control_id="X1", when=WHEN).replace("\r", "\n")
                    + siu_message(child, 1, "S26", control_id="X2", when=WHEN))
    result = gateway_cli("convert", str(path))
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    text, bundles, pos = result.stdout, [], 0
    while pos < len(text.rstrip()):
        while text[pos].isspace():
            pos += 1
        bundle, pos = decoder.raw_decode(text, pos)
        bundles.append(bundle)
    assert [b["type"] for b in bundles] == ["transaction", "transaction"]
    statuses = [e["resource"]["status"] for b in bundles for e in b["entry"]
                if e["resource"]["resourceType"] == "Appointment"]
    assert statuses == ["booked", "noshow"]
    assert not (tmp_path / "gateway.db").exists()


def test_send_prints_each_ack(sqlite_gateway, tmp_path: Path):
    path = tmp_path / "batch.hl7"
    path.write_text("FHS|^~\\&|RXPAS\rBHS|^~\\&|RXPAS\r"
                    + siu_message(make_child(2), 1, "S12", control_id="S1", when=WHEN)
                    + siu_message(make_child(3), 1, "S12", control_id="S2", when=WHEN)
                    + "BTS|2\rFTS|1\r")
    result = gateway_cli("send", str(path), "--host", "127.0.0.1", "--port", str(sqlite_gateway.mllp_port))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("MSA|AA|") == 2
    assert "MSA|AA|S1" in result.stdout and "MSA|AA|S2" in result.stdout


def test_reprocess_replays_a_logged_message(sqlite_gateway, sqlite_url):
    from gateway.ingest.mllp_client import MllpClient

    message = siu_message(make_child(4), 1, "S12", control_id="RP1", when=WHEN).replace("||Booked", "||ARRIVED")
    with MllpClient("127.0.0.1", sqlite_gateway.mllp_port) as client:
        assert "MSA|AE|RP1" in client.send(message)
    with sqlite_gateway.http() as http:
        entry = http.get("/hl7v2/messages", params={"control_id": "RP1"}).json()["messages"][0]
    result = gateway_cli("reprocess", str(entry["id"]), "--database-url", sqlite_url)
    assert result.returncode == 1  # still an unknown status: AE again, and said so
    assert "MSA|AE|RP1" in result.stdout
    with sqlite_gateway.http() as http:
        replays = http.get("/hl7v2/messages", params={"control_id": "RP1"}).json()["messages"]
    assert len(replays) == 2 and replays[0]["replay_of"] == entry["id"]


def test_convert_reports_a_message_ingest_would_reject_and_prints_no_bundle(tmp_path: Path):
    path = tmp_path / "bad.hl7"
    path.write_text(siu_message(make_child(5), 1, "S12", control_id="B1", when=WHEN).replace("||Booked", "||ARRIVED"))
    result = gateway_cli("convert", str(path))
    assert result.returncode == 1
    assert "SCH-25" in result.stderr and "ARRIVED" in result.stderr
    assert result.stdout.strip() == ""
