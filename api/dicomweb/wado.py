"""WADO-RS (PS3.18 10.4): metadata, instances, frames and bulk data of the files in the partners' buckets.

- **Metadata** (``…/metadata``, ``application/dicom+json``): every attribute
  of each file's header, from the header cache (:class:`storage.headers.HeaderCache`:
  read once with ranged GETs, then no S3 read at all); bulk data as a
  ``BulkDataURI`` this server serves. An instance whose file cannot be read
  is left out of a study's or series' answer (the ``Warning`` header says how
  many) and is a 404 on its own.
- **Frames** (``…/frames/{list}``): one ranged GET per frame, of exactly its
  bytes, with ``If-Match`` on the ETag the header was read from; an object
  replaced at the partner is read again. Native frames as
  ``application/octet-stream``; compressed frames as stored when the client
  accepts their syntax, else decoded when pydicom can (``media.choose_frames``).
- **Instances** (``/studies/{s}``, ``…/series/{se}``, ``…/instances/{i}``):
  ``multipart/related; type="application/dicom"``, each file streamed from
  its bucket in chunks (a large series never sits in memory), the next four
  files' GETs opened while the current one is sent.
- **Bulk data** (``…/bulkdata/{key}``): one value, one ranged GET.
- **Rendered and thumbnails** (``…/rendered``, ``…/frames/{n}/rendered``,
  ``…/thumbnail`` of an instance, a series or a study): one frame as JPEG or
  PNG, windowed (:mod:`api.dicomweb.rendered`).

The audit entry of each answer names the studies and patients it shows and
is written before the answer leaves (``recorded_in_thread``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any

from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import PathParameter
from litestar.response import Stream
from sqlalchemy import Connection

from api.auditing import disclosed, note, recorded_in_thread
from api.db import RequestConnection, end_reads
from api.dicomweb.media import choose, choose_frames, choose_part
from api.dicomweb.multipart import Multipart
from api.dicomweb.pixels import can_decode, decode_frame
from api.dicomweb.rendered import render
from api.dicomweb.routes import INSTANCE, SERIES, STUDY, SeriesUid, SopUid, StudyUid, route
from api.dicomweb.urls import base_url
from api.services import Services
from imaging_sync.catalog import headers as catalog
from imaging_sync.catalog.headers import CachedHeader, InstanceRef
from imaging_sync.errors import NotFoundError, ObjectChangedError, ObjectNotFoundError, StorageError, ValidationError
from imaging_sync.uids import is_valid_uid
from storage import ObjectStream
from storage.headers import read_frame

DICOM_JSON = "application/dicom+json"
FrameList = Annotated[str, PathParameter(description="Frame numbers, from 1, comma-separated.", max_length=4096)]
FrameNumber = Annotated[int, PathParameter(description="A frame number, from 1.")]
BulkKey = Annotated[str, PathParameter(description="A BulkDataURI's key, as the metadata gave it.", max_length=20)]
_PREFETCH = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wado-open")


def instance_refs(conn: Connection, study: str, series: str | None = None, sop: str | None = None) -> list[InstanceRef]:
    _check_uids(study, series, sop)
    refs = catalog.instances_by_uids(conn, study, series, sop)
    end_reads(conn)  # no transaction held while the partners' buckets answer
    return refs


def kept_instance(services: Services, conn: Connection, study: str, series: str, sop: str) -> tuple[InstanceRef, CachedHeader]:
    """One instance and its header, in one statement when the header is kept (a viewer's frame requests), else read
    now; 404 or 503 as :func:`kept_header`."""
    _check_uids(study, series, sop)
    ref, kept = catalog.instance_with_header(conn, study, series, sop)
    end_reads(conn)
    return ref, kept if kept is not None else kept_header(services, ref)


def _check_uids(study: str, series: str | None, sop: str | None) -> None:
    for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop)):
        if uid is not None and not is_valid_uid(uid):
            raise ValidationError(name, "is not a UID")


def _disclose(request: Request[Any, Any, Any], refs: Sequence[InstanceRef]) -> None:
    disclosed(request, subject_ids={r.subject_id for r in refs}, study_ids={r.study_id for r in refs})
    note(request, instances=len(refs))


def instance_url(base: str, ref: InstanceRef) -> str:
    return f"{base}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_uid}"


def with_bulk_urls(attributes_json: str, url: str) -> str:
    """The kept DICOM JSON text with each bulk data key made the URL that serves it (into sequences too).

    A text substitution: ``"BulkDataURI":"`` can only be a key in that JSON (inside a string value its
    quotes would be escaped), so no parse and no serialisation per request."""
    return attributes_json.replace('"BulkDataURI":"', f'"BulkDataURI":"{url}/bulkdata/')


def _unavailable(kind: str) -> Exception:
    """The answer for an instance whose file could not be read: gone is a 404, anything else the storage failing."""
    if kind in (ObjectNotFoundError.kind, "no_copy", "bucket_refused"):
        return NotFoundError("the file is not available from any partner")
    return StorageError(f"the file could not be read ({kind})")


def kept_header(services: Services, ref: InstanceRef, *, again: bool = False) -> CachedHeader:
    """The instance's header, kept or read now (the lookup on a connection of the cache's own); ``again``: its
    object changed, read it anew. 404 or 503 when its file cannot be read."""
    found: CachedHeader | str = services.headers.read_again(ref) if again else services.headers.headers([ref])[ref.id]
    if isinstance(found, str):
        raise _unavailable(found)
    return found


def rendered_response(
    request: Request[Any, Any, Any], services: Services, ref: InstanceRef, number: int, params: dict[str, str], accept: str | None, *, thumbnail: bool = False
) -> Response[bytes]:
    """Frame ``number`` of ``ref`` rendered (:mod:`api.dicomweb.rendered`) with ``params`` (viewport, window, quality), in
    the image type ``accept`` allows; shared by WADO-RS's rendered resources and WADO-URI's image types."""
    header = kept_header(services, ref)
    _frame_numbers(str(number), len(header.frames))
    try:
        frame = read_frame(services.files.reader, header, number)
    except ObjectChangedError:
        header = kept_header(services, ref, again=True)
        frame = read_frame(services.files.reader, header, number)
    image, media_type = render(header, frame, params, accept, thumbnail=thumbnail)
    _disclose(request, [ref])
    return Response(content=image, media_type=media_type)


class WadoController(Controller):
    """Retrieve transactions of PS3.18 Table 10.4.1-1 that the index's files can answer."""

    tags = ["DICOMweb"]

    @route("read", STUDY + "/metadata", "study", "study_uid")
    @recorded_in_thread
    def study_metadata(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid) -> Response[bytes]:
        return self._metadata(request, services, conn, instance_refs(conn, study_uid))

    @route("read", SERIES + "/metadata", "series", "series_uid")
    @recorded_in_thread
    def series_metadata(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid, series_uid: SeriesUid
    ) -> Response[bytes]:
        return self._metadata(request, services, conn, instance_refs(conn, study_uid, series_uid))

    @route("read", INSTANCE + "/metadata", "instance", "sop_uid")
    @recorded_in_thread
    def instance_metadata(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection,
        study_uid: StudyUid, series_uid: SeriesUid, sop_uid: SopUid,
    ) -> Response[bytes]:
        return self._metadata(request, services, conn, instance_refs(conn, study_uid, series_uid, sop_uid), single=True)

    def _metadata(self, request: Request[Any, Any, Any], services: Services, conn: Connection, refs: list[InstanceRef], *, single: bool = False) -> Response[bytes]:
        media_type = choose(request.headers.get("accept"), (DICOM_JSON, "application/json"))
        headers = services.headers.headers(refs, conn)
        end_reads(conn)
        base = base_url(request, services.trusted_proxies)
        answer: list[str] = []
        shown, failed = [], []
        for ref in refs:
            found = headers[ref.id]
            if isinstance(found, str):
                failed.append(found)
                continue
            answer.append(with_bulk_urls(found.attributes_json, instance_url(base, ref)))
            shown.append(ref)
        if single and failed:
            raise _unavailable(failed[0])
        _disclose(request, shown)
        extra = {}
        if failed:
            extra["Warning"] = f'299 imaging-sync "{len(failed)} of {len(refs)} instances left out: their files could not be read"'
        body = ("[" + ",".join(answer) + "]").encode()
        return Response(content=body, media_type=media_type, headers=extra)

    @route("read", INSTANCE + "/frames/{frames:str}", "instance", "sop_uid")
    @recorded_in_thread
    def frames(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection,
        study_uid: StudyUid, series_uid: SeriesUid, sop_uid: SopUid, frames: FrameList,
    ) -> Response[bytes]:
        ref, header = kept_instance(services, conn, study_uid, series_uid, sop_uid)
        numbers = _frame_numbers(frames, len(header.frames))
        choice = choose_frames(request.headers.get("accept"), header.transfer_syntax_uid, can_decode=can_decode(header))
        try:
            data = [read_frame(services.files.reader, header, n) for n in numbers]
        except ObjectChangedError:  # replaced at the partner since the header was read: read it again, once
            header = kept_header(services, ref, again=True)
            numbers = _frame_numbers(frames, len(header.frames))
            data = [read_frame(services.files.reader, header, n) for n in numbers]
        if choice.decode:
            data = [decode_frame(header, frame) for frame in data]
        _disclose(request, [ref])
        note(request, frames=len(numbers))
        body = Multipart(choice.part_type)
        return Response(content=body.whole((choice.content_type, d) for d in data), media_type=body.content_type)

    @route("read", INSTANCE + "/bulkdata/{key:str}", "instance", "sop_uid")
    @recorded_in_thread
    def bulkdata(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection,
        study_uid: StudyUid, series_uid: SeriesUid, sop_uid: SopUid, key: BulkKey,
    ) -> Response[bytes]:
        choose_part(request.headers.get("accept"), "application/octet-stream")
        ref, header = kept_instance(services, conn, study_uid, series_uid, sop_uid)
        if key not in header.bulk:
            raise NotFoundError("no such bulk data in this instance")
        offset, length = header.bulk[key]
        data = services.files.reader.read_range(header.location.bucket, header.location.key, offset, offset + length, if_match=header.etag)
        _disclose(request, [ref])
        body = Multipart("application/octet-stream")
        return Response(content=body.whole([("application/octet-stream", data)]), media_type=body.content_type)

    @route("read", INSTANCE + "/rendered", "instance", "sop_uid")
    @recorded_in_thread
    def rendered(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection,
        study_uid: StudyUid, series_uid: SeriesUid, sop_uid: SopUid,
    ) -> Response[bytes]:
        """The instance's first frame as an image (a multi-frame instance: ask for ``frames/{n}/rendered``)."""
        return self._rendered(request, services, instance_refs(conn, study_uid, series_uid, sop_uid)[0], 1)

    @route("read", INSTANCE + "/frames/{frame:int}/rendered", "instance", "sop_uid")
    @recorded_in_thread
    def frame_rendered(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection,
        study_uid: StudyUid, series_uid: SeriesUid, sop_uid: SopUid, frame: FrameNumber,
    ) -> Response[bytes]:
        return self._rendered(request, services, instance_refs(conn, study_uid, series_uid, sop_uid)[0], frame)

    @route("read", INSTANCE + "/thumbnail", "instance", "sop_uid")
    @recorded_in_thread
    def instance_thumbnail(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection,
        study_uid: StudyUid, series_uid: SeriesUid, sop_uid: SopUid,
    ) -> Response[bytes]:
        return self._rendered(request, services, instance_refs(conn, study_uid, series_uid, sop_uid)[0], 1, thumbnail=True)

    @route("read", SERIES + "/thumbnail", "series", "series_uid")
    @recorded_in_thread
    def series_thumbnail(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid, series_uid: SeriesUid
    ) -> Response[bytes]:
        """The series' middle image, as a viewer's series browser shows it."""
        refs = instance_refs(conn, study_uid, series_uid)
        return self._rendered(request, services, refs[len(refs) // 2], 1, thumbnail=True)

    @route("read", STUDY + "/thumbnail", "study", "study_uid")
    @recorded_in_thread
    def study_thumbnail(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid) -> Response[bytes]:
        """The first series' middle image."""
        refs = instance_refs(conn, study_uid)
        first = [r for r in refs if r.series_uid == refs[0].series_uid]
        return self._rendered(request, services, first[len(first) // 2], 1, thumbnail=True)

    def _rendered(self, request: Request[Any, Any, Any], services: Services, ref: InstanceRef, number: int, *, thumbnail: bool = False) -> Response[bytes]:
        return rendered_response(request, services, ref, number, _rendering_params(request), request.headers.get("accept"), thumbnail=thumbnail)


    @route("read", STUDY, "study", "study_uid")
    @recorded_in_thread
    def study(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid) -> Stream:
        return stream_instances(request, services, instance_refs(conn, study_uid))

    @route("read", SERIES, "series", "series_uid")
    @recorded_in_thread
    def series(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid, series_uid: SeriesUid
    ) -> Stream:
        return stream_instances(request, services, instance_refs(conn, study_uid, series_uid))

    @route("read", INSTANCE, "instance", "sop_uid")
    @recorded_in_thread
    def instance(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection,
        study_uid: StudyUid, series_uid: SeriesUid, sop_uid: SopUid,
    ) -> Stream:
        return stream_instances(request, services, instance_refs(conn, study_uid, series_uid, sop_uid))


RENDERING_PARAMS = frozenset({"viewport", "window", "quality", "annotation", "iccprofile"})


def _rendering_params(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The rendering parameters (PS3.18 8.3.5): ``annotation`` and ``iccprofile`` are accepted and not applied."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in RENDERING_PARAMS:
            raise ValidationError(name, "is not a rendering parameter (viewport, window, quality)")
        params[name] = value
    return params


def _frame_numbers(text: str, count: int) -> list[int]:
    """``1,3,5`` as frame numbers, each from 1 to ``count``; ValidationError naming ``frames`` otherwise."""
    if count == 0:
        raise ValidationError("frames", "this instance's frames cannot be read one by one")
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValidationError("frames", "must be frame numbers separated by commas") from None
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise ValidationError("frames", f"frame {bad[0]} does not exist: this instance has {count}")
    return numbers


def stream_instances(request: Request[Any, Any, Any], services: Services, refs: list[InstanceRef], *, single: bool = False) -> Stream:
    """The files as ``multipart/related; type="application/dicom"`` (``single``: the one file, bare, as WADO-URI
    sends it), as stored; the first file's GET is made before the answer starts (a missing file is then a 404, not
    a cut body), each next one while the current one is sent."""
    if not single:
        wanted = choose_part(request.headers.get("accept"), "application/dicom").params.get("transfer-syntax")
        if wanted not in (None, "*"):
            raise ValidationError("transfer-syntax", "files are sent as stored: ask for transfer-syntax=* or none")
    opener = _Opener(services, refs)
    first = opener.next()
    if first is None:
        raise NotFoundError("no file of these instances is available from any partner")
    _disclose(request, refs)
    if single:
        ref, stream = first
        return Stream(stream, media_type="application/dicom", headers={"Content-Disposition": f'attachment; filename="{ref.sop_uid}.dcm"'})
    body = Multipart("application/dicom")
    base = base_url(request, services.trusted_proxies)

    def parts() -> Iterator[bytes]:
        current: tuple[InstanceRef, ObjectStream] | None = first
        try:
            while current is not None:
                ref, stream = current
                yield from body.part("application/dicom", stream, location=instance_url(base, ref))
                current = opener.next()
            yield body.end()
        finally:  # the client went away, or a file failed mid-body: close what is open
            if current is not None:
                current[1].close()
            opener.close()

    return Stream(parts(), media_type=body.content_type)


class _Opener:
    """Opens the instances' files in order, up to ``AHEAD`` GETs in flight while the caller streams the current one.

    A file no partner's copy can give is left out (logged by id and kind).
    An opened GET holds only its response headers until it is read, so
    memory stays at a chunk per file being sent, whatever the series' size.
    """

    AHEAD = 4

    def __init__(self, services: Services, refs: list[InstanceRef]) -> None:
        self._files = services.files
        self._refs = iter(refs)
        self._ahead: deque[tuple[InstanceRef, Future[Any]]] = deque()
        self._fill()

    def _fill(self) -> None:
        reader, copies = self._files.reader, self._files.copies
        while len(self._ahead) < self.AHEAD:
            ref = next(self._refs, None)
            if ref is None:
                return
            future = _PREFETCH.submit(copies.first_available, ref.locations, lambda loc: reader.open_object(loc.bucket, loc.key), context={"instance_id": str(ref.id)})
            self._ahead.append((ref, future))

    def close(self) -> None:
        """Close the GETs opened ahead, now or when they have been made."""
        while self._ahead:
            self._ahead.popleft()[1].add_done_callback(_close_opened)

    def next(self) -> tuple[InstanceRef, ObjectStream] | None:
        while self._ahead:
            ref, future = self._ahead.popleft()
            self._fill()
            attempt = future.result()
            if attempt.value is not None:
                return ref, attempt.value
        return None


def _close_opened(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None and future.result().value is not None:
        future.result().value.close()


__all__ = ["WadoController", "instance_refs", "instance_url", "kept_header", "kept_instance", "rendered_response", "stream_instances"]
