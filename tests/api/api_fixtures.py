"""Helpers of the API tests: settings, a stand-in launcher, API keys, and an index builder.

A module of its own (not ``conftest``) so that test modules import it by a
name no other test directory uses; the fixtures themselves are in ``conftest.py``.
Index rows are written straight into the tables by :class:`IndexBuilder`
(small, explicit factories) rather than by a sync: the tests choose exactly
which partner keeps which file where.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert, select, update

from devtools.factories import TEST_API_KEY_ENV
from imaging_sync.catalog import facts
from imaging_sync.config import ApiConfig, DatabaseConfig, PartnerConfig, Settings, StorageConfig
from imaging_sync.db.models import EntityLink, Instance, InstanceLocation, Series, Study, Subject, utcnow
from imaging_sync.ids import new_id
from imaging_sync.person_names import search_form
from imaging_sync.query.names import stored_words

UID_ROOT = "1.2.826.0.1.3680043.10.777"
PRIORITY = {"b": 10, "c": 5}
_counter = itertools.count(1)


def next_uid() -> str:
    return f"{UID_ROOT}.{next(_counter)}"


def partner_config(name: str, bucket: str, priority: int) -> PartnerConfig:
    return PartnerConfig(name=name, base_url="http://127.0.0.1:9", api_key_env=TEST_API_KEY_ENV, default_bucket=bucket, priority=priority)


def make_settings(db_url: str, storage: StorageConfig, buckets: Sequence[str], **api: Any) -> Settings:
    """Partner b (priority 10) in the first bucket, c (priority 5) in the second."""
    partners = {name: partner_config(name, bucket, PRIORITY[name]) for name, bucket in zip(("b", "c"), buckets, strict=False)}  # one bucket: partner b only
    return Settings(database=DatabaseConfig(url=db_url), storage=storage, partners=partners, api=ApiConfig(**{"default_page_size": 50, "max_page_size": 200, **api}))


@dataclass
class RecordingLauncher:
    """Stands in for the background sync where a test only needs the HTTP side (the real one has its own test)."""

    calls: list[tuple[str, bool, str | None]] = field(default_factory=list)

    def launch(self, partner: str, *, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        self.calls.append((partner, full, study_id))
        return new_id()

    def close(self, timeout: float = 10.0) -> None:
        pass


@dataclass(frozen=True)
class Keys:
    viewer: str
    operator: str
    auditor: str
    ids: dict[str, uuid.UUID]

    def headers(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {getattr(self, role)}"}


@dataclass
class Located:
    partner: str
    bucket: str
    key: str


class IndexBuilder:
    """Writes index rows directly: subject → study → series → instance, links and locations.

    Like a sync page, every write ends with the study's facts (and a subject's name tokens) refreshed (catalog.facts).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def subject(self, patient_id: str, name: str | None = None, *, issuer: str = "", birth_date: dt.date | None = None, sex: str | None = None) -> uuid.UUID:
        sid = new_id()
        self._insert(
            Subject, id=sid, issuer=issuer, patient_id=patient_id, patient_name=name, patient_name_search=search_form(name),
            patient_name_words=stored_words(name), birth_date=birth_date, sex=sex,
        )
        with self.engine.begin() as conn:
            facts.refresh_name_tokens(conn, [sid])
        return sid

    def study(
        self, subject_id: uuid.UUID, *, date: dt.date | None = None, accession: str | None = None, description: str | None = None,
        partners: Sequence[str] = ("b",), uid: str | None = None, referring: str | None = None,
    ) -> uuid.UUID:
        sid = new_id()
        self._insert(
            Study, id=sid, study_instance_uid=uid or next_uid(), subject_id=subject_id, accession_number=accession, study_date=date, study_time="101500",
            description=description, referring_physician_name=referring, referring_physician_name_search=search_form(referring),
        )
        self._links("study", sid, partners)
        self._refresh_facts(study=sid)
        with self.engine.begin() as conn:
            facts.copy_patient_names(conn, [subject_id])
        return sid

    def series(self, study_id: uuid.UUID, modality: str = "CT", *, number: int | None = 1, partners: Sequence[str] = ("b",)) -> uuid.UUID:
        sid = new_id()
        self._insert(Series, id=sid, series_instance_uid=next_uid(), study_id=study_id, modality=modality, series_number=number, description=f"{modality} series", body_part_examined="HEAD")
        self._links("series", sid, partners)
        self._refresh_facts(study=study_id)
        return sid

    def instance(self, series_id: uuid.UUID, *, number: int | None = 1, locations: Sequence[Located] = ()) -> uuid.UUID:
        iid = new_id()
        self._insert(Instance, id=iid, sop_instance_uid=next_uid(), series_id=series_id, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=number)
        self._links("instance", iid, [loc.partner for loc in locations])
        now = utcnow()
        with self.engine.begin() as conn:
            for loc in locations:
                conn.execute(insert(InstanceLocation).values(id=new_id(), instance_id=iid, partner=loc.partner, bucket=loc.bucket, key=loc.key, size_bytes=None, created_at=now, updated_at=now))
        self._refresh_facts(series=series_id)
        return iid

    def delete(self, model: type[Any], entity_id: uuid.UUID) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(model).where(model.id == entity_id).values(deleted_at=utcnow()))
        if model is Study:
            self._refresh_facts(study=entity_id)
        elif model is Series:
            self._refresh_facts(series=entity_id)
        elif model is Instance:
            with self.engine.connect() as conn:
                self._refresh_facts(series=conn.execute(select(Instance.series_id).where(Instance.id == entity_id)).scalar_one())

    def _refresh_facts(self, *, study: uuid.UUID | None = None, series: uuid.UUID | None = None) -> None:
        with self.engine.begin() as conn:
            facts.refresh(conn, [study] if study is not None else facts.studies_of_series(conn, [series] if series is not None else []))

    def _insert(self, model: type[Any], **values: Any) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(insert(model).values(source_partner="b", source_priority=10, created_at=now, updated_at=now, **values))

    def _links(self, entity_type: str, entity_id: uuid.UUID, partners: Sequence[str]) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            for partner in partners:
                conn.execute(
                    insert(EntityLink).values(
                        id=new_id(), partner=partner, entity_type=entity_type, entity_id=entity_id, partner_entity_id=f"{partner}-{entity_id}",
                        partner_study_id=f"{partner}-study", content_hash="x", attrs={}, created_at=now, updated_at=now,
                    )
                )
