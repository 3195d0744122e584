"""Validation of reference-v1 items, exactly as docs/partner-api.md says."""

import copy
import datetime as dt
import json
from typing import Any

import pytest

from imaging_sync.dto import DeletedStudyDTO, RejectedItemDTO, StudyDTO
from imaging_sync.partners.wire import ItemParser
from imaging_sync.vocabulary import Vocabulary

VOCAB = {"sex": {"male": "M", "female": "F"}, "modality": {"Computed Tomography": "CT"}}


def parser() -> ItemParser:
    return ItemParser("b", Vocabulary(VOCAB), "partner-b-dicom", {"partner-b-dicom", "partner-b-archive"})


def study_item(**changes: Any) -> dict[str, Any]:
    item = {
        "id": "b-study-1",
        "updated_at": "2026-11-20T13:02:11.123456Z",
        "deleted": False,
        "study_instance_uid": "1.2.410.200001.1.1185.20240723.1",
        "accession_number": "ACC-2024-0001",
        "study_date": "2024-07-23",
        "study_time": "13:45:00",
        "description": "CT CHEST W/O CONTRAST",
        "referring_physician_name": "Lee^Minho",
        "subject": {"id": "b-subj-77", "patient_id": "00012345", "issuer_of_patient_id": "HOSP-A", "name": "홍^길동", "birth_date": "1980-01-02", "sex": "male"},
        "series": [
            {
                "id": "b-ser-9",
                "series_instance_uid": "1.2.410.200001.1.1185.20240723.1.1",
                "modality": "Computed Tomography",
                "series_number": 1,
                "description": "AXIAL 5mm",
                "body_part_examined": "CHEST",
                "instances": [
                    {"id": "b-inst-1", "sop_instance_uid": "1.2.410.200001.1.1185.20240723.1.1.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                     "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": 1, "size_bytes": 526114,
                     "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "location": "s3://partner-b-dicom/studies/1185/1.dcm"},
                    {"id": "b-inst-2", "sop_instance_uid": "1.2.410.200001.1.1185.20240723.1.1.2", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                     "instance_number": 2, "location": "/studies/1185/2.dcm"},
                ],
            }
        ],
    }
    item.update(changes)
    return item


def parse(item: object) -> Any:
    return parser().parse_item(json.dumps(item).encode())


def test_valid_item_becomes_a_dicom_valued_dto() -> None:
    dto = parse(study_item())
    assert isinstance(dto, StudyDTO)
    assert dto.updated_at == dt.datetime(2026, 11, 20, 13, 2, 11, 123456, tzinfo=dt.UTC)
    assert dto.study_time == "134500"
    assert dto.subject.sex == "M" and dto.subject.name == "홍^길동" and dto.subject.issuer == "HOSP-A"
    series = dto.series[0]
    assert series.modality == "CT"
    first, second = series.instances
    assert (first.bucket, first.key) == ("partner-b-dicom", "studies/1185/1.dcm")
    assert (second.bucket, second.key) == ("partner-b-dicom", "studies/1185/2.dcm")  # bare key, leading slash dropped
    assert second.size_bytes is None and second.sha256 is None and second.transfer_syntax_uid is None


def test_content_hash_ignores_updated_at_key_order_and_unknown_fields() -> None:
    base = parse(study_item())
    bumped = parse(study_item(updated_at="2026-11-21T00:00:00Z", extra_field={"x": 1}))
    reordered = dict(reversed(list(study_item().items())))
    assert base.content_hash == bumped.content_hash == parse(reordered).content_hash
    assert parse(study_item(description="OTHER")).content_hash != base.content_hash


def test_deleted_item_needs_only_id_timestamp_and_uid() -> None:
    dto = parse({"id": "b-study-1", "updated_at": "2026-11-20T13:02:11+09:00", "deleted": True, "study_instance_uid": "1.2.3"})
    assert isinstance(dto, DeletedStudyDTO)
    assert dto.updated_at == dt.datetime(2026, 11, 20, 4, 2, 11, tzinfo=dt.UTC)


def mutate(path: str, value: Any) -> dict[str, Any]:
    item = copy.deepcopy(study_item())
    node: Any = item
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return item


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("study_instance_uid", "1.2.03.4", "study_instance_uid: invalid UID"),
        ("study_instance_uid", "1..2", "study_instance_uid: invalid UID"),
        ("study_instance_uid", "1." + "2" * 70, "at most 64"),
        ("series.0.instances.1.sop_instance_uid", "1.2.abc", "series[0].instances[1].sop_instance_uid: invalid UID"),
        ("study_date", "2024-02-30", "study_date: not a calendar date"),
        ("study_date", "20240723", "study_date: not a date in YYYY-MM-DD form"),
        ("study_time", "25:00:00", "study_time: not a time"),
        ("subject.birth_date", "1980/01/02", "subject.birth_date: not a date"),
        ("updated_at", "2026-11-20T13:02:11", "updated_at: not an RFC 3339 timestamp"),
        ("subject.sex", "unknown-sex", "subject.sex: no sex mapping"),
        ("series.0.modality", "Magic Imaging", "series[0].modality: no modality mapping"),
        ("accession_number", "A" * 17, "accession_number: is 17 characters long (at most 16)"),
        ("description", "D" * 65, "description: is 65 characters long (at most 64)"),
        ("id", "x" * 129, "id: is 129 characters long (at most 128)"),
        ("id", "", "id: must be a non-empty string"),
        ("subject.name", "A" * 65, "subject.name: person name group is 65 characters"),
        ("series.0.instances.0.instance_number", "1", "Expected `int | null`, got `str`"),
        ("series.0.instances.0.size_bytes", -1, "must not be negative"),
        ("series.0.series_number", True, "Expected `int | null`, got `bool`"),
        ("series.0.instances", {"not": "a list"}, "series[0].instances: Expected `array`, got `object`"),
        ("subject", KeyError, "subject: required on a study that is not deleted"),
        ("series.0.instances.0.location", "s3://other-bucket/x.dcm", "bucket 'other-bucket' is not allowed"),
        ("series.0.instances.0.location", "https://host/x.dcm", "unsupported location scheme"),
        ("series.0.instances.0.location", "s3://partner-b-dicom/", "empty key"),
        ("series.0.instances.0.sha256", "xyz", "64 hexadecimal digits"),
        ("subject.patient_id", "", "subject.patient_id: must not be empty"),
    ],
)
def test_bad_item_is_rejected_with_a_reason_pointing_into_it(path: str, value: Any, reason: str) -> None:
    result = parse(mutate(path, value))
    assert isinstance(result, RejectedItemDTO)
    assert reason in result.reason
    assert json.loads(result.payload)["study_instance_uid"]  # the payload is the item as received
    if path != "id":
        assert result.partner_id == "b-study-1"


