"""Which DICOM audit event an audit entry is, and the PS3.15 A.5.1 XML that reports it.

One entry of our audit log becomes one audit message (or a few, see
:func:`build_messages`), chosen by :func:`classify` from the entry's channel,
action and outcome:

==============================================  ==========================================================
entry                                           DICOM audit message (PS3.15 A.5.3, PS3.16 CID 400)
==============================================  ==========================================================
refused for want of credentials (HTTP 401)      User Authentication (110114), Login (110122), outcome 4
refused otherwise (HTTP 403, a DICOM refusal)   Security Alert (110113), Use of Restricted Function
                                                (110132); a DICOM node refused: Node Authentication (110126)
C-FIND, a REST search or list                   Query (110112), the query as ParticipantObjectQuery
C-MOVE, C-GET: the entry commits (``started``)  Begin Transferring DICOM Instances (110102)
C-MOVE, C-GET: its end                          DICOM Instances Transferred (110104), outcome from the end
a REST read of a study or series, a file URL    DICOM Instances Accessed (110103)
reading the audit log                           Audit Log Used (110101)
API keys created, listed, revoked               Security Alert, Security Configuration (110129)
other privileged actions (a sync, the outbox)   Security Alert, Use of Restricted Function (110132)
==============================================  ==========================================================

Outcomes (EventOutcomeIndicator): ``success`` 0; ``denied`` and
``not_found`` 4 (minor failure); ``error`` 8 (serious failure); a streaming
operation whose end was never recorded (its process died) 8.

Each patient the entry disclosed is a ParticipantObject of type Person, role
Patient, ID type "Patient Number" (RFC 3881 code 2), its ID in HL7 CX form
(``ID^^^issuer``, PS3.15 A.5.2.5); each study one of ID type Study Instance
UID (110180). Patient names are not sent: the ID is what identifies the
patient to the repository, and a name adds disclosure without adding proof.

The message is a pure function of the entry, its end and what it disclosed:
sent again (delivery is at least once), it is the same message, and its
EventOutcomeDescription names our entry's id for receivers that de-duplicate.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.etree import ElementTree as ET

from imaging_sync.atna import codes
from imaging_sync.atna.codes import Code

Phase = Literal["entry", "start", "completion", "abandoned"]
TRANSFERS = ("c-move", "c-get")
STREAMING = ("c-find", *TRANSFERS)


@dataclass(frozen=True)
class Entry:
    """An ``audit_log`` row, as the relay read it."""

    id: uuid.UUID
    at: dt.datetime
    channel: str
    actor: str
    action: str
    outcome: str
    actor_key_id: uuid.UUID | None = None
    actor_role: str | None = None
    client_addr: str | None = None
    method: str | None = None
    path: str | None = None
    query: dict[str, Any] | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    status: int | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class Patient:
    """A disclosed subject's identifiers (never its name)."""

    patient_id: str
    issuer: str = ""

    @property
    def cx(self) -> str:
        """The ID in HL7 v2 CX form, as PS3.15 A.5.2.5 asks: ``ID^^^issuer`` (the ID alone without an issuer)."""
        return f"{self.patient_id}^^^{self.issuer}" if self.issuer else self.patient_id


@dataclass(frozen=True)
class Report:
    """What one message (or one message per part) reports: an entry at one of its phases.

    ``entry``: a complete entry (:func:`imaging_sync.audit.record`), ``start``:
    a C-MOVE or C-GET that began (``started``), ``completion``: how a started
    entry ended (``outcome``, ``status``, ``detail`` are the completion's),
    ``abandoned``: a started entry whose end was never recorded.
    """

    entry: Entry
    phase: Phase
    outcome: str
    at: dt.datetime
    status: int | None = None
    detail: dict[str, Any] | None = None
    patients: tuple[Patient, ...] = ()
    study_uids: tuple[str, ...] = ()
    unresolved: int = 0  # disclosed ids whose subject or study is no longer in the index
    abandoned_after: float | None = None  # seconds, for ``abandoned``


@dataclass(frozen=True)
class EventKind:
    """The event a report is: EventID, EventTypeCodes, EventActionCode, EventOutcomeIndicator."""

    event_id: Code
    type_codes: tuple[Code, ...] = ()
    action_code: str = "E"
    outcome: str = codes.SUCCESS


@dataclass(frozen=True)
class Source:
    """Who reports: our application as an active participant and as the audit source."""

    app_name: str
    hostname: str
    enterprise_site_id: str | None = None
    max_objects: int = 20


_OUTCOMES = {"success": codes.SUCCESS, "denied": codes.MINOR_FAILURE, "not_found": codes.MINOR_FAILURE, "error": codes.SERIOUS_FAILURE}
_API_KEY_ACTIONS = frozenset({"create_api_key", "revoke_api_key", "list_api_keys"})
_ACCESS_ACTIONS = frozenset({"read", "issue_url", "issue_urls"})
_QUERY_ACTIONS = frozenset({"search", "list", "c-find"})


