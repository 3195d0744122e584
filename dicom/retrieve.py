"""C-MOVE / C-GET sub-operations: which instances, where their files are, fetching them ahead.

The instances of a retrieve are one SQL query (their metadata only: UIDs,
transfer syntax, locations), so the sub-operation count is known before the
first byte moves (PS3.4 C.4.2.3.1). Files come from the partners' buckets
through ``storage.ObjectReader``: up to ``fetch_concurrency`` objects are
fetched at once, so S3 and the association stay busy. An object up to
``dicom.in_memory_object_bytes`` (1 MiB: most instances) is held in memory until sent; a
larger one is streamed in bounded chunks into its own spool file, so memory
stays bounded whatever the object's size. Either is the stored Part 10 file,
byte for byte, and is sent as it is (dicom.sending); a spool file is deleted
once sent, and whatever a transfer spooled is deleted when it ends, however
it ends (:meth:`Retriever.fetch`). Spool files
live in a folder of the node's own (:class:`Spool`), which the node sweeps
when it starts: what a killed node left goes then.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context
from sqlalchemy import Engine, func, select

from dicom.errors import TooManyMatchesError
from dicom.find import where_clause
from dicom.identifiers import QueryRequest
from imaging_sync.copies import CopyChooser, Location
from imaging_sync.db.models import InstanceLocation, table_of
from imaging_sync.errors import StorageError
from imaging_sync.query.keys import instance, series, study, subject
from storage import ObjectReader

log = logging.getLogger(__name__)

location = table_of(InstanceLocation)
MAX_SUBOPERATIONS = 65535  # Number of … Sub-operations are US (PS3.4 C.4.2.1.5)
MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8 9.3.2.2: odd IDs 1-255)
# An object up to this size is held in memory from fetch to send; a larger one is streamed into a spool file
# (dicom.in_memory_object_bytes). With fetch_concurrency objects fetched ahead, at most that many per transfer.
IN_MEMORY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class SubOperation:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    locations: tuple[Location, ...]
    # Whose data the file is (audit: disclosed before the file leaves).
    subject_id: uuid.UUID | None = None
    study_id: uuid.UUID | None = None


SPOOL_PREFIX, SPOOL_SUFFIX = "isync-", ".dcm"


class Spool:
    """The node's own spool folder: ``<dicom.spool_dir or the temporary directory>/imaging-sync-dicom-<port>``.

    One folder per listening port, so no other node on the host (another
    port) and no other program's files are ever in it, and the start-up sweep
    (:meth:`sweep`) can delete what it finds: spool files of this node's
    previous process, killed mid-transfer. Files are made and deleted by
    :meth:`Retriever.fetch`; :attr:`files` counts those a running node holds.
    """

    def __init__(self, root: str | None, port: int) -> None:
        self.path = os.path.join(root or tempfile.gettempdir(), f"imaging-sync-dicom-{port}")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        # In a shared temporary directory the name could have been taken first by another user, who could then
        # remove or swap the files of a transfer (each is made 0600 and O_EXCL, but the folder would be theirs).
        if hasattr(os, "getuid") and os.stat(self.path, follow_symlinks=False).st_uid != os.getuid():
            raise StorageError(f"the spool folder {self.path} belongs to another user; set dicom.spool_dir to a folder of the service's own")

    def sweep(self, older_than: float) -> int:
        """Delete the spool files modified before ``older_than`` (a time.time()); how many were deleted."""
        swept = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and entry.name.startswith(SPOOL_PREFIX) and entry.name.endswith(SPOOL_SUFFIX):
                    if entry.stat(follow_symlinks=False).st_mtime < older_than:
                        _unlink(entry.path)
                        swept += 1
        return swept

    def files(self) -> list[str]:
        return sorted(name for name in os.listdir(self.path) if name.startswith(SPOOL_PREFIX))

    def remove_if_empty(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:  # not empty (a transfer still running) or gone
            return


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return


@dataclass
class Tally:
    """What the sub-operations of one retrieve came to, for the log and the audit row."""

    total: int = 0
    completed: int = 0
    warning: int = 0
    failed: int = 0
    bytes_sent: int = 0
    failed_uids: list[str] = field(default_factory=list)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _last_log: float = 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.warning - self.failed

    def record(self, status: int | None, size: int, uid: str, reason: str | None = None) -> None:
        warning = status is not None and (status & 0xF000 == 0xB000 or status == 0x0001)  # PS3.7 C.4, PS3.4 B.2.3
        if status is None or (status != 0x0000 and not warning):
            self.failed += 1
            self.failed_uids.append(uid)
            reason = reason or ("no response" if status is None else f"peer status 0x{status:04X}")
            self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1
            log.warning("sub-operation failed", extra={"sop_instance_uid": uid, "reason": reason})
        elif warning:
            self.warning += 1
            self.bytes_sent += size
        else:
            self.completed += 1
            self.bytes_sent += size
        now = time.monotonic()
        if now - self._last_log >= 5.0 or self.remaining == 0:
            self._last_log = now
            log.info(
                "retrieve progress: %d/%d done, %d failed, %.1f MB",
                self.completed + self.warning + self.failed, self.total, self.failed, self.bytes_sent / 1e6,
            )

    def as_detail(self) -> dict[str, Any]:
        return {
            "sub_operations": self.total,
            "completed": self.completed,
            "warning": self.warning,
            "failed": self.failed,
            "remaining": self.remaining,
            "bytes": self.bytes_sent,
            "seconds": round(time.monotonic() - self.started, 3),
            **({"failure_reasons": self.failure_reasons} if self.failure_reasons else {}),
        }


class EncodedInstance(Dataset):
    """A sub-operation as pynetdicom's C-MOVE/C-GET loop sees it: a Dataset with the two UIDs it
    reports (Failed SOP Instance UID List, PS3.4 C.4.2.1.4.2), standing for the stored file in
    ``path``, or for the reason it could not be fetched (``error``).

    Its own attributes bypass pydicom's ``__setattr__``, which looks every name up as a DICOM
    keyword and validates UIDs: with the status Dataset built per C-STORE response, that was about
    a tenth of the node's GIL time per moved file (py-spy). The UIDs are read from the sub-operation.
    """

    sub: SubOperation
    _path: str | None
    _data: bytes | None
    _size: int
    _error: str | None
    _tally: Tally

    def __init__(
        self, sub: SubOperation, tally: Tally, *, path: str | None = None, data: bytes | None = None, size: int = 0, error: str | None = None
    ) -> None:
        super().__init__()
        self.__dict__.update(sub=sub, _path=path, _data=data, _size=size, _error=error, _tally=tally)

    @property
    def SOPClassUID(self) -> str:  # noqa: N802  # the DICOM keyword pynetdicom reads
        return self.sub.sop_class_uid

    @property
    def SOPInstanceUID(self) -> str:  # noqa: N802
        return self.sub.sop_instance_uid

    def __bool__(self) -> bool:
        return True  # it holds no elements, but pynetdicom sends a sub-operation only for a truthy data set

    def release(self) -> None:
        self.__dict__["_data"] = None
        if self._path is not None:
            _unlink(self._path)
            self.__dict__["_path"] = None


class Retriever:
    """Finds the instances of a retrieve and fetches their files; one per process."""

    def __init__(
        self,
        engine: Engine,
        reader: ObjectReader,
        *,
        fetch_concurrency: int,
        spool_dir: str | None = None,
        partner_priority: Mapping[str, int] | None = None,
        in_memory_bytes: int = IN_MEMORY_BYTES,
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._reader = reader
        self._concurrency = fetch_concurrency
        self._in_memory_bytes = in_memory_bytes
        self._spool_dir: str | None = spool_dir  # the node's own folder once it listens (use_spool)
        # Which copy to read: the core's rule, the one the REST API signs by (imaging_sync.copies).
        self._copies = CopyChooser(partner_priority or {}, reader.registry)

    def connect_storage(self) -> int:
        """Build every registered bucket's client now (dicom.server, once listening)."""
        return self._reader.registry.connect_all()

    def use_spool(self, spool: Spool) -> None:
        """Spool into the node's own folder (dicom.server, once the port is known)."""
        self._spool_dir = spool.path

    def sub_operations(self, request: QueryRequest) -> list[SubOperation]:
        """The live instances the request names, each with every partner's location (the fetch picks the copy)."""
        source = (
            instance.join(series, instance.c.series_id == series.c.id)
            .join(study, series.c.study_id == study.c.id)
            .join(subject, study.c.subject_id == subject.c.id)
        )
        live = [x.c.deleted_at.is_(None) for x in (instance, series, study, subject)]
        conditions = [*live, *where_clause(request, self._dialect)]
        with self._engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(source).where(*conditions)).scalar_one()
            if count > MAX_SUBOPERATIONS:
                raise TooManyMatchesError(f"{count} instances match; at most {MAX_SUBOPERATIONS} per retrieve")
            stmt = (
                select(
                    instance.c.id, instance.c.sop_instance_uid, instance.c.sop_class_uid, instance.c.transfer_syntax_uid,
                    location.c.partner, location.c.bucket, location.c.key, study.c.id.label("study_id"), subject.c.id.label("subject_id"),
                )
                .select_from(source.outerjoin(location, location.c.instance_id == instance.c.id))
                .where(*conditions)
                .order_by(study.c.id, series.c.series_number, series.c.id, instance.c.instance_number, instance.c.id)
            )
            grouped: dict[Any, tuple[Any, list[Location]]] = {}
            for row in conn.execute(stmt):
                entry = grouped.setdefault(row.id, (row, []))
                if row.bucket is not None:
                    entry[1].append(Location(row.partner, row.bucket, row.key))
        subs = []
        for row, locations in grouped.values():
            subs.append(SubOperation(row.sop_instance_uid, row.sop_class_uid, row.transfer_syntax_uid, tuple(locations), row.subject_id, row.study_id))
        return subs

    def fetch(self, subs: Iterable[SubOperation], tally: Tally) -> Iterator[EncodedInstance]:
        """The sub-operations in order, each spooled; at most ``fetch_concurrency`` fetches in flight.

        However the transfer ends (done, cancelled, the peer gone, an error,
        the iterator dropped unfinished), the fetches not started are
        cancelled, the running ones awaited, and every spool file this
        transfer made and did not send is deleted: one yielded but never sent
        included.
        """
        items = iter(subs)
        pending: deque[Future[EncodedInstance]] = deque()
        made: set[str] = set()
        lock = threading.Lock()
        pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="dicom-fetch")
        try:
            for sub in items:
                pending.append(pool.submit(self._spool, sub, tally, made, lock))
                if len(pending) >= self._concurrency:
                    break
            while pending:
                done = pending.popleft().result()
                following = next(items, None)
                if following is not None:
                    pending.append(pool.submit(self._spool, following, tally, made, lock))
                yield done
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            with lock:
                for path in made:
                    _unlink(path)

    def _spool(self, sub: SubOperation, tally: Tally, made: set[str], lock: threading.Lock) -> EncodedInstance:
        """Stream the copy the core chooses into a spool file; a copy missing or unreadable gives way to the next."""
        if not sub.locations:
            return EncodedInstance(sub, tally, error="no file location in the index")

        def spool(loc: Location) -> tuple[str | None, bytes | None, int]:
            with self._reader.open_object(loc.bucket, loc.key) as stream:
                if stream.info.size <= self._in_memory_bytes:  # most instances: no spool file to write, read back and delete
                    data = b"".join(stream)
                    return None, data, len(data)
                fd, path = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=SPOOL_SUFFIX, dir=self._spool_dir)
                with lock:
                    made.add(path)
                size = 0
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in stream:
                            out.write(chunk)
                            size += len(chunk)
                except BaseException:
                    _unlink(path)
                    raise
                return path, None, size

        found = self._copies.first_available(sub.locations, spool, context={"sop_instance_uid": sub.sop_instance_uid})
        if found.value is None:
            return EncodedInstance(sub, tally, error="file " + "/".join(s.kind for s in found.skipped))
        path, data, size = found.value
        return EncodedInstance(sub, tally, path=path, data=data, size=size)


def presentation_contexts(subs: Iterable[SubOperation]) -> list[PresentationContext]:
    """One context per (SOP class, transfer syntax) actually being sent, most used first (PS3.4 C.4.2.3.1).

    Each transfer syntax gets its own context so the peer accepts or rejects it
    alone; files are sent in their stored encoding, never converted. An
    instance whose syntax is not in the index is offered the uncompressed ones.
    """
    counts: dict[tuple[str, str], int] = {}
    for sub in subs:
        syntaxes = [sub.transfer_syntax_uid] if sub.transfer_syntax_uid else [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for ts in syntaxes:
            counts[(sub.sop_class_uid, ts)] = counts.get((sub.sop_class_uid, ts), 0) + 1
    pairs = sorted(counts, key=lambda p: -counts[p])
    if len(pairs) > MAX_CONTEXTS:
        log.warning("retrieve needs %d presentation contexts, proposing the %d most used", len(pairs), MAX_CONTEXTS)
    return [build_context(sop_class, [ts]) for sop_class, ts in pairs[:MAX_CONTEXTS]]
