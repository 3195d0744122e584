"""Running a QIDO-RS search: the core's statement for the level (its counts are facts columns), one page of it, as DICOM JSON.

Paging (``offset``, ``limit``) is by the match's own id, a UUIDv7 that
never changes, so pages neither repeat nor skip a match while the index
stays as it was. One more row than the page is read: when it exists the
answer says that there is more (the ``Warning`` the caller adds). At most
``max_results`` matches per answer, whatever ``limit`` asks: a client that
wants more pages on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from api.dicomweb.dicom_json import attribute, tag_key
from api.dicomweb.qido import QidoQuery
from imaging_sync.query import search
from imaging_sync.query.names import patient_name_fuzzy

RETRIEVE_URL, INSTANCE_AVAILABILITY = 0x00081190, 0x00080056
_RETRIEVE_URL, _AVAILABILITY = "(RetrieveURL)", "(InstanceAvailability)"  # computed values; no keyword has parentheses
_PATHS: dict[str, Callable[[dict[str, Any]], str]] = {
    "STUDY": lambda v: f"/studies/{v['StudyInstanceUID']}",
    "SERIES": lambda v: f"/studies/{v['StudyInstanceUID']}/series/{v['SeriesInstanceUID']}",
    "IMAGE": lambda v: f"/studies/{v['StudyInstanceUID']}/series/{v['SeriesInstanceUID']}/instances/{v['SOPInstanceUID']}",
}


@dataclass
class Page:
    """One answer: its matches as DICOM JSON, whose data they show, and whether more matches follow."""

    matches: list[dict[str, Any]] = field(default_factory=list)
    subject_ids: list[uuid.UUID] = field(default_factory=list)
    study_ids: list[uuid.UUID] = field(default_factory=list)
    more: bool = False


def run(conn: Connection, query: QidoQuery, *, base_url: str, max_results: int) -> Page:
    """The page of matches ``query`` asks for, each with its RetrieveURL under ``base_url``."""
    matches = dict(query.matches)
    extra = []
    if query.fuzzy and "PatientName" in matches:
        condition = patient_name_fuzzy(matches.pop("PatientName")[0], "PatientName")
        if condition is not None:
            extra.append(condition)
    keys = [f.key for f in query.fields if f.key is not None]
    limit = min(query.limit or max_results, max_results)
    stmt = search.statement(query.level, matches, keys, conn.dialect.name, extra=extra)
    stmt = stmt.order_by(search.LEVEL_ID[query.level]).limit(limit + 1).offset(query.offset)
    rows = conn.execute(stmt).all()
    page = Page(more=len(rows) > limit)
    rows = rows[:limit]
    first = search.FIRST_KEY_COLUMN[query.level]
    column_of = {key.keyword: first + i for i, key in enumerate(k for k in keys if search.is_stored(k))}
    # counts and ModalitiesInStudy too: facts columns (no computed key at these levels)
    columns = [(f.keyword, column_of[f.keyword]) for f in query.fields if f.keyword in column_of]
    layout = _layout(query)
    path = _PATHS[query.level]
    for row in rows:
        values = {keyword: row[column] for keyword, column in columns}
        computed = {_RETRIEVE_URL: base_url + path(values), _AVAILABILITY: "ONLINE"}  # every file is read from its partner's bucket on request
        page.matches.append({key: attribute(vr, computed[keyword] if keyword in computed else values.get(keyword)) for key, vr, keyword in layout})
        page.subject_ids.append(row[1])
        page.study_ids.append(row[2])
    return page


def _layout(query: QidoQuery) -> list[tuple[str, str, str]]:
    """The attributes of each match in tag order (F.2: the keys sorted), each ``(JSON key, VR, keyword)``: worked out
    once per answer, not per match."""
    slots = {tag_key(f.tag): (f.vr, f.keyword) for f in query.fields}
    slots[tag_key(RETRIEVE_URL)] = ("UR", _RETRIEVE_URL)
    if query.level in ("STUDY", "IMAGE"):
        slots[tag_key(INSTANCE_AVAILABILITY)] = ("CS", _AVAILABILITY)
    return [(key, vr, keyword) for key, (vr, keyword) in sorted(slots.items())]


__all__ = ["Page", "run"]