def test_mapping_failures_are_their_own_kind() -> None:
    assert parse(mutate("subject.sex", "alien")).kind == "mapping"
    assert parse(mutate("study_date", "x")).kind == "validation"


def test_vocabulary_is_case_and_space_insensitive_and_passes_dicom_terms() -> None:
    dto = parse(mutate("series.0.modality", "  computed   TOMOGRAPHY "))
    assert dto.series[0].modality == "CT"
    assert parse(mutate("series.0.modality", "MR")).series[0].modality == "MR"
    strict = ItemParser("b", Vocabulary(VOCAB, passthrough_dicom_terms=False), "partner-b-dicom", {"partner-b-dicom"})
    assert isinstance(strict.parse_item(json.dumps(mutate("series.0.modality", "MR")).encode()), RejectedItemDTO)


def test_a_non_object_item_is_rejected_without_an_id() -> None:
    result = parse([1, 2, 3])
    assert isinstance(result, RejectedItemDTO) and result.partner_id is None


def page(*items: object) -> bytes:
    return json.dumps({"items": list(items), "next_page_token": None}).encode()


def test_duplicate_ids_in_a_page_reject_every_copy_and_keep_the_rest() -> None:
    other = study_item(id="b-study-2", study_instance_uid="1.2.3.4", series=[])
    other["subject"] = study_item()["subject"]
    items, token = parser().parse_page(page(study_item(), study_item(description="copy"), other))
    assert token is None
    assert [type(i).__name__ for i in items] == ["RejectedItemDTO", "RejectedItemDTO", "PendingStudy"]
    assert isinstance(items[2].resolve(), StudyDTO)
    assert "appears in more than one item" in items[0].reason


def test_the_same_sop_uid_in_two_items_rejects_both() -> None:
    twin = study_item(id="b-study-2", study_instance_uid="1.2.3.4")
    items, _ = parser().parse_page(page(study_item(), twin))
    assert all(isinstance(i, RejectedItemDTO) for i in items)
    assert "series_instance_uid" in items[0].reason or "sop_instance_uid" in items[0].reason


def test_page_items_are_fingerprinted_before_validation() -> None:
    bad_inside = mutate("series.0.instances.0.sop_instance_uid", "1.02")
    (pending,), _ = parser().parse_page(page(bad_inside))
    assert pending.partner_id == "b-study-1" and pending.instance_count == 2 and len(pending.content_hash) == 64
    resolved = pending.resolve()  # the engine resolves only items whose hash changed
    assert isinstance(resolved, RejectedItemDTO) and "sop_instance_uid" in resolved.reason


def test_a_broken_envelope_is_a_page_error_not_an_item_error() -> None:
    from imaging_sync.errors import ValidationError

    with pytest.raises(ValidationError):
        parser().parse_page(b'{"results": []}')
    with pytest.raises(ValidationError):
        parser().parse_page(b"<html>")
