"""``GET /v1/studies/{id}``: whatever the id holds, the request line carries it as one path segment (docs/partner-api.md § 3.2).

Against the partner simulator over real HTTP, which records each request's
path exactly as it arrived (still percent-encoded).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.dto import StudyDTO
from imaging_sync.errors import ValidationError
from imaging_sync.partners.factory import build_source
from imaging_sync.partners.reference_v1 import path_segment
from imaging_sync.partners.source import PartnerSource


@pytest.fixture
def simulator() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=3, series_per_study=1, instances_per_series=1), SimulatorConfig(api_key=TEST_API_KEY)) as sim:
        yield sim


@pytest.fixture
def source(simulator: PartnerSimulator) -> Iterator[PartnerSource]:
    source = build_source(simulator_partner("b", simulator.base_url))
    yield source
    source.close()


@pytest.mark.parametrize(
    ("study_id", "segment"),
    [
        (".", "%2E"),  # as a bare ".", httpx resolves /v1/studies/. to /v1/studies: the whole listing
        ("..", "%2E%2E"),
        ("a/b", "a%2Fb"),
        ("%2F", "%252F"),
        ("%2E%2E", "%252E%252E"),
        ("../..", "..%2F.."),
        ("a?page_size=500#x", "a%3Fpage_size%3D500%23x"),
        ("홍 길동", "%ED%99%8D%20%EA%B8%B8%EB%8F%99"),
    ],
)
def test_an_id_reaches_the_partner_as_exactly_one_encoded_segment(source: PartnerSource, simulator: PartnerSimulator, study_id: str, segment: str) -> None:
    assert path_segment(study_id) == segment
    assert source.get_study(study_id) is None  # the simulator has no such study: 404, "not found"
    assert [(r.path, r.status) for r in simulator.requests.snapshot()] == [(f"/v1/studies/{segment}", 404)]


def test_a_study_stored_under_a_dot_id_is_fetched_from_its_own_resource(source: PartnerSource, simulator: PartnerSimulator) -> None:
    item = simulator.dataset.item(simulator.dataset.spec.study_id(1))
    simulator.dataset.put_study({**item, "id": ".."})
    fetched = source.get_study("..")
    assert isinstance(fetched, StudyDTO) and (fetched.partner_id, fetched.study_instance_uid) == ("..", item["study_instance_uid"])
    assert [r.path for r in simulator.requests.snapshot()] == ["/v1/studies/%2E%2E"]


@pytest.mark.parametrize("study_id", ["", "x" * 129])
def test_an_id_the_contract_rules_out_is_refused_before_any_request(source: PartnerSource, simulator: PartnerSimulator, study_id: str) -> None:
    with pytest.raises(ValidationError) as caught:
        source.get_study(study_id)
    assert caught.value.path == "study_id"
    assert simulator.requests.snapshot() == []
