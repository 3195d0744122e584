"""The ``reference-v1`` wire format: decoding and validating one page.

Validation follows ``docs/partner-api.md`` to the letter. Each item is decoded
and validated on its own, so a bad item is rejected alone (with a reason that
points into the item) and the rest of its page lands. Checks that need the
whole page (duplicate ids, the same UID in two items) reject every item
involved: the page does not say which one is right.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import partial

import msgspec

from imaging_sync.dates import iso_time_to_tm, parse_iso_date, parse_rfc3339
from imaging_sync.dto import DeletedStudyDTO, InstanceDTO, PageItem, PendingStudy, RejectedItemDTO, SeriesDTO, StudyDTO, SubjectDTO
from imaging_sync.errors import ValidationError
from imaging_sync.person_names import check_person_name
from imaging_sync.uids import check_uid
from imaging_sync.vocabulary import Vocabulary

ID_MAX_LENGTH = 128
PAYLOAD_MAX_CHARS = 256 * 1024
INT32 = (-(2**31), 2**31 - 1)
INT64_MAX = 2**63 - 1
# Bump when validation or mapping changes what a given item produces: stored
# raw fingerprints then no longer match, every item is validated once more, and
# only those whose mapped content changed are written (sync.apply).
VALIDATION_VERSION = "1"

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TEXT_FORBIDDEN = re.compile(r"[\\\x00-\x1a\x1c-\x1f]")  # LO/SH: no backslash, no control but ESC


class WireInstance(msgspec.Struct):
    id: str
    sop_instance_uid: str
    sop_class_uid: str
    location: str
    instance_number: int | None = None
    transfer_syntax_uid: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None


class WireSeries(msgspec.Struct):
    id: str
    series_instance_uid: str
    modality: str
    instances: list[WireInstance]
    series_number: int | None = None
    description: str | None = None
    body_part_examined: str | None = None


class WireSubject(msgspec.Struct):
    id: str
    patient_id: str
    issuer_of_patient_id: str | None = None
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None


class WireStudy(msgspec.Struct):
    id: str
    updated_at: str
    study_instance_uid: str
    deleted: bool = False
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    description: str | None = None
    referring_physician_name: str | None = None
    subject: WireSubject | None = None
    series: list[WireSeries] | None = None


class WirePage(msgspec.Struct):
    items: list[msgspec.Raw]
    next_page_token: str | None = None


class _TokenOnly(msgspec.Struct):
    next_page_token: str | None = None


_page_decoder = msgspec.json.Decoder(WirePage)
_token_decoder = msgspec.json.Decoder(_TokenOnly)
_study_decoder = msgspec.json.Decoder(WireStudy)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ItemParser:
    """Turns one partner's wire items into DTOs, with that partner's vocabulary and buckets."""

    def __init__(self, partner: str, vocabulary: Vocabulary, default_bucket: str | None, allowed_buckets: Iterable[str]) -> None:
        self.partner = partner
        self.vocabulary = vocabulary
        self.default_bucket = default_bucket
        self.allowed_buckets = frozenset(allowed_buckets)
        fingerprint = f"{VALIDATION_VERSION}|{vocabulary.fingerprint}|{default_bucket}|{sorted(self.allowed_buckets)}"
        self._hash_salt = fingerprint.encode()
        self._checked_uids: set[str] = set()

    def parse_page(self, body: bytes) -> tuple[list[PageItem], str | None]:
        """Decode a listing response; raise ValidationError only if the envelope itself is broken.

        Studies come back as ``PendingStudy``: identified and fingerprinted, not
        yet validated (the engine validates only what changed).
        """
        try:
            page = _page_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise ValidationError("page", f"response is not a listing page: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ValidationError("page", f"response is not JSON: {exc}") from None
        decoded = [self._decode(raw) for raw in page.items]
        items = [self._envelope(raw, wire, error) for raw, wire, error in decoded]
        return _reject_page_duplicates(items, decoded), page.next_page_token

    def parse_item(self, raw: bytes | msgspec.Raw) -> StudyDTO | DeletedStudyDTO | RejectedItemDTO:
        """One item, fully validated."""
        item = self._envelope(*self._decode(raw))
        return item.resolve() if isinstance(item, PendingStudy) else item

    @staticmethod
    def _decode(raw: bytes | msgspec.Raw) -> tuple[bytes | msgspec.Raw, WireStudy | None, str | None]:
        try:
            return raw, _study_decoder.decode(raw), None
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return raw, None, _msgspec_reason(exc)

    def _envelope(self, raw: bytes | msgspec.Raw, wire: WireStudy | None, error: str | None) -> PageItem:
        """What the engine needs before validation: identity, timestamp, fingerprint."""
        if wire is None:
            return self._rejected(raw, error or "not a study item", "validation")
        try:
            partner_id = check_id(wire.id, "id")
            updated_at = parse_rfc3339(wire.updated_at, "updated_at")
            if wire.deleted:
                uid = check_uid(wire.study_instance_uid, "study_instance_uid")
                return DeletedStudyDTO(partner_id=partner_id, updated_at=updated_at, study_instance_uid=uid)
        except ValidationError as exc:
            return self._rejected(raw, str(exc), "validation", wire)
        content = _encoder.encode(msgspec.structs.replace(wire, updated_at=""))
        content_hash = hashlib.sha256(self._hash_salt + content).hexdigest()
        instances = sum(len(s.instances) for s in wire.series or ())
        return PendingStudy(partner_id, updated_at, content_hash, instances, partial(self._resolve, raw, wire, partner_id, updated_at, content_hash))

    def _resolve(self, raw: bytes | msgspec.Raw, wire: WireStudy, partner_id: str, updated_at: dt.datetime, content_hash: str) -> StudyDTO | RejectedItemDTO:
        try:
            return self._to_dto(wire, partner_id, updated_at, content_hash)
        except ValidationError as exc:  # a MappingError too: the rejection is counted under the error's kind
            return self._rejected(raw, str(exc), exc.kind, wire)

    def _to_dto(self, wire: WireStudy, partner_id: str, updated_at: dt.datetime, content_hash: str) -> StudyDTO:
        uid = check_uid(wire.study_instance_uid, "study_instance_uid")
        if wire.subject is None:
            raise ValidationError("subject", "required on a study that is not deleted")
        if wire.series is None:
            raise ValidationError("series", "required on a study that is not deleted")
        return StudyDTO(
            partner_id=partner_id,
            updated_at=updated_at,
            content_hash=content_hash,
            study_instance_uid=uid,
            accession_number=_text(wire.accession_number, 16, "accession_number"),
            study_date=_date(wire.study_date, "study_date"),
            study_time=_time(wire.study_time, "study_time"),
            description=_text(wire.description, 64, "description"),
            referring_physician_name=_person_name(wire.referring_physician_name, "referring_physician_name"),
            subject=self._subject(wire.subject),
            series=tuple(self._series(s, f"series[{i}]") for i, s in enumerate(wire.series)),
        )

    def _subject(self, wire: WireSubject) -> SubjectDTO:
        patient_id = _text(wire.patient_id, 64, "subject.patient_id")
        if not patient_id:
            raise ValidationError("subject.patient_id", "must not be empty")
        return SubjectDTO(
            partner_id=check_id(wire.id, "subject.id"),
            patient_id=patient_id,
            issuer=_text(wire.issuer_of_patient_id, 64, "subject.issuer_of_patient_id") or "",
            name=_person_name(wire.name, "subject.name"),
            birth_date=_date(wire.birth_date, "subject.birth_date"),
            sex=self.vocabulary.map("sex", wire.sex, "subject.sex"),
        )

    def _series(self, wire: WireSeries, path: str) -> SeriesDTO:
        modality = self.vocabulary.map("modality", wire.modality, f"{path}.modality")
        if modality is None:
            raise ValidationError(f"{path}.modality", "must not be empty")
        instances = []
        for index, inst in enumerate(wire.instances):
            try:
                instances.append(self._instance(inst))
            except ValidationError as exc:  # paths are built only on failure: this loop is hot
                raise exc.within(f"{path}.instances[{index}]") from None
        return SeriesDTO(
            partner_id=check_id(wire.id, f"{path}.id"),
            series_instance_uid=check_uid(wire.series_instance_uid, f"{path}.series_instance_uid"),
            modality=modality,
            series_number=_int32(wire.series_number, f"{path}.series_number"),
            description=_text(wire.description, 64, f"{path}.description"),
            body_part_examined=self.vocabulary.map("body_part_examined", wire.body_part_examined, f"{path}.body_part_examined"),
            instances=tuple(instances),
        )

    def _instance(self, wire: WireInstance) -> InstanceDTO:
        """One instance; error paths are relative to it."""
        bucket, key = self.split_location(wire.location, "location")
        if wire.size_bytes is not None and not 0 <= wire.size_bytes <= INT64_MAX:
            raise ValidationError("size_bytes", "must not be negative" if wire.size_bytes < 0 else "is larger than a 64-bit size")
        if wire.sha256 is not None and not _SHA256.fullmatch(wire.sha256):
            raise ValidationError("sha256", "must be 64 hexadecimal digits")
        return InstanceDTO(
            partner_id=check_id(wire.id, "id"),
            sop_instance_uid=check_uid(wire.sop_instance_uid, "sop_instance_uid"),
            sop_class_uid=self._repeated_uid(wire.sop_class_uid, "sop_class_uid"),
            transfer_syntax_uid=None if wire.transfer_syntax_uid is None else self._repeated_uid(wire.transfer_syntax_uid, "transfer_syntax_uid"),
            instance_number=_int32(wire.instance_number, "instance_number"),
            size_bytes=wire.size_bytes,
            sha256=None if wire.sha256 is None else wire.sha256.lower(),
            bucket=bucket,
            key=key,
        )

    def _repeated_uid(self, value: str, path: str) -> str:
        """SOP class and transfer syntax UIDs repeat on every instance: check each distinct one once."""
        if value not in self._checked_uids:
            check_uid(value, path)
            if len(self._checked_uids) < 10_000:
                self._checked_uids.add(value)
        return value

    def split_location(self, location: str, path: str) -> tuple[str, str]:
        """``s3://bucket/key`` or a bare key in the partner's default bucket; only allowed buckets."""
        if location.startswith("s3://"):
            bucket, sep, key = location[5:].partition("/")
            if not sep or not _BUCKET.fullmatch(bucket):
                raise ValidationError(path, f"malformed S3 location {location[:80]!r}")
        elif "://" in location:
            raise ValidationError(path, f"unsupported location scheme in {location[:80]!r} (s3:// or a bare key)")
        else:
            if self.default_bucket is None:
                raise ValidationError(path, "bare key but the partner has no default_bucket configured")
            bucket, key = self.default_bucket, location
        key = key[1:] if key.startswith("/") else key
        if not key:
            raise ValidationError(path, "location has an empty key")
        if len(key.encode()) > 1024:
            raise ValidationError(path, "S3 key longer than 1024 bytes")
        if bucket not in self.allowed_buckets:
            raise ValidationError(path, f"bucket {bucket!r} is not allowed for partner {self.partner!r}")
        return bucket, key

    def _rejected(self, raw: bytes | msgspec.Raw, reason: str, kind: str, wire: WireStudy | None = None) -> RejectedItemDTO:
        partner_id, updated_at = _identify(raw, wire)
        payload = bytes(raw).decode("utf-8", errors="replace")
        if len(payload) > PAYLOAD_MAX_CHARS:
            payload = payload[:PAYLOAD_MAX_CHARS] + "…[truncated]"
        return RejectedItemDTO(partner_id=partner_id, updated_at=updated_at, reason=reason, payload=payload, kind=kind)


