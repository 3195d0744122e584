"""Partner buckets: the registry of allowed buckets, presigned GET URLs, streaming reads, an embedded S3.

``storage`` imports ``imaging_sync`` (config, errors); ``imaging_sync`` never imports ``storage``.
Assembled once per process (``app.assembly``)::

    registry = BucketRegistry(settings.storage)
    presigner = Presigner(registry)
    reader = ObjectReader(registry)

With ``[storage] embedded = true`` (local use, the demo), start the embedded
S3 first and build the registry from the config it rewrites (``app.assembly.embedded_storage``)::

    embedded = EmbeddedS3.for_config(settings.storage)
    embedded.start()                  # embedded.stop() at shutdown, or use a with-block
    registry = BucketRegistry(embedded.storage_config(settings.storage))

The buckets still need credentials of some kind (any values do: the embedded
S3 accepts any key unless given ``secrets``).
"""

from storage.embedded import EmbeddedS3
from storage.presign import DICOM_CONTENT_TYPE, ObjectToSign, PresignedUrl, Presigner
from storage.reader import ObjectInfo, ObjectReader, ObjectStream
from storage.registry import BucketEndpoint, BucketRegistry

__all__ = [
    "DICOM_CONTENT_TYPE",
    "BucketEndpoint",
    "BucketRegistry",
    "EmbeddedS3",
    "ObjectInfo",
    "ObjectReader",
    "ObjectToSign",
    "ObjectStream",
    "PresignedUrl",
    "Presigner",
]
