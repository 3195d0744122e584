"""The data model's generated parts say what the metadata says, and every table has its why in docs/data-model.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, ForeignKeyConstraint, Index, Integer, MetaData, String, Table, Text, UniqueConstraint, Uuid
from sqlalchemy.types import TypeEngine

from app.diagrams import data_model
from app.diagrams.markers import fill, names
from imaging_sync.db.models import Base
from imaging_sync.db.partitions import PARTITIONED
from imaging_sync.db.types import JSONType, UTCDateTime
from imaging_sync.errors import ValidationError

DOCUMENT = Path(__file__).parents[3] / "docs" / "data-model.md"
_ENTITY = re.compile(r"^    (\w+) \{\n(.*?)^    \}$", re.MULTILINE | re.DOTALL)
_ATTRIBUTE = re.compile(r'^\s+(?P<type>\S+) (?P<name>\w+)(?: (?P<keys>(?:PK|FK|UK)(?:, (?:PK|FK|UK))*))?(?: "(?P<comment>[^"]*)")?$')
_RELATION = re.compile(r'^    (\w+) ([|}][o|])--([o|][|{]) (\w+) : "([^"]*)"$', re.MULTILINE)


def _entities(diagram: str) -> dict[str, dict[str, dict[str, str]]]:
    """table -> column -> {type, keys, comment}, as the diagram draws them."""
    drawn = {}
    for table, body in _ENTITY.findall(diagram):
        columns = {}
        for line in body.splitlines():
            match = _ATTRIBUTE.match(line)
            assert match, f"not an attribute line: {line!r}"
            columns[match["name"]] = {"type": match["type"], "keys": match["keys"] or "", "comment": match["comment"] or ""}
        drawn[table] = columns
    return drawn


def _diagrams(parts: dict[str, str]) -> dict[str, str]:
    return {name: text for name, text in parts.items() if name.endswith("-diagram")}


def _all_entities(parts: dict[str, str]) -> dict[str, dict[str, dict[str, str]]]:
    drawn: dict[str, dict[str, dict[str, str]]] = {}
    for text in _diagrams(parts).values():
        drawn.update(_entities(text))
    return drawn


def _relations(parts: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
    return [relation for text in _diagrams(parts).values() for relation in _RELATION.findall(text)]


def _copy_of_the_model() -> MetaData:
    copy = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(copy)
    return copy


def test_the_diagrams_list_every_table_and_column_of_the_metadata() -> None:
    drawn = _all_entities(data_model.parts())
    assert sorted(drawn) == sorted(Base.metadata.tables)
    for name, table in Base.metadata.tables.items():
        assert sorted(drawn[name]) == sorted(c.name for c in table.columns), name
        for column in table.columns:
            assert drawn[name][column.name]["type"] == data_model.type_name(column.type), f"{name}.{column.name}"


def test_each_table_is_drawn_in_exactly_one_diagram() -> None:
    counts: dict[str, int] = {}
    for text in _diagrams(data_model.parts()).values():
        for table in _entities(text):
            counts[table] = counts.get(table, 0) + 1
    assert {table for table, count in counts.items() if count != 1} == set()


def test_keys_are_marked_primary_foreign_and_unique() -> None:
    drawn = _all_entities(data_model.parts())
    assert drawn["study"]["id"]["keys"] == "PK"
    assert drawn["study"]["subject_id"]["keys"] == "FK"
    assert drawn["study"]["study_instance_uid"]["keys"] == "UK"
    assert drawn["subject_name_token"]["subject_id"]["keys"] == "PK, FK"
    assert drawn["audit_completion"]["audit_id"]["keys"] == "PK, FK"
    # Unique only together with partner: not UK, but said in the comment.
    assert drawn["instance_location"]["instance_id"]["keys"] == "FK"
    assert "unique with partner" in drawn["instance_location"]["instance_id"]["comment"]
    assert "unique with instance_id" in drawn["instance_location"]["partner"]["comment"]
    assert "nullable" in drawn["instance_location"]["sha256"]["comment"]
    assert "nullable" not in drawn["instance_location"]["bucket"]["comment"]
    assert "written by the database" in drawn["audit_log"]["seq"]["comment"]


def test_a_table_and_a_column_added_to_the_metadata_appear() -> None:
    metadata = _copy_of_the_model()
    metadata.tables["study"].append_column(Column("priority_note", Text, nullable=True))
    Table(
        "study_review",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("study_id", Uuid, ForeignKey("study.id"), nullable=False),
        Column("reviewer", String(40), nullable=False),
        UniqueConstraint("study_id", "reviewer"),
    )
    areas = {**data_model.AREAS, "operations": (*data_model.AREAS["operations"], "study_review")}

    parts = data_model.parts(metadata, areas=areas)

    drawn = _entities(parts["operations-diagram"])
    assert drawn["study_review"] == {
        "id": {"type": "uuid", "keys": "PK", "comment": ""},
        "study_id": {"type": "uuid", "keys": "FK", "comment": "unique with reviewer"},
        "reviewer": {"type": "string(40)", "keys": "", "comment": "unique with study_id"},
    }
    assert _all_entities(parts)["study"]["priority_note"] == {"type": "text", "keys": "", "comment": "nullable"}
    assert ("study_review", "}o", "||", "study", "study_id") in _relations(parts)
    assert "| `study_review` | `study_id`, `reviewer` | `uq_study_review_study_id_reviewer` | unique constraint |" in parts["unique-constraints"]


def test_a_table_in_no_area_fails_naming_it() -> None:
    metadata = _copy_of_the_model()
    Table("study_review", metadata, Column("id", Uuid, primary_key=True))
    with pytest.raises(ValidationError, match=r"study_review are in no area") as raised:
        data_model.parts(metadata)
    assert "AREAS in app/diagrams/data_model.py" in str(raised.value)


def test_an_area_naming_a_table_the_metadata_lacks_fails_naming_it() -> None:
    metadata = _copy_of_the_model()
    metadata.remove(metadata.tables["alert_state"])
    with pytest.raises(ValidationError, match=r"area 'operations' lists table 'alert_state'"):
        data_model.parts(metadata)


def test_a_table_in_two_areas_fails() -> None:
    areas = {**data_model.AREAS, "operations": (*data_model.AREAS["operations"], "study")}
    with pytest.raises(ValidationError, match=r"table 'study' is in two areas"):
        data_model.parts(areas=areas)


def test_foreign_keys_are_drawn_from_child_to_parent_with_their_cardinality() -> None:
    relations = _relations(data_model.parts())
    assert sorted(relations) == sorted([
        ("audit_completion", "|o", "||", "audit_log", "audit_id"),  # its key is the entry's: at most one per entry
        ("instance", "}o", "||", "series", "series_id"),
        ("instance_location", "}o", "||", "instance", "instance_id"),
        ("instance_header", "|o", "||", "instance", "instance_id"),  # its key is the instance's: at most one per instance
        ("rejected_item", "}o", "||", "sync_run", "run_id"),
        ("series", "}o", "||", "study", "study_id"),
        ("study", "}o", "||", "subject", "subject_id"),
        ("subject_name_token", "}o", "||", "subject", "subject_id, on delete cascade"),
    ])
    foreign_keys = sorted((fk.parent.name, fk.referred_table.name) for table in Base.metadata.tables.values() for fk in table.foreign_key_constraints)
    assert sorted((child, parent) for child, _, _, parent, _ in relations) == foreign_keys


def test_a_nullable_key_is_zero_or_one_parent_and_a_unique_key_one_to_one() -> None:
    metadata = MetaData()
    Table("parent", metadata, Column("id", Integer, primary_key=True), Column("a", Integer), Column("b", Integer), UniqueConstraint("a", "b"))
    Table("optional_child", metadata, Column("id", Integer, primary_key=True), Column("parent_id", ForeignKey("parent.id"), nullable=True))
    Table("twin", metadata, Column("id", Integer, primary_key=True), Column("parent_id", ForeignKey("parent.id"), nullable=False, unique=True))
    Table("pair_child", metadata, Column("id", Integer, primary_key=True), Column("a", Integer, nullable=False), Column("b", Integer, nullable=False),
          ForeignKeyConstraint(["a", "b"], ["parent.a", "parent.b"]))
    areas = {"all": ("parent", "optional_child", "twin", "pair_child")}

    relations = _relations(data_model.parts(metadata, areas=areas, partitioned={}))

    assert sorted(relations) == [
        ("optional_child", "}o", "o|", "parent", "parent_id"),
        ("pair_child", "}o", "||", "parent", "a, b"),
        ("twin", "|o", "||", "parent", "parent_id"),
    ]


def test_the_unique_constraints_table_carries_the_federation_rules() -> None:
    table = data_model.parts()["unique-constraints"]
    # One location per partner per instance.
    assert "| `instance_location` | `instance_id`, `partner` | `uq_instance_location_instance_id_partner` | unique constraint |" in table
    # One subject per issuer and patient ID, whichever partner sends it; one study per Study Instance UID.
    assert "| `subject` | `issuer`, `patient_id` | `uq_subject_issuer_patient_id` | unique constraint |" in table
    assert "| `study` | `study_instance_uid` | `uq_study_study_instance_uid` | unique constraint |" in table
    uniques = [c for t in Base.metadata.tables.values() for c in t.constraints if isinstance(c, UniqueConstraint)]
    assert len(table.splitlines()) == 2 + len(uniques)
    for constraint in uniques:
        assert f"`{constraint.name}`" in table


def test_a_unique_index_is_listed_too() -> None:
    metadata = _copy_of_the_model()
    Index("ix_api_key_name_unique", metadata.tables["api_key"].c.name, unique=True)
    parts = data_model.parts(metadata)
    assert "| `api_key` | `name` | `ix_api_key_name_unique` | unique index |" in parts["unique-constraints"]
    assert _all_entities(parts)["api_key"]["name"]["keys"] == "UK"


def test_the_partitioned_tables_are_those_the_partitions_module_declares() -> None:
    parts = data_model.parts()
    rows = [line for line in parts["partitioned-tables"].splitlines()[2:]]
    assert rows == [f"| `{table}` | `{key}` | {data_model.type_name(Base.metadata.tables[table].c[key].type)} |" for table, key in sorted(PARTITIONED.items())]
    assert "monthly partition key" in _all_entities(parts)["audit_log"]["id"]["comment"]


def test_a_partition_naming_a_missing_column_fails() -> None:
    with pytest.raises(ValidationError, match=r"audit_log\.month"):
        data_model.parts(partitioned={"audit_log": "month"})


@pytest.mark.parametrize(
    ("type_", "name"),
    [(UTCDateTime(), "datetime"), (JSONType, "json"), (String(64).with_variant(String(64, collation="C"), "postgresql"), "string(64)"), (Text(), "text"), (Uuid(), "uuid")],
)
def test_types_are_drawn_by_their_portable_name(type_: TypeEngine[Any], name: str) -> None:
    assert data_model.type_name(type_) == name


def _hand_written() -> str:
    """docs/data-model.md with its generated parts emptied: what a person wrote."""
    text = DOCUMENT.read_text(encoding="utf-8")
    return fill(text, dict.fromkeys(names(text), ""), document=str(DOCUMENT))


def _paragraphs() -> dict[str, str]:
    """``### name`` heading -> the text under it, outside the generated parts."""
    sections = re.split(r"^### (\S+)\n", _hand_written(), flags=re.MULTILINE)
    return {heading: body.split("\n## ")[0].split("<!--")[0].strip() for heading, body in zip(sections[1::2], sections[2::2], strict=True)}


def test_every_table_has_a_paragraph_on_why_it_exists() -> None:
    paragraphs = _paragraphs()
    missing = sorted(set(Base.metadata.tables) - set(paragraphs))
    assert not missing, f"docs/data-model.md: add a '### name' paragraph on why each of these tables exists: {', '.join(missing)}"
    short = sorted(name for name in Base.metadata.tables if len(paragraphs[name].split()) < 25)
    assert not short, f"docs/data-model.md: say why, in a paragraph: {', '.join(short)}"


def test_every_table_paragraph_names_a_table_of_the_metadata() -> None:
    stale = sorted(set(_paragraphs()) - set(Base.metadata.tables))
    assert not stale, f"docs/data-model.md has paragraphs for tables the metadata no longer has: {', '.join(stale)}"


def test_the_document_has_a_marked_place_for_every_generated_part() -> None:
    assert names(DOCUMENT.read_text(encoding="utf-8")) == list(data_model.parts())