def next_page_token(body: bytes) -> str | None:
    """Only the continuation token of a listing page (C-speed skip over the items)."""
    try:
        return _token_decoder.decode(body).next_page_token
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None  # the full parse of the same body reports what is wrong


def _reject_page_duplicates(items: list[PageItem], decoded: list[tuple[bytes | msgspec.Raw, WireStudy | None, str | None]]) -> list[PageItem]:
    """Reject every item whose id, or any of whose UIDs, appears in another item of the page."""
    keys_per_item = [_identity_keys(wire) if wire is not None and not isinstance(item, RejectedItemDTO) else _rejected_keys(item) for item, (_, wire, _) in zip(items, decoded, strict=True)]
    counts = Counter(key for keys in keys_per_item for key in keys)
    result: list[PageItem] = []
    for item, keys, (raw, _, _) in zip(items, keys_per_item, decoded, strict=True):
        clashes = sorted(key for key in keys if counts[key] > 1)
        if clashes and not isinstance(item, RejectedItemDTO):
            kind, _, value = clashes[0].partition(":")
            reason = f"{kind}: {value[:80]!r} appears in more than one item of this page"
            payload = bytes(raw).decode("utf-8", errors="replace")[:PAYLOAD_MAX_CHARS]
            item = RejectedItemDTO(partner_id=item.partner_id, updated_at=item.updated_at, reason=reason, payload=payload)
        result.append(item)
    return result


