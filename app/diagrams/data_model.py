"""The data model (``docs/data-model.md``): the tables, keys and relations as the SQLAlchemy metadata declares them.

Everything here is read from :data:`imaging_sync.db.models.Base.metadata`
(the same declaration the migrations are checked against), so a column, a
key or a unique constraint added there appears in the document at the next
``imaging-sync docs generate``, and the up-to-date test fails until it does.

All the tables in one entity-relationship diagram would be a wall; they are drawn
in three, by :data:`AREAS`: the federated index with the sync that fills it,
the audit trail, and the operational tables (outbox, API keys, alerts). Each
table is in exactly one area, and the assignment is checked both ways: a
table of the metadata in no area, or an area naming a table the metadata no
longer has, is an error naming it. A catch-all "other" diagram would have
been quieter, but a new table deserves a decision about where a reader finds
it (and a paragraph on why it exists, which the document's test asks for).

Relations are the foreign keys, one line each, drawn from the child that
holds the key to the parent it names, as the ORM relationships point
(``lazy="raise"``, child to parent only). The cardinality is the key's own:
a nullable key is "zero or one" parent, a key that is also unique (or the
whole primary key) is one-to-one. References without a foreign key (the
polymorphic ``entity_link.entity_id``, the audit trail's ids, which must
outlive the rows they name) are not relations here; the hand-written
paragraphs say why.

Besides the diagrams: a table of the unique constraints and unique indexes,
which carry the federation rules (one row per DICOM UID whoever sends it,
one location per partner per instance, ...), and of the tables partitioned
by month on PostgreSQL (:data:`imaging_sync.db.partitions.PARTITIONED`, the
one declaration of them; the metadata itself does not know).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, Date, DateTime, FetchedValue, ForeignKeyConstraint, Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint, Uuid
from sqlalchemy.types import TypeDecorator, TypeEngine

from imaging_sync.db.models import Base
from imaging_sync.db.partitions import PARTITIONED
from imaging_sync.errors import ValidationError

# area -> its tables, parents before children; each area is one diagram, the part "<area>-diagram".
AREAS: dict[str, tuple[str, ...]] = {
    # What a search reads and a sync writes: the entities, their provenance and copies, and the sync's own records.
    "index": (
        "subject", "subject_name_token", "study", "series", "instance", "entity_link", "instance_location", "instance_header",
        "partner_state", "sync_run", "rejected_item",
    ),
    # Who saw which patient's data, and the evidence that the record is whole.
    "audit": (
        "audit_log", "audit_completion", "audit_disclosure", "audit_seal", "audit_archive", "audit_export_cursor", "audit_refusal",
    ),
    # Running the service: events for downstream systems, who may call, what is wrong.
    "operations": ("outbox_event", "api_key", "alert_state"),
}

_WHERE = "AREAS in app/diagrams/data_model.py"

# Generic SQL types, most specific first (BigInteger is an Integer, Text a String): the short names drawn.
_TYPE_NAMES: tuple[tuple[type[TypeEngine[Any]], str], ...] = (
    (Uuid, "uuid"),
    (BigInteger, "bigint"),
    (Integer, "int"),
    (Boolean, "bool"),
    (DateTime, "datetime"),
    (Date, "date"),
    (Text, "text"),
    (String, "string"),
    (LargeBinary, "bytes"),
    (JSON, "json"),
)


def type_name(type_: TypeEngine[Any]) -> str:
    """A short portable name for a column's type: ``string(63)``, ``uuid``, ``datetime``, ``json``.

    The generic type, not a dialect's: the same schema runs on PostgreSQL and
    SQLite, and a variant (JSONB, ``COLLATE "C"``) is a detail of one of them.
    A type decorator is drawn as what it stores (``UTCDateTime`` is a
    ``datetime``); a type not listed here by its class name, lower-cased.
    """
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    for generic, name in _TYPE_NAMES:
        if isinstance(type_, generic):
            length = getattr(type_, "length", None)
            return f"{name}({length})" if length and not isinstance(type_, Text) else name
    return type(type_).__name__.lower()


def _unique_sets(table: Table) -> list[tuple[str, ...]]:
    """The column sets ``table`` keeps unique: its unique constraints and unique indexes (not the primary key)."""
    sets = [tuple(c.name for c in constraint.columns) for constraint in table.constraints if isinstance(constraint, UniqueConstraint)]
    sets += [tuple(c.name for c in index.columns) for index in table.indexes if index.unique]
    return sets


def _keys(column: Column[Any], table: Table) -> list[str]:
    keys = []
    if column.primary_key:
        keys.append("PK")
    if column.foreign_keys:
        keys.append("FK")
    if (column.name,) in _unique_sets(table):
        keys.append("UK")
    return keys


def _notes(column: Column[Any], table: Table, partition_key: str | None) -> list[str]:
    """What the attribute's comment says: unique with which columns, nullable, written by the database, partition key."""
    notes = []
    for unique in _unique_sets(table):
        if len(unique) > 1 and column.name in unique:
            notes.append("unique with " + ", ".join(name for name in unique if name != column.name))
    if column.nullable and not column.primary_key:
        notes.append("nullable")
    if type(column.server_default) is FetchedValue:
        notes.append("written by the database")
    if column.name == partition_key:
        notes.append("monthly partition key (PostgreSQL)")
    if column.comment:
        notes.append(column.comment.replace('"', "'"))
    return notes


def _one_to_one(constraint: ForeignKeyConstraint, table: Table) -> bool:
    """At most one child per parent: the key's columns are unique by themselves (or with nothing else)."""
    columns = {c.name for c in constraint.columns}
    candidates = [set(unique) for unique in _unique_sets(table)] + [{c.name for c in table.primary_key.columns}]
    return any(candidate and candidate <= columns for candidate in candidates)


