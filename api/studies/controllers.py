"""Subjects, studies, series and instances: read-only, for the ``viewer`` role.

Ids in paths are the service's UUIDs; DICOM UIDs and patient ids are query
filters. Every request here is an audited access to patient data, and each
answer names in its entry the subjects and studies it showed
(:func:`api.auditing.disclosed`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy import Connection

from api.auditing import audited, disclosed, note, recorded_in_thread
from api.db import RequestConnection
from api.errors import PROTECTED, documented_errors
from api.pagination import decode_cursor, encode_cursor, page_size
from api.params import Cursor, EntityId, Limit, date_range, modality, partner, text, uid
from api.schemas import to_schema, to_schemas
from api.security import require
from api.services import Services
from api.studies.schemas import Instance, InstancePage, StudyDetail, StudyPage, StudySummary, Subject, SubjectPage
from imaging_sync.catalog import instances as catalog_instances
from imaging_sync.catalog import studies as catalog_studies
from imaging_sync.catalog import subjects as catalog_subjects
from imaging_sync.catalog.studies import StudyQuery

PatientId = Annotated[str | None, QueryParameter(description="Patient ID, exact.", max_length=64)]
Name = Annotated[
    str | None,
    QueryParameter(
        description=(
            "Words of the patient's name, for a search box: each word must begin a word of the name, in any order and any component "
            "group, case- and accent-insensitive. `hong`, `gil hong` and `홍` find `HONG^GILDONG=洪^吉洞=홍^길동`; `김` finds `김^민준`; "
            "`emile` finds `ÉMILE^ZOLA`. A `*` may end a word (`kim*` is `kim`); any other `*` or a `?` is refused (400): "
            "DICOM wildcards go in `patient_name`. At most 8 words."
        ),
        max_length=200,
    ),
]
PatientName = Annotated[
    str | None,
    QueryParameter(
        description=(
            "Patient name with DICOM wildcards (PS3.4 C.2.2.2.4: `*` any run, `?` one character), matched against the whole name "
            "or one component group, case- and accent-insensitive: `hong*` finds `HONG^GILDONG` (`hong` alone does not), "
            "`*길동`, `홍^길동`, `kim^minj?`. With `name`, both must match."
        ),
        max_length=200,
    ),
]
ReferringPhysicianName = Annotated[
    str | None,
    QueryParameter(
        description=(
            "Referring physician's name, matched as `patient_name` is (PS3.4 C.2.2.2: DICOM wildcards, the whole name or one component "
            "group, case- and accent-insensitive): `émile*` finds `ÉMILE^ZOLA`, `*길동` finds `홍^길동`."
        ),
        max_length=200,
    ),
]
_STUDY_KEY = (dt.date | None, uuid.UUID)


def _studies_page(request: Request[Any, Any, Any], services: Services, conn: Connection, query: StudyQuery, limit: int | None, cursor: str | None) -> StudyPage:
    size = page_size(limit, services.settings.api)
    after = decode_cursor(cursor, "studies", _STUDY_KEY)
    if query.subject_id is not None:
        catalog_studies.require_live_subject(conn, query.subject_id)
    page = catalog_studies.search_studies(conn, query, limit=size, after=after)
    disclosed(request, subject_ids=[s.subject.id for s in page.items], study_ids=[s.id for s in page.items])
    note(request, results=len(page.items))
    return StudyPage(items=to_schemas(page.items, StudySummary), next_cursor=encode_cursor("studies", page.next_key))


class SubjectController(Controller):
    path = "/subjects"
    tags = ["patient data"]
    guards = [require("patient_data")]

    @get("/", opt=audited("search", "subject"), responses=documented_errors(*PROTECTED), sync_to_thread=True, summary="Search subjects (patients)")
    @recorded_in_thread
    def search(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        conn: RequestConnection,
        patient_id: PatientId = None,
        issuer: Annotated[str | None, QueryParameter(description="Issuer of Patient ID, exact.", max_length=64)] = None,
        name: Name = None,
        patient_name: PatientName = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> SubjectPage:
        """Live subjects in (patient id, issuer) order, keyset-paginated."""
        size = page_size(limit, services.settings.api)
        after = decode_cursor(cursor, "subjects", (str, str))
        page = catalog_subjects.search_subjects(
            conn,
            patient_id=text(patient_id, "patient_id", 64),
            issuer=text(issuer, "issuer", 64),
            name=text(name, "name", 200),
            patient_name=text(patient_name, "patient_name", 200),
            limit=size,
            after=after,
        )
        disclosed(request, subject_ids=[s.id for s in page.items])
        note(request, results=len(page.items))
        return SubjectPage(items=to_schemas(page.items, Subject), next_cursor=encode_cursor("subjects", page.next_key))

    @get(
        "/{subject_id:str}/studies",
        opt=audited("search", "study", id_param="subject_id"),
        responses=documented_errors(*PROTECTED, 404),
        sync_to_thread=True,
        summary="A subject's studies",
    )
    @recorded_in_thread
    def studies(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        conn: RequestConnection,
        subject_id: EntityId,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> StudyPage:
        """The subject's live studies, newest first (same order and cursor as the study search)."""
        page = _studies_page(request, services, conn, StudyQuery(subject_id=subject_id), limit, cursor)
        note(request, resource_type="subject")
        return page