def outcome_indicator(report: Report) -> str:
    """EventOutcomeIndicator: success 0, refused or not found 4, error or never ended 8 (PS3.15 A.5.1.1)."""
    if report.phase == "abandoned":
        return codes.SERIOUS_FAILURE
    if report.phase == "start":
        return codes.SUCCESS
    return _OUTCOMES.get(report.outcome, codes.SERIOUS_FAILURE)


def classify(report: Report) -> EventKind:
    """The DICOM audit event that reports ``report`` (the table in this module's docstring)."""
    entry, outcome = report.entry, outcome_indicator(report)
    action = entry.action
    if report.phase == "start":
        return EventKind(codes.BEGIN_TRANSFERRING, action_code="E", outcome=outcome)
    if report.outcome == "denied" and action not in STREAMING:
        error = (entry.detail or {}).get("error") if isinstance(entry.detail, dict) else None
        if entry.channel == "http" and (entry.status == 401 or error == "unauthenticated"):
            return EventKind(codes.USER_AUTHENTICATION, (codes.LOGIN,), "E", outcome)
        if entry.channel == "dicom":
            return EventKind(codes.SECURITY_ALERT, (codes.NODE_AUTHENTICATION,), "E", outcome)
        return EventKind(codes.SECURITY_ALERT, (codes.USE_OF_RESTRICTED_FUNCTION,), "E", outcome)
    if action in TRANSFERS:
        return EventKind(codes.INSTANCES_TRANSFERRED, action_code="R", outcome=outcome)
    if action in _QUERY_ACTIONS:
        return EventKind(codes.QUERY, action_code="E", outcome=outcome)
    if action == "read_audit":
        return EventKind(codes.AUDIT_LOG_USED, action_code="R", outcome=outcome)
    if action in _ACCESS_ACTIONS or report.patients or report.study_uids:
        return EventKind(codes.INSTANCES_ACCESSED, action_code="R", outcome=outcome)
    if action in _API_KEY_ACTIONS:
        return EventKind(codes.SECURITY_ALERT, (codes.SECURITY_CONFIGURATION,), "E", outcome)
    return EventKind(codes.SECURITY_ALERT, (codes.USE_OF_RESTRICTED_FUNCTION,), "E", outcome)


# -- XML -------------------------------------------------------------------------------------------------

# Characters XML 1.0 cannot carry (the audit log escapes control characters, but index values come from partners).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: object) -> str:
    return _NOT_XML.sub("?", str(value))


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning})


