"""Applying one page of a partner's studies to the index, set-based.

Everything here runs inside the page's transaction (the caller commits it
together with the bookmark). Per entity level there is one SELECT of the
existing rows, one batched INSERT … ON CONFLICT DO NOTHING for the new ones and
one executemany UPDATE for the changed ones; no ORM unit-of-work, no
per-row round trips.

What counts as a change: an item whose raw form is the one committed is
skipped without validation; an item that was validated is changed only when
its mapped content (the canonical DTO, what would be written) differs from
what was committed for it (:func:`link_fingerprint`). An unchanged item writes
no entity row, no fact and no outbox event, and counts ``unchanged``.

Federation rules, in one place:
- the same DICOM UID (subject: issuer + patient ID) from two partners is one row;
- a row shows the values of the highest-priority partner that has it (ties: the
  partner name that sorts first); each partner's own values are kept in its
  link's ``attrs`` so the next partner can take over when one drops out;
- a study item is a snapshot: links of this partner under that study that the
  item no longer lists are removed, and so are its locations;
- an entity that no partner links any more is soft-deleted; one that comes
  back is revived.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import Connection, Date, RowMapping, Table, Uuid, bindparam, delete, select, tuple_, update

from imaging_sync import outbox
from imaging_sync.catalog import facts, headers
from imaging_sync.db import bulk
from imaging_sync.db.models import EntityLink, Instance, InstanceLocation, RejectedItem, Series, Study, Subject, table_of
from imaging_sync.dto import DeletedStudyDTO, PageItem, PendingStudy, RejectedItemDTO, StudyDTO
from imaging_sync.ids import new_ids
from imaging_sync.person_names import search_form
from imaging_sync.query.names import stored_words

_links = table_of(EntityLink)
_locations = table_of(InstanceLocation)
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Level:
    """One entity level: its table, identity columns and the values partners supply."""

    name: str
    table: Table
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    parent_column: str | None = None  # a value column naming the parent row (a series may move to another study)

    def key_of(self, row: Mapping[str, Any] | RowMapping) -> tuple[Any, ...]:
        return tuple(row[c] for c in self.key_columns)


SUBJECT = Level("subject", table_of(Subject), ("issuer", "patient_id"), ("patient_name", "patient_name_search", "patient_name_words", "birth_date", "sex"))
STUDY = Level(
    "study",
    table_of(Study),
    ("study_instance_uid",),
    ("subject_id", "accession_number", "study_date", "study_time", "description", "referring_physician_name", "referring_physician_name_search"),
)
SERIES = Level("series", table_of(Series), ("series_instance_uid",), ("study_id", "modality", "series_number", "description", "body_part_examined"), "study_id")
INSTANCE = Level("instance", table_of(Instance), ("sop_instance_uid",), ("series_id", "sop_class_uid", "transfer_syntax_uid", "instance_number"), "series_id")
LEVELS = {level.name: level for level in (SUBJECT, STUDY, SERIES, INSTANCE)}


@dataclass
class PageOutcome:
    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0
    instances: int = 0
    instances_written: int = 0  # instances of created or changed studies
    rejections: list[RejectedItemDTO] = field(default_factory=list)


@dataclass
class _Wanted:
    """What this page says the partner has: entity rows and the partner's links."""

    rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=lambda: {name: {} for name in LEVELS})
    # (level, key, partner_entity_id, partner_study_id, hash of the whole item for study links)
    links: list[tuple[str, tuple[Any, ...], str, str, str | None]] = field(default_factory=list)
    # sop_instance_uid -> location values
    locations: dict[str, dict[str, Any]] = field(default_factory=dict)


