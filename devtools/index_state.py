"""Read the live index back in the simulator's ``expected_state()`` shape.

Tests and the benchmark compare the two dicts for equality, so a sync that
drops, doubles or mangles anything shows up as a precise diff.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import Engine, select

from imaging_sync.db.models import EntityLink, Instance, InstanceLocation, Series, Study, Subject, SubjectNameToken
from imaging_sync.person_names import name_words, search_form


def _wire_time(tm: str | None) -> str | None:
    """DICOM TM ``HHMMSS[.ffffff]`` back to the wire's ``HH:MM:SS[.ffffff]``."""
    if tm is None:
        return None
    head, dot, fraction = tm.partition(".")
    return f"{head[0:2]}:{head[2:4]}:{head[4:6]}" + (f".{fraction}" if dot else "")


def live_index(engine: Engine, partner: str) -> dict[str, dict[str, Any]]:
    """Every live study with its subject, series, instances and ``partner``'s file locations."""
    with engine.connect() as conn:
        subjects = {row.id: row for row in conn.execute(select(Subject).where(Subject.deleted_at.is_(None)))}
        studies = {row.id: row for row in conn.execute(select(Study).where(Study.deleted_at.is_(None)))}
        series_rows = list(conn.execute(select(Series).where(Series.deleted_at.is_(None))))
        instance_rows = list(conn.execute(select(Instance).where(Instance.deleted_at.is_(None))))
        locations = {row.instance_id: row for row in conn.execute(select(InstanceLocation).where(InstanceLocation.partner == partner))}
    state: dict[str, dict[str, Any]] = {}
    by_study_id: dict[Any, dict[str, Any]] = {}
    for study in studies.values():
        subject = subjects[study.subject_id]
        entry = {
            "accession_number": study.accession_number,
            "study_date": study.study_date.isoformat() if study.study_date else None,
            "study_time": _wire_time(study.study_time),
            "description": study.description,
            "referring_physician_name": study.referring_physician_name,
            "subject": {
                "patient_id": subject.patient_id,
                "issuer_of_patient_id": subject.issuer or None,
                "name": subject.patient_name,
                "birth_date": subject.birth_date.isoformat() if subject.birth_date else None,
                "sex": subject.sex,
            },
            "series": {},
        }
        state[study.study_instance_uid] = entry
        by_study_id[study.id] = entry
    by_series_id: dict[Any, dict[str, Any]] = {}
    for series in series_rows:
        entry = {
            "modality": series.modality,
            "series_number": series.series_number,
            "description": series.description,
            "body_part_examined": series.body_part_examined,
            "instances": {},
        }
        by_study_id[series.study_id]["series"][series.series_instance_uid] = entry
        by_series_id[series.id] = entry
    for inst in instance_rows:
        location = locations.get(inst.id)
        by_series_id[inst.series_id]["instances"][inst.sop_instance_uid] = {
            "sop_class_uid": inst.sop_class_uid,
            "transfer_syntax_uid": inst.transfer_syntax_uid,
            "instance_number": inst.instance_number,
            "size_bytes": location.size_bytes if location else None,
            "sha256": location.sha256 if location else None,
            "bucket": location.bucket if location else None,
            "key": location.key if location else None,
        }
    return state


def stale_facts(engine: Engine) -> list[str]:
    """Rows whose stored facts (catalog.facts) differ from their rows, recounted here in Python.

    Study and series facts; each subject's search form, name words and
    ``subject_name_token`` rows against its name (``person_names``, the
    definition); each study's copies of its subject's name forms, and its
    referring physician's search form against that name. Counted
    independently of ``catalog.facts`` and the sync (no shared query), so a
    test that ends with ``assert stale_facts(engine) == []`` checks the sync
    kept them, not that the code agrees with itself.
    """
    with engine.connect() as conn:
        studies = list(conn.execute(select(Study.id, Study.modalities, Study.series_count, Study.instance_count, Study.partners).where(Study.deleted_at.is_(None))))
        names = list(
            conn.execute(
                select(Study.id, Study.patient_name_search, Study.patient_name_words, Subject.patient_name_search, Subject.patient_name_words)
                .join(Subject, Subject.id == Study.subject_id)
            )
        )
        subject_names = list(conn.execute(select(Subject.id, Subject.patient_name, Subject.patient_name_search, Subject.patient_name_words)))
        referring = list(conn.execute(select(Study.id, Study.referring_physician_name, Study.referring_physician_name_search)))
        tokens = list(conn.execute(select(SubjectNameToken.subject_id, SubjectNameToken.token)))
        series = list(conn.execute(select(Series.id, Series.study_id, Series.modality, Series.instance_count, Series.partners).where(Series.deleted_at.is_(None))))
        instances = list(conn.execute(select(Instance.series_id).where(Instance.deleted_at.is_(None))).scalars())
        links = list(conn.execute(select(EntityLink.entity_type, EntityLink.entity_id, EntityLink.partner)))
    partners: dict[tuple[str, Any], set[str]] = {}
    for entity_type, entity_id, partner in links:
        partners.setdefault((entity_type, entity_id), set()).add(partner)
    per_series = Counter(instances)
    expected_study: dict[Any, tuple[set[str], int, int]] = {}
    stale = []
    for row in series:
        modalities, series_count, instance_count = expected_study.get(row.study_id, (set(), 0, 0))
        expected_study[row.study_id] = (modalities | {row.modality}, series_count + 1, instance_count + per_series[row.id])
        want = (per_series[row.id], ",".join(sorted(partners.get(("series", row.id), ()))))
        if (row.instance_count, row.partners) != want:
            stale.append(f"series {row.id}: stored {(row.instance_count, row.partners)}, rows say {want}")
    for study in studies:
        modalities, series_count, instance_count = expected_study.get(study.id, (set(), 0, 0))
        study_want = ("\\".join(sorted(modalities)), series_count, instance_count, ",".join(sorted(partners.get(("study", study.id), ()))))
        if (study.modalities, study.series_count, study.instance_count, study.partners) != study_want:
            stale.append(f"study {study.id}: stored {(study.modalities, study.series_count, study.instance_count, study.partners)}, rows say {study_want}")
    stale += [
        f"study {study_id}: name {(search, words)!r}, its subject's {(subject_search, subject_words)!r}"
        for study_id, search, words, subject_search, subject_words in names
        if (search, words) != (subject_search, subject_words)
    ]
    stale += [
        f"study {study_id}: referring physician's search form {stored!r}, its name {name!r} says {search_form(name)!r}"
        for study_id, name, stored in referring
        if stored != search_form(name)
    ]
    stored_tokens: dict[Any, set[str]] = {}
    for subject_id, token in tokens:
        stored_tokens.setdefault(subject_id, set()).add(token)
    for subject_id, name, search, words in subject_names:
        expected_words = name_words(name)
        subject_want = (search_form(name), "".join(" " + w for w in expected_words) or None, set(expected_words))
        stored = (search, words, stored_tokens.pop(subject_id, set()))
        if stored != subject_want:
            stale.append(f"subject {subject_id}: name forms and tokens {stored!r}, its name {name!r} says {subject_want!r}")
    stale += [f"tokens {sorted(rows)!r} of no subject {subject_id}" for subject_id, rows in stored_tokens.items()]
    return stale
