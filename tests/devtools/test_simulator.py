"""The partner simulator speaks the Partner Export API v1 over real HTTP.

Every test talks to a server thread on 127.0.0.1 through httpx, the way the
sync engine will, so what passes here is the wire contract, not internals.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import sim_dataset
from devtools.datagen import (
    PARTNER_VOCABULARY,
    DatasetSpec,
    generate_study,
    split_location,
)
from devtools.simulator import (
    PartnerDataset,
    PartnerSimulator,
    SimulatorConfig,
    parse_rfc3339,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
SPEC = DatasetSpec(partner="t", studies=30, series_per_study=2, instances_per_series=3)
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
DELETED_KEYS = {"id", "updated_at", "deleted", "study_instance_uid"}


# --- factories and helpers ------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(SPEC) as simulator:
        yield simulator


@pytest.fixture
def client(sim: PartnerSimulator) -> Iterator[httpx.Client]:
    # Plain HTTP on loopback: verify=False only skips loading the CA bundle (~30 ms a client).
    options: dict[str, Any] = {"headers": sim.headers, "timeout": 5.0, "verify": False}
    with httpx.Client(base_url=sim.base_url, **options) as http:
        yield http


def list_all(client: httpx.Client, page_size: int = 7, **params: str) -> list[dict[str, Any]]:
    """Follow next_page_token to the end, checking every page on the way."""
    items: list[dict[str, Any]] = []
    query: dict[str, Any] = {"page_size": page_size, **params}
    while True:
        response = client.get("/v1/studies", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_page_token"}
        assert len(page["items"]) <= page_size
        items.extend(page["items"])
        if page["next_page_token"] is None:
            return items
        query = {**query, "page_token": page["next_page_token"]}


def sort_key(item: dict[str, Any]) -> tuple[int, str]:
    return parse_rfc3339(item["updated_at"]), item["id"]


def listing_statuses(sim: PartnerSimulator) -> list[int | None]:
    return [request.status for request in sim.requests.for_path("/v1/studies")]


# --- listing ---------------------------------------------------------------------------


def test_listing_pages_through_everything_in_order_without_gaps_or_duplicates(
    client: httpx.Client,
) -> None:
    items = list_all(client, page_size=7)

    ids = [item["id"] for item in items]
    assert ids == [SPEC.study_id(index) for index in range(SPEC.studies)]
    assert [sort_key(item) for item in items] == sorted(sort_key(item) for item in items)
    assert items[3] == generate_study(SPEC, 3)


def test_updated_since_is_inclusive_and_accepts_offsets(client: httpx.Client) -> None:
    tenth = generate_study(SPEC, 10)
    seoul = timezone(timedelta(hours=9))
    same_moment_in_seoul = datetime.fromisoformat(tenth["updated_at"]).astimezone(seoul).isoformat()

    for since in (tenth["updated_at"], same_moment_in_seoul):
        items = list_all(client, updated_since=since)
        assert [item["id"] for item in items] == [SPEC.study_id(i) for i in range(10, SPEC.studies)]


@pytest.mark.parametrize(
    "params",
    [
        {"updated_since": "yesterday"},
        {"updated_since": "2026-01-01T00:00:00"},  # no offset: not RFC 3339
        {"updated_since": ""},
        {"page_size": "0"},
        {"page_size": "501"},
        {"page_size": "ten"},
        {"page_size": "²"},
        {"page_token": "not-a-token"},
    ],
)
def test_bad_listing_arguments_are_400_with_a_json_error(
    client: httpx.Client, params: dict[str, str]
) -> None:
    response = client.get("/v1/studies", params=params)

    assert response.status_code == 400
    assert response.json()["error"]


def test_a_page_of_a_large_dataset_generates_only_that_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generated: list[int] = []

    def counting_generate(spec: DatasetSpec, index: int) -> dict[str, Any]:
        generated.append(index)
        return generate_study(spec, index)

    dataset = PartnerDataset(DatasetSpec(studies=100_000))
    dataset.update_study(dataset.spec.study_id(99_990), lambda item: None)
    monkeypatch.setattr(sim_dataset, "generate_study", counting_generate)
    since = parse_rfc3339(generate_study(dataset.spec, 99_980)["updated_at"])

    items, last = dataset.page(since, None, 50)

    assert generated == [index for index in range(99_980, 100_000) if index != 99_990]
    assert [item["id"] for item in items[:-1]] == [dataset.spec.study_id(i) for i in generated]
    assert last is None


def test_mutated_study_moves_to_the_end_with_a_later_updated_at(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    study_id = SPEC.study_id(4)
    before = generate_study(SPEC, SPEC.studies - 1)["updated_at"]

    sim.dataset.update_study(study_id, lambda item: item.update(description="CT CHEST REVISED"))
    items = list_all(client)

    assert [item["id"] for item in items].count(study_id) == 1
    assert items[-1]["id"] == study_id
    assert items[-1]["description"] == "CT CHEST REVISED"
    assert parse_rfc3339(items[-1]["updated_at"]) > parse_rfc3339(before)


def test_each_commit_is_stamped_later_than_the_previous_one(sim: PartnerSimulator) -> None:
    first = sim.dataset.update_study(SPEC.study_id(1), lambda item: None)
    second = sim.dataset.update_study(SPEC.study_id(0), lambda item: None)
    third = sim.dataset.delete_study(SPEC.study_id(2))

    stamps = [parse_rfc3339(item["updated_at"]) for item in (first, second, third)]
    assert stamps == sorted(set(stamps))


def test_delete_yields_the_contract_deleted_form(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    study_id = SPEC.study_id(6)
    uid = generate_study(SPEC, 6)["study_instance_uid"]

    sim.dataset.delete_study(study_id)
    listed = list_all(client)[-1]
    fetched = client.get(f"/v1/studies/{study_id}").json()

    assert set(listed) == DELETED_KEYS
    assert listed["deleted"] is True and listed["study_instance_uid"] == uid
    assert fetched == listed
    assert uid not in sim.dataset.expected_state()
    assert study_id not in sim.dataset.live_study_ids()
    assert sim.dataset.counts()["deleted"] == 1


def test_removed_series_is_gone_from_the_snapshot(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    study = generate_study(SPEC, 8)
    dropped = study["series"][0]

    sim.dataset.remove_series(study["id"], dropped["id"])

    fetched = client.get(f"/v1/studies/{study['id']}").json()
    assert [series["id"] for series in fetched["series"]] == [study["series"][1]["id"]]
    series_uids = sim.dataset.expected_state()[study["study_instance_uid"]]["series"]
    assert dropped["series_instance_uid"] not in series_uids


def test_late_commit_with_kept_updated_at_is_listed_in_the_past(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    late = generate_study(SPEC, 20)
    late["updated_at"] = generate_study(SPEC, 5)["updated_at"]
    late["description"] = "LATE COMMIT"

    sim.dataset.put_study(late, keep_updated_at=True)
    items = list_all(client)

    ids = [item["id"] for item in items]
    assert ids.index(late["id"]) == ids.index(SPEC.study_id(5)) + 1  # same instant, larger id
    assert items[ids.index(late["id"])]["description"] == "LATE COMMIT"


def test_injected_raw_entries_are_listed_verbatim_and_duplicates_are_kept(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    sim.dataset.inject_raw(["not", "an", "object"], sort_id="zz-raw")
    duplicate = {**generate_study(SPEC, 0), "accession_number": 42}
    sim.dataset.inject_raw(duplicate, sort_id=duplicate["id"])
    sim.dataset.inject_raw(duplicate, sort_id=duplicate["id"])

    items = list_all(client, page_size=2)

    assert items[-3:] == [["not", "an", "object"], duplicate, duplicate]
    assert [item["id"] for item in items if isinstance(item, dict)].count(SPEC.study_id(0)) == 3
    assert len(sim.dataset.expected_state()) == SPEC.studies


# --- one study, health ---------------------------------------------------------------


def test_one_study_is_served_and_an_unknown_one_is_404(client: httpx.Client) -> None:
    found = client.get(f"/v1/studies/{SPEC.study_id(2)}")
    missing = client.get("/v1/studies/t-study-999999")

    assert found.status_code == 200 and found.json() == generate_study(SPEC, 2)
    assert missing.status_code == 404 and missing.json()["error"]
    assert client.get("/v1/health").json() == {"status": "ok"}


# --- authentication ----------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_a_revoked_key_is_403() -> None:
    config = SimulatorConfig(api_key="good", revoked_keys=frozenset({"old"}))
    with PartnerSimulator(SPEC, config) as sim, httpx.Client(base_url=sim.base_url) as http:
        missing = http.get("/v1/studies")
        wrong = http.get("/v1/studies", headers=config.headers("bad"))
        revoked = http.get("/v1/studies", headers=config.headers("old"))
        good = http.get("/v1/studies", headers=config.headers())

    assert (missing.status_code, wrong.status_code, revoked.status_code) == (401, 401, 403)
    assert all(r.json()["error"] for r in (missing, wrong, revoked))
    assert good.status_code == 200


def test_a_scheme_puts_the_key_after_it_in_the_configured_header() -> None:
    config = SimulatorConfig(api_key="k", auth_header="Authorization", auth_scheme="Bearer")
    with PartnerSimulator(SPEC, config) as sim, httpx.Client(base_url=sim.base_url) as http:
        bearer = http.get("/v1/health", headers={"Authorization": "Bearer k"})
        bare = http.get("/v1/health", headers={"Authorization": "k"})

    assert bearer.status_code == 200
    assert bare.status_code == 401


# --- faults -----------------------------------------------------------------------------


def test_fail_next_answers_5xx_then_recovers_and_every_attempt_is_recorded(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    sim.faults.fail_next(2, status=502)

    statuses = [client.get("/v1/studies").status_code for _ in range(3)]

    assert statuses == [502, 502, 200]
    assert listing_statuses(sim) == [502, 502, 200]


def test_rate_limit_sends_retry_after_as_given(sim: PartnerSimulator, client: httpx.Client) -> None:
    sim.faults.rate_limit_next(1, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    sim.faults.rate_limit_next(1, retry_after=2)

    first, second = client.get("/v1/studies"), client.get("/v1/studies")

    assert first.status_code == second.status_code == 429
    assert first.headers["Retry-After"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert second.headers["Retry-After"] == "2"
    assert client.get("/v1/studies").status_code == 200


def test_delay_next_makes_a_client_time_out(sim: PartnerSimulator, client: httpx.Client) -> None:
    sim.faults.delay_next(1, seconds=1.0)

    with pytest.raises(httpx.ReadTimeout):
        client.get("/v1/studies", timeout=0.2)
    assert client.get("/v1/studies").status_code == 200


def test_dropped_connection_gets_no_response_then_service_resumes(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    sim.faults.drop_connection_next(1)

    with pytest.raises(httpx.TransportError):
        client.get("/v1/studies")
    assert client.get("/v1/studies").status_code == 200
    assert listing_statuses(sim) == [None, 200]


def test_expired_tokens_answer_410_and_a_fresh_listing_still_works(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    token = client.get("/v1/studies", params={"page_size": 5}).json()["next_page_token"]

    sim.faults.expire_tokens()
    gone = client.get("/v1/studies", params={"page_size": 5, "page_token": token})

    assert gone.status_code == 410 and gone.json()["error"]
    assert len(list_all(client)) == SPEC.studies


def test_faults_can_target_one_study_requests(sim: PartnerSimulator, client: httpx.Client) -> None:
    sim.faults.fail_next(1, endpoint="study")

    assert client.get("/v1/studies").status_code == 200
    assert client.get(f"/v1/studies/{SPEC.study_id(0)}").status_code == 503


def test_block_on_page_parks_that_request_until_released(
    sim: PartnerSimulator, client: httpx.Client
) -> None:
    gate = sim.faults.block_on_page(2)
    result: list[list[dict[str, Any]]] = []
    lister = threading.Thread(target=lambda: result.append(list_all(client, page_size=10)))

    lister.start()
    assert gate.wait_until_blocked(timeout=5)
    assert lister.is_alive() and listing_statuses(sim) == [200]
    gate.release()
    lister.join(timeout=5)

    assert not lister.is_alive()
    assert len(result[0]) == SPEC.studies


def test_stop_releases_a_parked_request() -> None:
    simulator = PartnerSimulator(SPEC).start()
    gate = simulator.faults.block_on_page(1)
    outcome: list[object] = []

    def request() -> None:
        try:
            outcome.append(httpx.get(f"{simulator.base_url}/v1/studies", headers=simulator.headers))
        except httpx.TransportError as error:
            outcome.append(error)

    waiter = threading.Thread(target=request)
    waiter.start()
    assert gate.wait_until_blocked(timeout=5)
    simulator.stop()
    waiter.join(timeout=5)

    assert gate.is_set() and not waiter.is_alive() and outcome


# --- expected state and generated data ----------------------------------------------


def test_expected_state_maps_the_wire_back_to_dicom(sim: PartnerSimulator) -> None:
    state = sim.dataset.expected_state()
    wire = generate_study(SPEC, 7)
    expected = state[wire["study_instance_uid"]]

    assert len(state) == SPEC.studies
    assert expected["subject"]["sex"] == PARTNER_VOCABULARY["sex"][wire["subject"]["sex"]]
    assert "id" not in expected["subject"]
    for wire_series in wire["series"]:
        series = expected["series"][wire_series["series_instance_uid"]]
        assert series["modality"] == PARTNER_VOCABULARY["modality"][wire_series["modality"]]
        for wire_instance in wire_series["instances"]:
            instance = series["instances"][wire_instance["sop_instance_uid"]]
            assert (instance["bucket"], instance["key"]) == split_location(
                wire_instance["location"], SPEC.bucket
            )
    codes = {s["modality"] for study in state.values() for s in study["series"].values()}
    assert codes <= set(PARTNER_VOCABULARY["modality"].values())


def test_bare_keys_land_in_the_default_bucket_without_a_leading_slash() -> None:
    assert split_location("/studies/1/2.dcm", "b-dicom") == ("b-dicom", "studies/1/2.dcm")
    assert split_location("studies/1/2.dcm", "b-dicom") == ("b-dicom", "studies/1/2.dcm")
    assert split_location("s3://other/studies/1/2.dcm", "b-dicom") == ("other", "studies/1/2.dcm")

    spec = DatasetSpec(partner="b", studies=3, bare_key_fraction=1.0)
    state = PartnerDataset(spec).expected_state()
    instances = [
        instance
        for study in state.values()
        for series in study["series"].values()
        for instance in series["instances"].values()
    ]
    assert {i["bucket"] for i in instances} == {"b-dicom"}
    assert not any(i["key"].startswith("/") for i in instances)


def test_an_unmapped_term_is_refused_by_expected_state(sim: PartnerSimulator) -> None:
    sim.dataset.update_study(SPEC.study_id(0), lambda item: item["subject"].update(sex="unknown"))

    with pytest.raises(ValueError, match="no DICOM mapping"):
        sim.dataset.expected_state()


def test_generating_ten_thousand_studies_is_deterministic() -> None:
    spec = DatasetSpec(studies=10_000)

    first = [generate_study(spec, index) for index in range(spec.studies)]
    second = [generate_study(spec, index) for index in range(spec.studies)]

    assert first == second
    assert generate_study(DatasetSpec(studies=10_000, seed=2), 0) != first[0]


def test_generated_values_follow_the_contract_rules() -> None:
    spec = DatasetSpec(partner="p", studies=200)
    studies = [generate_study(spec, index) for index in range(spec.studies)]
    subjects: dict[str, dict[str, Any]] = {}

    assert [s["id"] for s in studies] == sorted(s["id"] for s in studies)
    for study in studies:
        assert UID.fullmatch(study["study_instance_uid"]) and len(study["study_instance_uid"]) <= 64
        assert len(study["accession_number"]) <= 16 and len(study["description"]) <= 64
        assert study["subject"]["sex"] in PARTNER_VOCABULARY["sex"]
        assert subjects.setdefault(study["subject"]["id"], study["subject"]) == study["subject"]
        for series in study["series"]:
            assert series["body_part_examined"] in PARTNER_VOCABULARY["body_part_examined"]
            for instance in series["instances"]:
                assert UID.fullmatch(instance["sop_instance_uid"])
                assert len(instance["sop_instance_uid"]) <= 64
                assert re.fullmatch(r"[0-9a-f]{64}", instance["sha256"])
    assert len(subjects) < len(studies)  # studies share subjects
    assert any(not s["subject"]["name"].isascii() for s in studies)  # Korean names appear


# --- command line ---------------------------------------------------------------------


def test_command_line_serves_until_sigterm() -> None:
    python_path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path, "TEST_SIM_KEY": "cli-secret"}
    command = [
        sys.executable, "-m", "devtools.simulator",
        "--studies", "5", "--port", "0", "--api-key-env", "TEST_SIM_KEY",
    ]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline() if process.stdout else ""
            match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line
            health = httpx.get(f"{match.group(1)}/v1/health", headers={"X-API-Key": "cli-secret"})
            assert health.json() == {"status": "ok"}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
