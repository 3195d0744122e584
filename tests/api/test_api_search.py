"""Study and subject search: filters, name words and DICOM name wildcards (Korean, accents), summaries, soft deletes."""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from typing import Any

import pytest
from api_fixtures import IndexBuilder, Keys, Located
from litestar import Litestar
from litestar.testing import TestClient

from imaging_sync.db.models import Series, Study


@pytest.fixture
def people(index: IndexBuilder) -> dict[str, uuid.UUID]:
    """Subjects with one dated study each (names as partners send them: PN, romanised, Hangul or accented)."""
    names = {
        "P1": "KIM^MINJI",
        "P2": "Kim^Minjun",
        "P3": "홍^길동",
        "P4": "홍^민지",
        "P5": "HONG^GILDONG=洪^吉洞=홍^길동",  # three component groups (PS3.5 §6.2)
        "P6": "LEE^SEOYEON",
        "P7": "O%BRIEN^A_B",  # LIKE metacharacters in the data itself
        "P8": "김^길동",
        "P9": "ÉMILE^ZOLA",
        "P10": unicodedata.normalize("NFD", "JOSÉ^MARÍA"),  # decomposed accents, as some systems send them
        "P11": "Van Der Berg^Jan",
        "P12": "김^민준",
    }
    studies = {}
    for i, (patient_id, name) in enumerate(names.items()):
        subject = index.subject(patient_id, name, issuer="HOSP-A")
        studies[patient_id] = index.study(subject, date=dt.date(2024, 1, 1) + dt.timedelta(days=i), accession=f"ACC{i}")
    return studies