def _rejected_keys(item: PageItem) -> set[str]:
    return {f"id:{item.partner_id}"} if item.partner_id is not None else set()


def _identity_keys(wire: WireStudy) -> set[str]:
    keys = {f"id:{wire.id}", f"study_instance_uid:{wire.study_instance_uid}"}
    for series in wire.series or ():
        keys.add(f"series_instance_uid:{series.series_instance_uid}")
        keys.update(f"sop_instance_uid:{inst.sop_instance_uid}" for inst in series.instances)
    return keys


def _identify(raw: bytes | msgspec.Raw, wire: WireStudy | None) -> tuple[str | None, dt.datetime | None]:
    """Best-effort id and timestamp of a rejected item, for the record and the bookmark."""
    # object: a rejected item's "id" and "updated_at" may be any JSON value (or absent).
    partner_id: object
    stamp: object
    if wire is not None:
        partner_id, stamp = wire.id, wire.updated_at
    else:
        try:
            obj = _any_decoder.decode(raw)
        except msgspec.DecodeError:
            return None, None
        if not isinstance(obj, dict):
            return None, None
        partner_id, stamp = obj.get("id"), obj.get("updated_at")
    partner_id = partner_id[:ID_MAX_LENGTH] if isinstance(partner_id, str) and partner_id else None
    try:
        updated_at = parse_rfc3339(stamp, "updated_at") if isinstance(stamp, str) else None
    except ValidationError:
        updated_at = None
    return partner_id, updated_at


