"""Issuing presigned URLs for instance files: which copy, checked how, signed by whom.

Which copy is the core's decision (``imaging_sync.copies``, the DICOM
node's retrieves take theirs from it too): configured partners by priority,
then the others; never a bucket outside the storage registry. For one
instance each copy in that order is checked with a HEAD, and one whose
object is gone (or whose storage fails) gives way to the next: a viewer
asking for one file should get a working URL. A series is signed in one
batch without HEADs (500 URLs in milliseconds; a HEAD each would take
seconds), the first usable copy of each instance.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection

from api.db import end_reads
from imaging_sync.catalog import instances as catalog
from imaging_sync.catalog.instances import InstanceFile
from imaging_sync.copies import CopyChooser, Location
from imaging_sync.errors import NotFoundError
from storage import ObjectReader, Presigner
from storage.registry import BucketRegistry


@dataclass(frozen=True, slots=True)
class IssuedUrl:
    """A URL for one instance's file, and whose copy it is."""

    url: str
    expires_at: dt.datetime
    partner: str
    skipped: tuple[str, ...] = ()  # partners whose copy was passed over (unregistered bucket, object gone)


@dataclass(frozen=True, slots=True)
class SeriesEntry:
    instance_id: uuid.UUID
    sop_instance_uid: str
    instance_number: int | None
    url: str | None  # None: no partner's copy is in a registered bucket
    expires_at: dt.datetime | None
    partner: str | None


class FileUrls:
    """Built once per process from the storage registry and the partners' priorities."""

    def __init__(self, registry: BucketRegistry, *, priorities: Mapping[str, int], presigner: Presigner | None = None, reader: ObjectReader | None = None) -> None:
        self.registry = registry
        self.copies = CopyChooser(priorities, registry)
        self.presigner = presigner or Presigner(registry)
        self.reader = reader or ObjectReader(registry)

    def check_lifetime(self, expires_in: int | None) -> int:
        """The URL lifetime for ``expires_in`` (storage.presign_default/max_seconds); ValidationError("expires_in")."""
        return self.presigner.lifetime(expires_in)

    def instance_url(self, conn: Connection, instance_id: uuid.UUID, *, expires_in: int | None = None) -> IssuedUrl:
        """A URL for the best copy that exists; NotFoundError when no copy is left."""
        seconds = self.check_lifetime(expires_in)
        file = catalog.instance_file(conn, instance_id)
        end_reads(conn)  # no transaction open while S3 answers
        found = self.copies.first_available(file.locations, lambda loc: self.reader.head(loc.bucket, loc.key), context={"instance_id": str(instance_id)})
        location = found.location
        if location is None:
            if found.failure is not None:  # endpoint down, access denied: the storage failing, not a missing file
                raise found.failure
            raise NotFoundError(f"instance {instance_id} has no stored copy available")
        signed = self.presigner.presign_get(location.bucket, location.key, expires_in=seconds, filename=_filename(file))
        return IssuedUrl(signed.url, signed.expires_at, location.partner, tuple(found.skipped_partners))

    def series_urls(self, conn: Connection, series_id: uuid.UUID, *, expires_in: int | None = None) -> list[SeriesEntry]:
        """One entry per live instance, in instance-number order; ``url`` None where no usable copy exists."""
        seconds = self.check_lifetime(expires_in)
        files = catalog.series_files(conn, series_id)
        end_reads(conn)
        chosen: list[tuple[InstanceFile, Location | None]] = []
        for file in files:
            chosen.append((file, self.copies.best(file.locations)))
        # No download filename here: a viewer fetching a series does not save files, and the
        # Content-Disposition parameter is a third of the signing time of 500 URLs (profiled).
        to_sign = [(loc.bucket, loc.key, None) for file, loc in chosen if loc is not None]
        signed = iter(self.presigner.presign_many(to_sign, expires_in=seconds) if to_sign else [])
        result = []
        for file, loc in chosen:
            url = next(signed) if loc is not None else None
            result.append(
                SeriesEntry(
                    file.id, file.sop_instance_uid, file.instance_number,
                    url.url if url else None, url.expires_at if url else None, loc.partner if loc else None,
                )
            )
        return result


def _filename(file: InstanceFile) -> str:
    return f"{file.sop_instance_uid}.dcm"