@pytest.fixture(params=["subjects first", "dates first", "a scan too short"])
def name_plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way a name search can go: probe the matching subjects' studies, scan the newest studies, or a scan
    that ends before a page is full (then the subjects are probed after all)."""
    from imaging_sync.catalog import studies

    monkeypatch.setattr(studies, "NAME_SCAN_LIMIT", {"subjects first": 0, "dates first": 10**9, "a scan too short": 3}[request.param])
    return str(request.param)


def search(client: TestClient[Litestar], keys: Keys, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/studies", params={"limit": 200, **params}, headers=keys.headers("viewer"))
    assert response.status_code == 200, response.text
    return response.json()["items"]


def patients(items: list[dict[str, Any]]) -> set[str]:
    return {i["subject"]["patient_id"] for i in items}


def subject_ids(client: TestClient[Litestar], keys: Keys, **params: Any) -> set[str]:
    response = client.get("/api/v1/subjects", params={"limit": 200, **params}, headers=keys.headers("viewer"))
    assert response.status_code == 200, response.text
    return {s["patient_id"] for s in response.json()["items"]}


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("홍*", {"P3", "P4", "P5"}),
        ("*길동", {"P3", "P5", "P8"}),
        ("kim*", {"P1", "P2"}),
        ("KIM^MINJI", {"P1"}),
        ("kim^minj?", {"P1"}),
        ("*min*", {"P1", "P2"}),
        ("*민지", {"P4"}),
        ("hong*", {"P5"}),
        ("洪*", {"P5"}),
        ("o%brien*", {"P7"}),
        ("o_brien*", set()),  # "_" is a literal underscore, not a one-character wildcard
        ("*^a_b", {"P7"}),
        ("%", set()),
        ("ｋｉｍ*", {"P1", "P2"}),  # full-width Latin folds (NFKD)
        ("emile*", {"P9"}),  # accents fold away, in the data and in the pattern
        ("ÉMILE^ZOLA", {"P9"}),
        ("jose^maria", {"P10"}),
        ("hong", set()),  # no wildcard: the whole name or a whole group, not a word of it
        ("van der berg^*", {"P11"}),
    ],
)
def test_patient_name_wildcards_match_case_and_accent_insensitively_in_any_component_group(
    client: TestClient[Litestar], keys: Keys, people: dict[str, uuid.UUID], name_plan: str, pattern: str, expected: set[str]
) -> None:
    assert patients(search(client, keys, patient_name=pattern)) == expected
    assert subject_ids(client, keys, patient_name=pattern) == expected


# query -> the patients it finds (people above); one table, compared whole, so a failure shows every miss at once.
WORD_QUERIES = {
    "hong": {"P5"},  # a word of the name, not the whole of it
    "HONG": {"P5"},
    "gil hong": {"P5"},  # any order; each word the beginning of a word
    "gil* hong*": {"P5"},  # a trailing * means the same
    "kim": {"P1", "P2"},
    "kim minji": {"P1"},
    "kim* minj*": {"P1", "P2"},
    "ｋｉｍ": {"P1", "P2"},  # full-width Latin
    "minj": {"P1", "P2"},
    "inji": set(),  # the beginning of a word, not its middle
    "김": {"P8", "P12"},
    "김 민": {"P12"},
    "홍": {"P3", "P4", "P5"},
    "길동": {"P3", "P5", "P8"},
    "洪": {"P5"},
    "吉": {"P5"},
    "hong 홍": {"P5"},  # words from different component groups
    "gildong=길동": {"P5"},  # "=" separates words like any other separator
    "emile": {"P9"},  # accent-insensitive
    "Émile Zola": {"P9"},
    unicodedata.normalize("NFD", "émi"): {"P9"},  # a decomposed query
    "jose": {"P10"},  # a decomposed name
    "maría": {"P10"},
    "van der": {"P11"},
    "berg jan": {"P11"},
    "erg": set(),
    "o brien": {"P7"},
    "a_b": {"P7"},  # "_" is a word character, matched literally
    "a_c": set(),
    "lee park": set(),  # every word must match
}


def test_name_words_find_patients_by_the_beginnings_of_their_name_words(
    client: TestClient[Litestar], keys: Keys, people: dict[str, uuid.UUID], name_plan: str
) -> None:
    assert {q: patients(search(client, keys, name=q)) for q in WORD_QUERIES} == WORD_QUERIES
    assert {q: subject_ids(client, keys, name=q) for q in WORD_QUERIES} == WORD_QUERIES


def test_name_and_patient_name_together_must_both_match(client: TestClient[Litestar], keys: Keys, people: dict[str, uuid.UUID], name_plan: str) -> None:
    assert patients(search(client, keys, name="gil", patient_name="hong*")) == {"P5"}
    assert patients(search(client, keys, name="길동", patient_name="김*")) == {"P8"}
    assert patients(search(client, keys, name="minji", patient_name="hong*")) == set()
    assert subject_ids(client, keys, name="gil", patient_name="hong*") == {"P5"}


@pytest.mark.parametrize(
    "value,says",
    [
        ("hong?", "patient_name"),
        ("*hong", "patient_name"),
        ("ho*ng", "patient_name"),
        ("hong^*", "patient_name"),
        ("hong**", "patient_name"),
        ("＊hong", "patient_name"),  # a full-width star is a star
        ("^=", "letter or a digit"),
        ("  ", "letter or a digit"),
        ("a b c d e f g h i", "at most 8 words"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/api/v1/studies", "/api/v1/subjects"])
def test_a_name_that_is_not_words_is_a_400_naming_name(client: TestClient[Litestar], keys: Keys, endpoint: str, value: str, says: str) -> None:
    response = client.get(endpoint, params={"name": value}, headers=keys.headers("viewer"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == "name" and error["message"].startswith("name") and says in error["message"]


def test_the_openapi_document_tells_name_from_patient_name(client: TestClient[Litestar]) -> None:
    document = client.get("/api/v1/schema/openapi.json").json()
    for path in ("/api/v1/studies", "/api/v1/subjects"):
        parameters = {p["name"]: p["description"] for p in document["paths"][path]["get"]["parameters"] if p["in"] == "query"}
        assert "patient_name" in parameters["name"] and "`hong`" in parameters["name"]
        assert "DICOM wildcards" in parameters["patient_name"] and "`hong*`" in parameters["patient_name"]


def test_filters_combine_and_the_summary_shows_what_a_frontend_needs(client: TestClient[Litestar], keys: Keys, index: IndexBuilder) -> None:
    subject = index.subject("PX-1", "PARK^SUA", issuer="HOSP-B", birth_date=dt.date(1980, 2, 29), sex="F")
    study = index.study(subject, date=dt.date(2025, 3, 4), accession="A-77", description="CT CHEST", partners=("b", "c"))
    ct = index.series(study, "CT", number=1, partners=("b", "c"))
    index.series(study, "SR", number=2, partners=("c",))
    for n in range(3):
        index.instance(ct, number=n, locations=[Located("b", "x", f"k{n}")])
    other = index.study(subject, date=dt.date(2025, 3, 5), accession="A-78", partners=("c",))
    index.series(other, "MR")

    (item,) = search(client, keys, patient_id="PX-1", modality="ct")
    assert item["id"] == str(study)
    assert item["modalities"] == ["CT", "SR"] and item["series_count"] == 2 and item["instance_count"] == 3
    assert item["partners"] == ["b", "c"] and item["accession_number"] == "A-77" and item["description"] == "CT CHEST"
    assert item["subject"] == {"id": str(subject), "patient_id": "PX-1", "issuer": "HOSP-B", "patient_name": "PARK^SUA", "birth_date": "1980-02-29", "sex": "F"}
    assert item["study_date"] == "2025-03-04" and item["study_time"] == "101500"

    assert [i["id"] for i in search(client, keys, patient_id="PX-1")] == [str(other), str(study)]  # newest first
    assert [i["id"] for i in search(client, keys, patient_id="PX-1", partner="b")] == [str(study)]
    assert [i["id"] for i in search(client, keys, accession="A-78")] == [str(other)]
    assert [i["id"] for i in search(client, keys, date_from="2025-03-05", date_to="2025-03-05")] == [str(other)]
    assert [i["id"] for i in search(client, keys, date_to="2025-03-04", patient_id="PX-1")] == [str(study)]
    uid = item["study_instance_uid"]
    assert [i["id"] for i in search(client, keys, study_uid=uid)] == [str(study)]
    assert search(client, keys, patient_id="PX-1", modality="US") == []

    detail = client.get(f"/api/v1/studies/{study}", headers=keys.headers("viewer")).json()
    assert detail["study"]["id"] == str(study)
    assert [(s["modality"], s["instance_count"], s["partners"]) for s in detail["series"]] == [("CT", 3, ["b", "c"]), ("SR", 0, ["c"])]
    by_subject = client.get(f"/api/v1/subjects/{subject}/studies", headers=keys.headers("viewer")).json()["items"]
    assert [i["id"] for i in by_subject] == [str(other), str(study)]
    instances = client.get(f"/api/v1/series/{ct}/instances?limit=2", headers=keys.headers("viewer")).json()
    assert [i["instance_number"] for i in instances["items"]] == [0, 1] and instances["next_cursor"]
    rest = client.get(f"/api/v1/series/{ct}/instances", params={"cursor": instances["next_cursor"]}, headers=keys.headers("viewer")).json()
    assert [i["instance_number"] for i in rest["items"]] == [2] and rest["next_cursor"] is None


def test_soft_deleted_rows_are_hidden_everywhere(client: TestClient[Litestar], keys: Keys, index: IndexBuilder) -> None:
    subject = index.subject("PD-1", "CHO^HAJUN")
    kept, gone = index.study(subject, date=dt.date(2024, 1, 1)), index.study(subject, date=dt.date(2024, 1, 2))
    live_series, dead_series = index.series(kept, "CT"), index.series(kept, "MR")
    index.delete(Study, gone)
    index.delete(Series, dead_series)
    (item,) = search(client, keys, patient_id="PD-1")
    assert item["id"] == str(kept) and item["modalities"] == ["CT"] and item["series_count"] == 1
    assert search(client, keys, patient_id="PD-1", modality="MR") == []
    assert client.get(f"/api/v1/studies/{gone}", headers=keys.headers("viewer")).status_code == 404
    assert [s["id"] for s in client.get(f"/api/v1/studies/{kept}", headers=keys.headers("viewer")).json()["series"]] == [str(live_series)]
    assert client.get(f"/api/v1/series/{dead_series}/instances", headers=keys.headers("viewer")).status_code == 404


def test_undated_studies_come_last(client: TestClient[Litestar], keys: Keys, index: IndexBuilder) -> None:
    subject = index.subject("PU-1", "YOON^DOYUN")
    undated = index.study(subject, date=None)
    dated = index.study(subject, date=dt.date(2001, 1, 1))
    first = client.get("/api/v1/studies", params={"patient_id": "PU-1", "limit": 1}, headers=keys.headers("viewer")).json()
    assert [i["id"] for i in first["items"]] == [str(dated)]
    second = client.get("/api/v1/studies", params={"patient_id": "PU-1", "limit": 1, "cursor": first["next_cursor"]}, headers=keys.headers("viewer")).json()
    assert [i["id"] for i in second["items"]] == [str(undated)] and second["next_cursor"] is None


@pytest.mark.parametrize("name", [{"name": "park"}, {"patient_name": "park*"}, {"name": "park", "patient_name": "park*"}])
def test_a_name_search_pages_newest_first_the_same_with_either_plan(
    client: TestClient[Litestar], keys: Keys, index: IndexBuilder, name_plan: str, name: dict[str, str]
) -> None:
    expected = []
    for p in range(6):
        subject = index.subject(f"N{p}", f"PARK^SEO{p}", issuer="HOSP-A")
        other = index.subject(f"O{p}", f"LEE^SEO{p}", issuer="HOSP-A")
        for d in range(3):
            date = dt.date(2023, 1, 1) + dt.timedelta(days=(p * 7 + d * 11) % 40)
            expected.append((date.isoformat(), index.study(subject, date=date, accession=f"N{p}{d}")))
            index.study(other, date=date, accession=f"O{p}{d}")
    undated = index.study(index.subject("N9", "PARK^UNDATED", issuer="HOSP-A"), date=None, accession="N9")
    expected.sort(key=lambda e: (e[0], str(e[1])), reverse=True)
    seen, cursor = [], None
    while True:
        params = {**name, "limit": 4, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/studies", params=params, headers=keys.headers("viewer")).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(study_id) for _, study_id in expected] + [str(undated)]