def _msgspec_reason(exc: Exception) -> str:
    message = str(exc)
    reason, sep, where = message.rpartition(" - at `")
    if not sep:
        return message
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    return f"{path}: {reason}" if path else reason


def check_id(value: str, path: str) -> str:
    """A partner id as the contract has it: a non-empty string of at most 128 characters."""
    if not value:
        raise ValidationError(path, "must be a non-empty string")
    if len(value) > ID_MAX_LENGTH:
        raise ValidationError(path, f"is {len(value)} characters long (at most {ID_MAX_LENGTH})")
    return value


def check_requested_id(value: str, path: str) -> str:
    """A partner id someone asks us to fetch (``GET /v1/studies/{id}``): the contract's id, and safe as a path segment.

    Stricter than an id inside a partner's item, because this one comes from
    a caller, not the partner: besides the contract's rule (1 to 128
    characters), ``.`` and ``..`` are refused (URL resolution collapses them,
    RFC 3986 §5.2.4: ``/v1/studies/.`` *is* the listing, every study of the
    partner), and so are control characters and surrounding whitespace (a
    pasted line, or a probe). The adapter percent-encodes the id as one
    segment either way (reference_v1.path_segment).
    """
    check_id(value, path)
    if value in (".", ".."):
        raise ValidationError(path, "must not be . or .. (a path segment, not an id)")
    if value != value.strip():
        raise ValidationError(path, "must not start or end with whitespace")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValidationError(path, "must not contain control characters")
    return value


def _text(value: str | None, max_length: int, path: str) -> str | None:
    if value is None:
        return None
    if len(value) > max_length:
        raise ValidationError(path, f"is {len(value)} characters long (at most {max_length})")
    if _TEXT_FORBIDDEN.search(value):
        raise ValidationError(path, "contains a backslash or control character")
    return value.strip() or None


def _person_name(value: str | None, path: str) -> str | None:
    if value is None or not value.strip():
        return None
    return check_person_name(value, path)


def _date(value: str | None, path: str) -> dt.date | None:
    return None if value is None else parse_iso_date(value, path)


def _time(value: str | None, path: str) -> str | None:
    """``HH:MM:SS[.ffffff]`` → DICOM TM ``HHMMSS[.ffffff]`` (PS3.5 §6.2)."""
    return None if value is None else iso_time_to_tm(value, path)


def _int32(value: int | None, path: str) -> int | None:
    if value is not None and not INT32[0] <= value <= INT32[1]:
        raise ValidationError(path, f"{value} is outside the DICOM IS range")
    return value
