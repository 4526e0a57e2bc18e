"""Only where there is a relationship: an organisation-bound subscription hears about
a child only if the organisation is the child's GP practice, a CareTeam participant,
or the service the appointment belongs to.  Plus topic filters."""

from __future__ import annotations

from datetime import datetime
from typing import Iterator

import pytest

from conftest import RunningGateway, gateway_settings
from gateway import codes
from gateway.ingest.mllp_client import MllpClient
from gateway.synthetic import adt_message, make_child, siu_message
from subscription_helpers import FAST, create_active, no_shows, subscription
from subscription_receiver import Receiver


@pytest.fixture
def fast_gateway(database_url: str) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings(database_url, **FAST)).start()
    yield running
    running.stop()


def _patient(client, index: int) -> str:  # noqa: ANN001
    nhs = make_child(index).nhs_number
    return client.get("/fhir/Patient", params={"identifier": f"{codes.NHS_NUMBER}|{nhs}"}).json()["entry"][0][
        "resource"]["id"]


def test_unrelated_agency_gets_nothing(fast_gateway: RunningGateway) -> None:
    receivers = {name: Receiver() for name in ("gp", "social", "service", "dietetics", "unrelated", "system", "child1")}
    try:
        with fast_gateway.http() as client:
            # Child 1 is registered with GP practice M85001 (ADT PD1-3).
            with MllpClient("127.0.0.1", fast_gateway.mllp_port) as mllp:
                assert "MSA|AA" in mllp.send(adt_message(make_child(1), "A04", control_id="ADT1"))
            # Child 2 has a care team: a lead professional and children's social care.
            no_shows(fast_gateway.mllp_port, 1, first_child=2, start_control=100)
            child2 = _patient(client, 2)
            social = client.post("/fhir/Organization", json={
                "resourceType": "Organization", "name": "Children's social care",
                "telecom": [{"system": "email", "value": "csc@example.org"}]}).json()["id"]
            lead = client.post("/fhir/Practitioner", json={
                "resourceType": "Practitioner", "name": [{"family": "Lead"}],
                "telecom": [{"system": "phone", "value": "01632960999"}]}).json()["id"]
            team = client.post("/fhir/CareTeam", json={
                "resourceType": "CareTeam", "status": "active", "subject": {"reference": f"Patient/{child2}"},
                "participant": [
                    {"role": [{"coding": [{"system": codes.CARE_TEAM_ROLES, "code": codes.ROLE_LEAD_PROFESSIONAL}]}],
                     "member": {"reference": f"Practitioner/{lead}"}},
                    {"member": {"reference": f"Organization/{social}"}}]})
            assert team.status_code == 201, team.text
            unrelated = client.post("/fhir/Organization", json={
                "resourceType": "Organization", "name": "A school nobody attends",
                "identifier": [{"system": codes.ODS_CODE, "value": "X99999"}]}).json()["id"]

            create_active(client, subscription(receivers["gp"].url, bound_to={
                "identifier": {"system": codes.ODS_CODE, "value": "M85001"}}))
            create_active(client, subscription(receivers["social"].url, bound_to={
                "reference": f"Organization/{social}"}))
            # A service neither appointment belongs to.
            create_active(client, subscription(receivers["service"].url, bound_to={
                "identifier": {"system": "https://fhir.gateway.example/id/rxh/healthcare-service", "value": "SALT"}}))
            create_active(client, subscription(receivers["dietetics"].url, bound_to={
                "identifier": {"system": "https://fhir.gateway.example/id/rxh/healthcare-service", "value": "DIET"}}))
            create_active(client, subscription(receivers["unrelated"].url, bound_to={
                "reference": f"Organization/{unrelated}"}))
            create_active(client, subscription(receivers["system"].url))
            create_active(client, subscription(receivers["child1"].url, filters=[
                f"Appointment?patient=Patient/{_patient(client, 1)}"]))

            no_shows(fast_gateway.mllp_port, 1, first_child=1, appointments_per_child=1, start_control=200)
            with MllpClient("127.0.0.1", fast_gateway.mllp_port) as mllp:  # child 2, a second appointment
                for event, n in (("S12", 1), ("S26", 2)):
                    ack = mllp.send(siu_message(make_child(2), 7, event, control_id=f"C2X{n}",
                                                when=datetime(2025, 6, 1), sent=datetime(2025, 2, 1, 0, n)))
                    assert "MSA|AA" in ack, ack

            assert receivers["system"].wait_for(lambda r: len(r.event_numbers()) == 2), receivers["system"].received
            assert receivers["gp"].wait_for(lambda r: len(r.event_numbers()) == 1)
            assert receivers["social"].wait_for(lambda r: len(r.event_numbers()) == 1)
            assert receivers["child1"].wait_for(lambda r: len(r.event_numbers()) == 1)
            assert not receivers["unrelated"].wait_for(lambda r: r.notifications(), timeout=1.0)
            gp_focus = receivers["gp"].notifications()[0].focuses[0]
            social_focus = receivers["social"].notifications()[0].focuses[0]
            assert gp_focus != social_focus
            assert receivers["child1"].notifications()[0].focuses[0] == gp_focus
            # Both appointments are SERVICES[1] (Dietetics): the speech and language service is not told.
            assert receivers["service"].event_numbers() == []
            assert receivers["dietetics"].wait_for(lambda r: r.event_numbers() == [1, 2])
            assert receivers["unrelated"].notifications("handshake")  # it was active all along
    finally:
        for r in receivers.values():
            r.close()