class PageWriter:
    """Writes pages for one partner; ``priorities`` is every configured partner's priority.

    ``events``: write the page's outbox events (``outbox.has_sink``). With no sink nobody
    would ever drain them, so none are written.
    """

    def __init__(self, partner: str, priorities: Mapping[str, int], *, events: bool = True) -> None:
        self.partner = partner
        self.priorities = dict(priorities)
        self.priority = self.priorities.get(partner, 0)
        self.events = events

    def apply(self, conn: Connection, items: Sequence[PageItem], run_id: uuid.UUID, now: dt.datetime) -> PageOutcome:
        outcome = PageOutcome(fetched=len(items))
        studies = [i for i in items if isinstance(i, (StudyDTO, PendingStudy))]
        deletions = [i for i in items if isinstance(i, DeletedStudyDTO)]
        outcome.rejections = [i for i in items if isinstance(i, RejectedItemDTO)]
        outcome.instances = sum(s.instance_count for s in studies)

        known = self._study_link_hashes(conn, [i.partner_id for i in (*studies, *deletions)])
        changed: list[StudyDTO] = []
        restamped: dict[str, str] = {}  # partner study id -> its new link fingerprint (raw moved, mapped did not)
        for study in studies:
            stored = known.get(study.partner_id)
            if stored is not None and same_raw(stored, study.content_hash):
                outcome.unchanged += 1  # the fast path: not even validated
                continue
            resolved = study.resolve() if isinstance(study, PendingStudy) else study
            if isinstance(resolved, RejectedItemDTO):
                outcome.rejections.append(resolved)
                continue
            fingerprint = link_fingerprint(resolved)
            if stored is not None and same_mapped(stored, fingerprint):
                outcome.unchanged += 1
                restamped[study.partner_id] = fingerprint
                continue
            changed.append(resolved)
        outcome.rejected = len(outcome.rejections)
        self._record_rejections(conn, outcome.rejections, run_id, now)
        self._restamp_study_links(conn, restamped)
        outcome.created = sum(1 for s in changed if s.partner_id not in known)
        outcome.instances_written = sum(s.instance_count for s in changed)
        outcome.updated = len(changed) - outcome.created
        outcome.deleted = sum(1 for d in deletions if d.partner_id in known)
        outcome.unchanged += len(deletions) - outcome.deleted
        snapshot_ids = [s.partner_id for s in changed] + [d.partner_id for d in deletions if d.partner_id in known]
        if not snapshot_ids:
            return outcome

        wanted = self._wanted(changed)
        self._add_facts(wanted)
        # Parents a series or instance left in this page (level name -> parent ids): their facts change too.
        moved_from: dict[str, set[uuid.UUID]] = defaultdict(set)
        ids: dict[str, dict[tuple[Any, ...], uuid.UUID]] = {}
        created: dict[str, set[uuid.UUID]] = {}
        revived: dict[str, set[uuid.UUID]] = {}
        for level, parent_level, parent_column in ((SUBJECT, None, None), (STUDY, SUBJECT, "subject_id"), (SERIES, STUDY, "study_id"), (INSTANCE, SERIES, "series_id")):
            rows = wanted.rows[level.name]
            surely_new: set[tuple[Any, ...]] = set()
            if parent_level is not None and parent_column is not None:
                parent_ids, new_parents = ids[parent_level.name], created[parent_level.name]
                for key, row in rows.items():
                    row[parent_column] = parent_ids[row.pop("_parent_key")]
                    if parent_column != "subject_id" and row[parent_column] in new_parents:
                        surely_new.add(key)
            ids[level.name], created[level.name], revived[level.name] = self._upsert_entities(conn, level, rows, now, surely_new, moved_from)
        # Only studies this partner listed before can have links to diff against.
        removed = self._write_links(conn, wanted, ids, [sid for sid in snapshot_ids if sid in known], now)
        self._write_locations(conn, wanted, ids[INSTANCE.name], created[INSTANCE.name], now)
        retired = self._drop_removed(conn, removed, now, moved_from)

        # The outbox rows commit with the changes they describe (same transaction).
        events: dict[uuid.UUID, str] = {}
        for study in changed:
            study_id = ids[STUDY.name][(study.study_instance_uid,)]
            is_new = study_id in created[STUDY.name] or study_id in revived[STUDY.name]
            events[study_id] = "study.created" if is_new else "study.updated"
        for level_name, entity_id in removed:
            if level_name == STUDY.name:
                events[entity_id] = "study.deleted" if entity_id in retired else events.get(entity_id, "study.updated")
        # Studies made here from rows all made here already have their facts (written with them, _add_facts).
        touched = set(events) - self._made_whole(wanted, ids, created)
        touched |= moved_from[SERIES.name] | facts.studies_of_series(conn, moved_from[INSTANCE.name])
        facts.refresh(conn, touched)
        named = {*ids[SUBJECT.name].values(), *(eid for level, eid in removed if level == SUBJECT.name)}
        facts.copy_patient_names(conn, named)
        facts.refresh_name_tokens(conn, named)
        if self.events:
            outbox.add_study_events(conn, self.partner, events, now)
        return outcome

    # -- what the page says -------------------------------------------------

    def _wanted(self, studies: Iterable[StudyDTO]) -> _Wanted:
        wanted = _Wanted()
        rows = wanted.rows
        for study in studies:
            sid = study.partner_id
            subject = study.subject
            subject_key = (subject.issuer, subject.patient_id)
            rows["subject"][subject_key] = {
                "issuer": subject.issuer,
                "patient_id": subject.patient_id,
                "patient_name": subject.name,
                **_name_forms(subject.name),
                "birth_date": subject.birth_date,
                "sex": subject.sex,
            }
            wanted.links.append(("subject", subject_key, subject.partner_id, sid, None))
            study_key = (study.study_instance_uid,)
            rows["study"][study_key] = {
                "study_instance_uid": study.study_instance_uid,
                "_parent_key": subject_key,
                "accession_number": study.accession_number,
                "study_date": study.study_date,
                "study_time": study.study_time,
                "description": study.description,
                "referring_physician_name": study.referring_physician_name,
                "referring_physician_name_search": search_form(study.referring_physician_name),
                # As the subject row says; copy_patient_names mends them when the stored subject says otherwise.
                **_name_forms(subject.name),
            }
            # The study link carries the item's fingerprints: raw equal next time means "skip the item",
            # mapped equal means "nothing to write" (link_fingerprint).
            wanted.links.append(("study", study_key, sid, sid, link_fingerprint(study)))
            for series in study.series:
                series_key = (series.series_instance_uid,)
                rows["series"][series_key] = {
                    "series_instance_uid": series.series_instance_uid,
                    "_parent_key": study_key,
                    "modality": series.modality,
                    "series_number": series.series_number,
                    "description": series.description,
                    "body_part_examined": series.body_part_examined,
                }
                wanted.links.append(("series", series_key, series.partner_id, sid, None))
                for inst in series.instances:
                    rows["instance"][(inst.sop_instance_uid,)] = {
                        "sop_instance_uid": inst.sop_instance_uid,
                        "_parent_key": series_key,
                        "sop_class_uid": inst.sop_class_uid,
                        "transfer_syntax_uid": inst.transfer_syntax_uid,
                        "instance_number": inst.instance_number,
                    }
                    wanted.links.append(("instance", (inst.sop_instance_uid,), inst.partner_id, sid, None))
                    wanted.locations[inst.sop_instance_uid] = {
                        "bucket": inst.bucket,
                        "key": inst.key,
                        "size_bytes": inst.size_bytes,
                        "sha256": inst.sha256,
                    }
        return wanted

    # -- facts (catalog.facts) --------------------------------------------------

    def _add_facts(self, wanted: _Wanted) -> None:
        """Each study and series row carries the facts its page rows give it, for when it is inserted.

        Counted from the rows (keyed by UID), not the items: a series listed
        twice is one series. When an existing row is involved instead, the
        facts are recounted from the database after the writes (facts.refresh).
        """
        rows = wanted.rows
        instances: dict[tuple[Any, ...], int] = defaultdict(int)
        for row in rows[INSTANCE.name].values():
            instances[row["_parent_key"]] += 1
        per_study: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [set(), 0, 0])
        for key, row in rows[SERIES.name].items():
            row.update(instance_count=instances[key], partners=self.partner)
            modalities, _, _ = study = per_study[row["_parent_key"]]
            modalities.add(row["modality"])
            study[1] += 1
            study[2] += instances[key]
        for key, row in rows[STUDY.name].items():
            modalities, series_count, instance_count = per_study[key]
            row.update(modalities=facts.join_modalities(modalities), series_count=series_count, instance_count=instance_count, partners=self.partner)

    @staticmethod
    def _made_whole(wanted: _Wanted, ids: dict[str, dict[tuple[Any, ...], uuid.UUID]], created: dict[str, set[uuid.UUID]]) -> set[uuid.UUID]:
        """Studies inserted in this page whose series and instances were all inserted in it too: their facts are right as written."""
        series_ids, made_series, made_instances = ids[SERIES.name], created[SERIES.name], created[INSTANCE.name]
        study_of_series = {series_ids[key]: row["study_id"] for key, row in wanted.rows[SERIES.name].items()}
        mixed = {row["study_id"] for key, row in wanted.rows[SERIES.name].items() if series_ids[key] not in made_series}
        mixed |= {study_of_series[row["series_id"]] for key, row in wanted.rows[INSTANCE.name].items() if ids[INSTANCE.name][key] not in made_instances}
        return {ids[STUDY.name][key] for key in wanted.rows[STUDY.name]} & created[STUDY.name] - mixed

    # -- entities -------------------------------------------------------------

    def _upsert_entities(
        self,
        conn: Connection,
        level: Level,
        rows: dict[tuple[Any, ...], dict[str, Any]],
        now: dt.datetime,
        surely_new: set[tuple[Any, ...]],
        moved_from: dict[str, set[uuid.UUID]],
    ) -> tuple[dict[tuple[Any, ...], uuid.UUID], set[uuid.UUID], set[uuid.UUID]]:
        """Insert new rows, update rows this partner owns whose values changed.

        Returns key → id for every row, the ids created here and the ids revived
        (soft-deleted rows this partner brings back). Rows whose
        parent was created in this page are not looked up first: they can only
        exist already if they moved from another parent, and then the insert's
        ON CONFLICT finds them (the "lost race" path below).
        """
        table = level.table
        existing = self._existing_entities(conn, level, [key for key in rows if key not in surely_new])
        fresh = sorted(key for key in rows if key not in existing)
        ids: dict[tuple[Any, ...], uuid.UUID] = {}
        created: set[uuid.UUID] = set()
        if fresh:
            new_rows = [
                {**rows[key], "id": new, "source_partner": self.partner, "source_priority": self.priority, "created_at": now, "updated_at": now, "deleted_at": None}
                for key, new in zip(fresh, new_ids(len(fresh)), strict=True)
            ]
            inserted = bulk.insert_ignoring_conflicts(conn, level.table, new_rows, level.key_columns)
            for row in new_rows:
                key = level.key_of(row)
                if key in inserted:
                    ids[key] = row["id"]
                    created.add(row["id"])
            lost_race = [key for key in fresh if key not in ids]
            if lost_race:  # another partner's sync inserted it meanwhile, or it moved here: treat as existing
                existing.update(self._existing_entities(conn, level, lost_race))
        changes = []
        revived: set[uuid.UUID] = set()
        for key, current in existing.items():
            ids[key] = current["id"]
            incoming = rows[key]
            takes_over = current["deleted_at"] is not None or self.outranks(current["source_partner"], current["source_priority"])
            if not takes_over:
                continue
            if current["source_partner"] == self.partner and current["deleted_at"] is None and all(current[c] == incoming[c] for c in level.value_columns):
                continue
            changes.append({"_id": current["id"], **{c: incoming[c] for c in level.value_columns}})
            if level.parent_column and current[level.parent_column] != incoming[level.parent_column]:
                moved_from[level.name].add(current[level.parent_column])
            if current["deleted_at"] is not None:
                revived.add(current["id"])
        if changes:
            changes.sort(key=lambda r: r["_id"])  # one lock order for concurrent partners
            stmt = (
                update(table)
                .where(table.c.id == bindparam("_id"))
                .values({c: bindparam(c) for c in level.value_columns})
                .values(source_partner=self.partner, source_priority=self.priority, updated_at=now, deleted_at=None)
            )
            conn.execute(stmt, changes)
        return ids, created, revived

    def _existing_entities(self, conn: Connection, level: Level, keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        table = level.table
        columns = [table.c.id, *(table.c[c] for c in level.key_columns), *(table.c[c] for c in level.value_columns), table.c.source_partner, table.c.source_priority, table.c.deleted_at]
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        for chunk in bulk.chunks(keys, bulk.chunk_size(conn)):
            if len(level.key_columns) == 1:
                condition = bulk.key_in(conn, table.c[level.key_columns[0]], [k[0] for k in chunk])
            else:
                condition = tuple_(*(table.c[c] for c in level.key_columns)).in_(chunk)
            for row in conn.execute(select(*columns).where(condition)).mappings():
                found[level.key_of(row)] = dict(row)
        return found

    def outranks(self, other: str, stored_priority: int) -> bool:
        """This partner's values win over ``other``'s (higher priority; ties: name order)."""
        if other == self.partner:
            return True
        theirs = self.priorities.get(other, stored_priority)
        return self.priority > theirs or (self.priority == theirs and self.partner < other)

    # -- links and locations --------------------------------------------------

    def _study_link_hashes(self, conn: Connection, partner_ids: list[str]) -> dict[str, str]:
        hashes: dict[str, str] = {}
        for chunk in bulk.chunks(partner_ids, bulk.chunk_size(conn)):
            # A study link's partner_entity_id is its own partner study id: this
            # matches the (partner, entity_type, partner_entity_id) index exactly.
            stmt = select(_links.c.partner_entity_id, _links.c.content_hash).where(
                _links.c.partner == self.partner, _links.c.entity_type == "study", bulk.key_in(conn, _links.c.partner_entity_id, chunk)
            )
            hashes.update((study_id, content_hash) for study_id, content_hash in conn.execute(stmt))
        return hashes

    def _restamp_study_links(self, conn: Connection, fingerprints: Mapping[str, str]) -> None:
        """Store the new fingerprint of studies whose raw item changed and mapped content did not.

        Only the link's ``content_hash``: its values, its ``updated_at`` and
        every entity row stay as they are. The next run then takes the fast
        path for these items again instead of validating them once more.
        """
        if not fingerprints:
            return
        stmt = (
            update(_links)
            .where(_links.c.partner == self.partner, _links.c.entity_type == "study", _links.c.partner_entity_id == bindparam("_study_id"))
            .values(content_hash=bindparam("content_hash"))
        )
        conn.execute(stmt, [{"_study_id": sid, "content_hash": fingerprint} for sid, fingerprint in sorted(fingerprints.items())])

    def _write_links(self, conn: Connection, wanted: _Wanted, ids: Mapping[str, Mapping[tuple[Any, ...], uuid.UUID]], snapshot_ids: list[str], now: dt.datetime) -> list[tuple[str, uuid.UUID]]:
        """Make this partner's links under the page's studies exactly what the page says.

        Returns the (level, entity id) pairs whose link went away.
        """
        existing: dict[tuple[str, uuid.UUID, str], tuple[uuid.UUID, str]] = {}
        for chunk in bulk.chunks(snapshot_ids, bulk.chunk_size(conn)):
            stmt = select(_links.c.id, _links.c.entity_type, _links.c.entity_id, _links.c.partner_study_id, _links.c.content_hash).where(
                _links.c.partner == self.partner, bulk.key_in(conn, _links.c.partner_study_id, chunk)
            )
            for link_id, level, entity_id, study_id, content_hash in conn.execute(stmt):
                existing[(level, entity_id, study_id)] = (link_id, content_hash)
        inserts, updates, seen = [], [], set()
        for level_name, key, partner_entity_id, partner_study_id, item_hash in wanted.links:
            entity_id = ids[level_name][key]
            ident = (level_name, entity_id, partner_study_id)
            if ident in seen:
                continue
            seen.add(ident)
            attrs = _attrs(LEVELS[level_name], wanted.rows[level_name][key])
            content_hash = item_hash or hashlib.sha256(_encode([partner_entity_id, attrs])).hexdigest()
            current = existing.get(ident)
            if current is None:
                inserts.append(
                    {"partner": self.partner, "entity_type": level_name, "entity_id": entity_id, "partner_entity_id": partner_entity_id,
                     "partner_study_id": partner_study_id, "content_hash": content_hash, "attrs": attrs, "created_at": now, "updated_at": now}
                )
            elif current[1] != content_hash:
                updates.append({"_id": current[0], "partner_entity_id": partner_entity_id, "content_hash": content_hash, "attrs": attrs, "updated_at": now})
        gone = [(ident, link_id) for ident, (link_id, _) in existing.items() if ident not in seen]
        _assign_ids(inserts)
        bulk.insert_rows(conn, _links, inserts)
        if updates:
            change = update(_links).where(_links.c.id == bindparam("_id")).values(
                partner_entity_id=bindparam("partner_entity_id"), content_hash=bindparam("content_hash"), attrs=bindparam("attrs"), updated_at=bindparam("updated_at")
            )
            conn.execute(change, updates)
        for chunk in bulk.chunks([link_id for _, link_id in gone]):
            conn.execute(delete(_links).where(_links.c.id.in_(chunk)))
        return [(level, entity_id) for (level, entity_id, _), _ in gone]

    def _write_locations(self, conn: Connection, wanted: _Wanted, instance_ids: Mapping[tuple[Any, ...], uuid.UUID], new_instances: set[uuid.UUID], now: dt.datetime) -> None:
        by_instance = {instance_ids[(uid,)]: values for uid, values in wanted.locations.items()}
        existing: dict[uuid.UUID, dict[str, Any]] = {}
        # An instance created in this page has no location yet: nothing to look up.
        for chunk in bulk.chunks([i for i in by_instance if i not in new_instances], bulk.chunk_size(conn)):
            # By instance id alone (the unique index's leading column); the partner is
            # filtered here, so the planner cannot pick the (partner, bucket) index and scan.
            stmt = select(_locations.c.id, _locations.c.instance_id, _locations.c.partner, _locations.c.bucket, _locations.c.key, _locations.c.size_bytes, _locations.c.sha256).where(
                bulk.key_in(conn, _locations.c.instance_id, chunk)
            )
            existing.update((row["instance_id"], dict(row)) for row in conn.execute(stmt).mappings() if row["partner"] == self.partner)
        inserts, updates, changed = [], [], []
        for instance_id, values in by_instance.items():
            current = existing.get(instance_id)
            if current is None:
                inserts.append({"instance_id": instance_id, "partner": self.partner, **values, "created_at": now, "updated_at": now})
            elif any(current[c] != v for c, v in values.items()):  # values: bucket, key, size, sha256
                updates.append({"_id": current["id"], **values, "updated_at": now})
                changed.append(instance_id)
        _assign_ids(inserts)
        bulk.insert_rows(conn, _locations, inserts)
        if updates:
            change = update(_locations).where(_locations.c.id == bindparam("_id")).values(
                bucket=bindparam("bucket"), key=bindparam("key"), size_bytes=bindparam("size_bytes"), sha256=bindparam("sha256"), updated_at=bindparam("updated_at")
            )
            conn.execute(change, updates)
            headers.forget_copies(conn, self.partner, changed)  # DICOMweb's header read from the old file is stale

    # -- what went away ---------------------------------------------------------

    def _drop_removed(
        self, conn: Connection, removed: list[tuple[str, uuid.UUID]], now: dt.datetime, moved_from: dict[str, set[uuid.UUID]]
    ) -> set[uuid.UUID]:
        """After links went away: drop this partner's files, retire orphans, hand rows over.

        Returns the ids of the entities retired (soft-deleted) here.
        """
        retired: set[uuid.UUID] = set()
        if not removed:
            return retired
        entity_ids = list({entity_id for _, entity_id in removed})
        remaining: dict[uuid.UUID, list[tuple[str, dict[str, Any]]]] = {}
        for chunk in bulk.chunks(entity_ids):
            stmt = select(_links.c.entity_id, _links.c.partner, _links.c.attrs).where(_links.c.entity_id.in_(chunk))
            for entity_id, partner, attrs in conn.execute(stmt):
                remaining.setdefault(entity_id, []).append((partner, attrs))
        gone_instances = [eid for level, eid in removed if level == "instance" and not any(p == self.partner for p, _ in remaining.get(eid, ()))]
        for chunk in bulk.chunks(gone_instances):
            conn.execute(delete(_locations).where(_locations.c.partner == self.partner, _locations.c.instance_id.in_(chunk)))
        headers.forget_copies(conn, self.partner, gone_instances)  # read from a copy that is no longer listed
        for level_name in LEVELS:
            level = LEVELS[level_name]
            ids = {eid for name, eid in removed if name == level_name}
            orphans = sorted(eid for eid in ids if eid not in remaining)
            for chunk in bulk.chunks(orphans):
                retire = update(level.table).where(level.table.c.id.in_(chunk), level.table.c.deleted_at.is_(None)).values(deleted_at=now, updated_at=now)
                retired.update(conn.execute(retire.returning(level.table.c.id)).scalars())
            self._hand_over(conn, level, {eid: remaining[eid] for eid in ids if eid in remaining}, now, moved_from)
        return retired

    def _hand_over(
        self,
        conn: Connection,
        level: Level,
        candidates: Mapping[uuid.UUID, list[tuple[str, dict[str, Any]]]],
        now: dt.datetime,
        moved_from: dict[str, set[uuid.UUID]],
    ) -> None:
        """Rows whose values came from this partner, which no longer has them, take the next partner's values."""
        if not candidates:
            return
        table = level.table
        parent = table.c[level.parent_column] if level.parent_column else None
        owned: dict[uuid.UUID, Any] = {}
        for chunk in bulk.chunks(list(candidates)):
            stmt = select(table.c.id, parent if parent is not None else table.c.id).where(table.c.id.in_(chunk), table.c.source_partner == self.partner)
            owned.update(conn.execute(stmt).all())
        for entity_id, parent_id in owned.items():
            links = candidates[entity_id]
            if any(partner == self.partner for partner, _ in links):
                continue  # still ours, listed under another of our studies
            best_partner, best_attrs = min(links, key=lambda pa: (-self.priorities.get(pa[0], 0), pa[0]))
            values = _from_attrs(level, best_attrs)
            if level.parent_column and values[level.parent_column] != parent_id:
                moved_from[level.name].add(parent_id)
            take_over = update(table).where(table.c.id == entity_id).values(**values, source_partner=best_partner, source_priority=self.priorities.get(best_partner, 0), updated_at=now)
            conn.execute(take_over)

    def _record_rejections(self, conn: Connection, rejections: list[RejectedItemDTO], run_id: uuid.UUID, now: dt.datetime) -> None:
        if not rejections:
            return
        rows = [
            {"run_id": run_id, "partner": self.partner, "partner_item_id": r.partner_id, "kind": r.kind, "reason": r.reason, "payload": r.payload, "created_at": now}
            for r in rejections
        ]
        _assign_ids(rows)
        bulk.insert_rows(conn, table_of(RejectedItem), rows)


# -- what counts as a change ------------------------------------------------------
#
# A study link's content_hash holds two fingerprints in its 64 characters: the
# first half of the raw item's hash (StudyDTO.content_hash: the item as sent,
# plus the partner's mapping) and the first half of its mapped content's hash
# (StudyDTO.mapped_hash). 128 bits each: a changed item passing for unchanged
# is a 2**-128 chance. The raw half lets an unchanged item skip validation; the
# mapped half decides, for an item that was validated, whether anything is
# written: a new raw form of the same content (a vocabulary renamed along with
# its table) is no change. A link written before both halves were kept holds
# the whole raw hash: its first half still serves the fast path, and its second
# half matches no mapped hash, so such an item counts as changed once.

_HALF = 32


def link_fingerprint(study: StudyDTO) -> str:
    """What a study link stores: raw and mapped fingerprints side by side."""
    return study.content_hash[:_HALF] + study.mapped_hash()[:_HALF]


def same_raw(stored: str, content_hash: str) -> bool:
    """The item is the one committed, byte for byte (under the same mapping)."""
    return stored[:_HALF] == content_hash[:_HALF]


def same_mapped(stored: str, fingerprint: str) -> bool:
    """The item, validated and mapped, says what was committed for it."""
    return stored[_HALF:] == fingerprint[_HALF:]


def _assign_ids(rows: list[dict[str, Any]]) -> None:
    for row, new in zip(rows, new_ids(len(rows)), strict=True):
        row["id"] = new


def _attrs(level: Level, row: Mapping[str, Any]) -> dict[str, Any]:
    """This partner's values for the row (kept in its link; JSON-encoded by msgspec, dates and UUIDs included)."""
    return {column: row[column] for column in level.value_columns}


def _from_attrs(level: Level, attrs: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in level.value_columns:
        value = attrs.get(column)
        column_type = level.table.c[column].type
        if value is not None and isinstance(column_type, Date):
            value = dt.date.fromisoformat(value)
        elif value is not None and isinstance(column_type, Uuid):
            value = uuid.UUID(value)
        values[column] = value
    # Folded from the name now: a link's attrs keep the forms of the day it was written (before 0008 and 0010, none).
    if level is SUBJECT:
        values.update(_name_forms(values["patient_name"]))
    elif level is STUDY:
        values["referring_physician_name_search"] = search_form(values["referring_physician_name"])
    return values


def _name_forms(name: str | None) -> dict[str, str | None]:
    """What name searches read for a patient name: its search form (wildcards) and its words (word prefixes)."""
    return {"patient_name_search": search_form(name), "patient_name_words": stored_words(name)}