def _timestamp(moment: dt.datetime) -> str:
    """xsd:dateTime in UTC with milliseconds (also RFC 5424's TIMESTAMP form)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _access_point(address: str) -> tuple[str, str]:
    """NetworkAccessPointID and its type code: an IP address (2) or a machine name (1)."""
    try:
        ipaddress.ip_address(address)
        return address, codes.IP_ADDRESS
    except ValueError:
        return address, codes.MACHINE_NAME


def _participant(parent: ET.Element, user_id: str, *, requestor: bool, role: Code | None = None, alternative: str | None = None,
                 access_point: str | None = None) -> None:
    attrs = {"UserID": _text(user_id or "-")}
    if alternative:
        attrs["AlternativeUserID"] = _text(alternative)
    attrs["UserIsRequestor"] = "true" if requestor else "false"
    if access_point:
        point, kind = _access_point(access_point)
        attrs["NetworkAccessPointID"] = _text(point)
        attrs["NetworkAccessPointTypeCode"] = kind
    element = ET.SubElement(parent, "ActiveParticipant", attrs)
    if role is not None:
        _coded(element, "RoleIDCode", role)


@dataclass
class _Object:
    id: str
    id_type: Code
    type_code: str
    role: str
    query: bytes | None = None
    details: list[tuple[str, bytes]] = field(default_factory=list)

    def write(self, parent: ET.Element) -> None:
        element = ET.SubElement(parent, "ParticipantObjectIdentification", {
            "ParticipantObjectID": _text(self.id), "ParticipantObjectTypeCode": self.type_code, "ParticipantObjectTypeCodeRole": self.role})
        _coded(element, "ParticipantObjectIDTypeCode", self.id_type)
        if self.query is not None:
            ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(self.query).decode("ascii")
        for kind, value in self.details:
            ET.SubElement(element, "ParticipantObjectDetail", {"type": kind, "value": base64.b64encode(value).decode("ascii")})


def _query_object(entry: Entry) -> _Object | None:
    """The query of a Query event (PS3.15 A.5.3.12): C-FIND's information model and keys, or a REST search's path and filters.

    ParticipantObjectQuery holds the query as the audit log recorded it
    (JSON; the DICOM identifier itself is not kept), base64 as the schema asks.
    """
    query = dict(entry.query or {})
    if entry.channel == "dicom":
        model = str(query.pop("model", "") or "")
        sop_class = codes.FIND_SOP_CLASSES.get(model.upper())
        if sop_class is None:
            return None
        return _Object(sop_class, codes.SOP_CLASS_UID, codes.SYSTEM_OBJECT, codes.ROLE_QUERY, query=_json(query))
    if not entry.path:
        return None
    return _Object(entry.path, codes.URI, codes.SYSTEM_OBJECT, codes.ROLE_QUERY, query=_json(query))


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def _description(report: Report, part: int, parts: int) -> str:
    entry = report.entry
    resource = entry.resource_type or ""
    if resource and entry.resource_id:
        resource += f":{entry.resource_id}"
    words = [f"imaging-sync audit entry {entry.id}", f"({report.phase}):", entry.channel, entry.action]
    if resource:
        words.append(resource)
    text = " ".join(words)
    status = report.status if report.phase in ("completion", "abandoned") else entry.status
    if report.phase == "abandoned":
        text += f"; no end recorded within {report.abandoned_after or 0:.0f} s (the operation's process stopped)"
    elif report.phase != "start":
        text += f"; outcome {report.outcome}"
        if status is not None:
            text += f", status {status}" if entry.channel != "dicom" else f", status 0x{status:04X}"
        detail = report.detail if report.phase == "completion" else entry.detail
        error = detail.get("error") if isinstance(detail, dict) else None
        if isinstance(error, str):
            text += f", {error}"
    if report.unresolved:
        text += f"; {report.unresolved} disclosed patients or studies no longer in the index"
    if parts > 1:
        text += f"; part {part} of {parts}"
    return _text(text)


def build_messages(report: Report, source: Source) -> list[bytes]:
    """The audit message(s) of ``report``: PS3.15 A.5.1 XML, UTF-8, one document each.

    An entry that disclosed more than ``source.max_objects`` patients and
    studies (a C-FIND answered with hundreds of studies) is sent as several
    messages, each with the same event, participants and query and its share
    of the patients and studies ("part i of n" in EventOutcomeDescription):
    receivers cap a message's size, and one lost to that cap would hide the rest.
    """
    entry, kind = report.entry, classify(report)
    objects: list[_Object] = [_Object(p.cx, codes.PATIENT_NUMBER, codes.PERSON, codes.ROLE_PATIENT) for p in report.patients]
    objects += [_Object(uid, codes.STUDY_INSTANCE_UID, codes.SYSTEM_OBJECT, codes.ROLE_REPORT) for uid in report.study_uids]
    query = _query_object(entry) if kind.event_id == codes.QUERY else None
    chunks = [objects[i:i + source.max_objects] for i in range(0, len(objects), source.max_objects)] or [[]]
    return [_message(report, kind, source, ([query] if query else []) + chunk, n + 1, len(chunks)) for n, chunk in enumerate(chunks)]


def _message(report: Report, kind: EventKind, source: Source, objects: Sequence[_Object], part: int, parts: int) -> bytes:
    entry = report.entry
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": kind.action_code, "EventDateTime": _timestamp(report.at), "EventOutcomeIndicator": kind.outcome})
    _coded(event, "EventID", kind.event_id)
    for type_code in kind.type_codes:
        _coded(event, "EventTypeCode", type_code)
    ET.SubElement(event, "EventOutcomeDescription").text = _description(report, part, parts)
    transfer = kind.event_id in (codes.BEGIN_TRANSFERRING, codes.INSTANCES_TRANSFERRED)
    destination = (entry.detail or {}).get("destination") if entry.action == "c-move" else None
    # The requestor: an API key (prefix, key id), a calling AE title, or a command-line user; where it came from.
    requestor_role = codes.SOURCE if kind.event_id == codes.QUERY else codes.DESTINATION if transfer and entry.action == "c-get" else None
    _participant(root, entry.actor, requestor=True, role=requestor_role, alternative=str(entry.actor_key_id) if entry.actor_key_id else None,
                 access_point=entry.client_addr)
    ours = codes.DESTINATION if kind.event_id == codes.QUERY else codes.SOURCE if transfer else codes.APPLICATION
    _participant(root, source.app_name, requestor=False, role=ours, access_point=source.hostname)
    if transfer and isinstance(destination, str) and destination:
        _participant(root, destination, requestor=False, role=codes.DESTINATION)  # the C-MOVE destination AE
    audit_source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": _text(source.app_name)})
    if source.enterprise_site_id:
        audit_source.set("AuditEnterpriseSiteID", _text(source.enterprise_site_id))
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": codes.APPLICATION_SERVER})
    for obj in objects:
        obj.write(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body


__all__ = ["Entry", "EventKind", "Patient", "Report", "Source", "build_messages", "classify", "outcome_indicator"]