class StudyController(Controller):
    path = "/studies"
    tags = ["patient data"]
    guards = [require("patient_data")]

    @get("/", opt=audited("search", "study"), responses=documented_errors(*PROTECTED), sync_to_thread=True, summary="Search studies")
    @recorded_in_thread
    def search(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        conn: RequestConnection,
        patient_id: PatientId = None,
        name: Name = None,
        patient_name: PatientName = None,
        accession: Annotated[str | None, QueryParameter(description="Accession number, exact.", max_length=16)] = None,
        modality_: Annotated[str | None, QueryParameter(name="modality", description="The study has a series of this modality (CT, MR, …).", max_length=16)] = None,
        date_from: Annotated[dt.date | None, QueryParameter(description="Study date on or after (YYYY-MM-DD).")] = None,
        date_to: Annotated[dt.date | None, QueryParameter(description="Study date on or before (YYYY-MM-DD).")] = None,
        partner_: Annotated[str | None, QueryParameter(name="partner", description="A partner that has the study.", max_length=63)] = None,
        study_uid: Annotated[str | None, QueryParameter(description="Study Instance UID, exact.", max_length=64)] = None,
        referring_physician_name: ReferringPhysicianName = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> StudyPage:
        """Live studies, newest first (study date descending, undated last), keyset-paginated: follow `next_cursor`."""
        date_range(date_from, date_to)
        query = StudyQuery(
            patient_id=text(patient_id, "patient_id", 64),
            name=text(name, "name", 200),
            patient_name=text(patient_name, "patient_name", 200),
            accession=text(accession, "accession", 16),
            modality=modality(modality_),
            date_from=date_from,
            date_to=date_to,
            partner=partner(partner_),
            study_uid=uid(study_uid, "study_uid"),
            referring_physician_name=text(referring_physician_name, "referring_physician_name", 200),
        )
        return _studies_page(request, services, conn, query, limit, cursor)

    @get(
        "/{study_id:str}",
        opt=audited("read", "study", id_param="study_id"),
        responses=documented_errors(*PROTECTED, 404),
        sync_to_thread=True,
        summary="One study with its series",
    )
    @recorded_in_thread
    def detail(self, request: Request[Any, Any, Any], conn: RequestConnection, study_id: EntityId) -> StudyDetail:
        """The study's summary and its live series in series-number order, each with instance count and partners."""
        found = catalog_studies.get_study(conn, study_id)
        disclosed(request, subject_ids=[found.study.subject.id], study_ids=[found.study.id])
        return to_schema(found, StudyDetail)


class SeriesController(Controller):
    path = "/series"
    tags = ["patient data"]
    guards = [require("patient_data")]

    @get(
        "/{series_id:str}/instances",
        opt=audited("read", "series", id_param="series_id"),
        responses=documented_errors(*PROTECTED, 404),
        sync_to_thread=True,
        summary="A series' instances",
    )
    @recorded_in_thread
    def instances(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        conn: RequestConnection,
        series_id: EntityId,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> InstancePage:
        """Live instances in instance-number order (unnumbered last), keyset-paginated."""
        size = page_size(limit, services.settings.api)
        after = decode_cursor(cursor, "instances", (int | None, uuid.UUID))
        page = catalog_instances.list_instances(conn, series_id, limit=size, after=after)
        if page.items:
            disclosed(request, series_ids=[series_id])  # its study and subject, found by the entry's INSERT
        note(request, results=len(page.items))
        return InstancePage(items=to_schemas(page.items, Instance), next_cursor=encode_cursor("instances", page.next_key))