def relation(constraint: ForeignKeyConstraint) -> str:
    """One foreign key as a Mermaid relationship, from the child that holds it to the parent it names.

    Child side: ``|o`` (zero or one child per parent) when the key is unique,
    else ``}o`` (zero or more). Parent side: ``o|`` (zero or one) when the
    key may be NULL, else ``||`` (exactly one). The label is the key's
    columns, and its ON DELETE rule when it has one.
    """
    child = constraint.table
    children = "|o" if _one_to_one(constraint, child) else "}o"
    parents = "o|" if any(c.nullable for c in constraint.columns) else "||"
    label = ", ".join(c.name for c in constraint.columns)
    if constraint.ondelete:
        label += f", on delete {constraint.ondelete.lower()}"
    return f'    {child.name} {children}--{parents} {constraint.referred_table.name} : "{label}"'


def er_diagram(tables: Sequence[Table], partitioned: Mapping[str, str] = PARTITIONED) -> str:
    """A fenced Mermaid ``erDiagram`` of ``tables``: each with every column, then the foreign keys they hold.

    Columns are drawn primary key first, then in declared order (SQLAlchemy
    lists a mixin's columns, such as the entities' ``id``, after the class's own).

    A key naming a table outside ``tables`` is drawn too; Mermaid shows that
    parent as a bare box, the pointer to the other diagram.
    """
    lines = ["```mermaid", "erDiagram"]
    for table in tables:
        lines.append(f"    {table.name} {{")
        for column in sorted(table.columns, key=lambda column: not column.primary_key):
            keys = _keys(column, table)
            notes = _notes(column, table, partitioned.get(table.name))
            attribute = f"        {type_name(column.type)} {column.name}"
            if keys:
                attribute += " " + ", ".join(keys)
            if notes:
                attribute += ' "' + "; ".join(notes) + '"'
            lines.append(attribute)
        lines.append("    }")
    relations = sorted(
        relation(constraint)
        for table in tables
        for constraint in table.foreign_key_constraints
    )
    lines += relations
    lines.append("```")
    return "\n".join(lines)


def tables_by_area(metadata: MetaData, areas: Mapping[str, Sequence[str]] = AREAS) -> dict[str, list[Table]]:
    """Each area's tables, checked: every table of ``metadata`` in exactly one area, every name a table of it."""
    seen: dict[str, str] = {}
    for area, names in areas.items():
        for name in names:
            if name in seen:
                raise ValidationError(_WHERE, f"table {name!r} is in two areas ({seen[name]!r} and {area!r}); keep it in one")
            if name not in metadata.tables:
                raise ValidationError(_WHERE, f"area {area!r} lists table {name!r}, which the metadata does not have (renamed or dropped?)")
            seen[name] = area
    unassigned = sorted(set(metadata.tables) - set(seen))
    if unassigned:
        raise ValidationError(
            _WHERE,
            f"table(s) {', '.join(unassigned)} are in no area, so no diagram would draw them; add each to the area a reader "
            f"would look in, and its '### name' paragraph to docs/data-model.md",
        )
    return {area: [metadata.tables[name] for name in names] for area, names in areas.items()}


def _cells(values: Iterable[str]) -> str:
    return "| " + " | ".join(values) + " |"


def unique_rules(metadata: MetaData) -> str:
    """A Markdown table of every unique constraint and unique index: table, columns, name, kind."""
    rows = []
    for table in metadata.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint, UniqueConstraint):
                rows.append((table.name, tuple(c.name for c in constraint.columns), str(constraint.name or ""), "unique constraint"))
        for index in table.indexes:
            if index.unique:
                rows.append((table.name, tuple(c.name for c in index.columns), str(index.name or ""), "unique index"))
    lines = [_cells(("table", "columns", "name", "kind")), _cells(("---",) * 4)]
    for name, columns, constraint_name, kind in sorted(rows):
        lines.append(_cells((f"`{name}`", ", ".join(f"`{c}`" for c in columns), f"`{constraint_name}`" if constraint_name else "(unnamed)", kind)))
    return "\n".join(lines)


def partition_table(metadata: MetaData, partitioned: Mapping[str, str] = PARTITIONED) -> str:
    """A Markdown table of the partitioned tables: table, partition key column, its type."""
    lines = [_cells(("table", "partition key", "type")), _cells(("---",) * 3)]
    for name, key in sorted(partitioned.items()):
        table = metadata.tables.get(name)
        if table is None or key not in table.columns:
            raise ValidationError("imaging_sync/db/partitions.py PARTITIONED", f"partitions {name}.{key}, which the metadata does not have")
        lines.append(_cells((f"`{name}`", f"`{key}`", type_name(table.columns[key].type))))
    return "\n".join(lines)


def parts(
    metadata: MetaData = Base.metadata,
    *,
    areas: Mapping[str, Sequence[str]] = AREAS,
    partitioned: Mapping[str, str] = PARTITIONED,
) -> dict[str, str]:
    """The generated parts of ``docs/data-model.md``: a diagram per area, the unique rules, the partitioned tables."""
    drawn = {f"{area}-diagram": er_diagram(tables, partitioned) for area, tables in tables_by_area(metadata, areas).items()}
    drawn["unique-constraints"] = unique_rules(metadata)
    drawn["partitioned-tables"] = partition_table(metadata, partitioned)
    return drawn


__all__ = ["AREAS", "er_diagram", "partition_table", "parts", "relation", "tables_by_area", "type_name", "unique_rules"]
