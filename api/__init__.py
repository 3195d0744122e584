"""The REST API (Litestar) over the federated index: search, browse, presigned file URLs, operations, the audit log.

``api`` imports ``imaging_sync`` and ``storage``, never ``jobs`` or ``dicom``.
``api.app.create_app`` builds it over the parts a process passes in; the
process assembly (``app.assembly``) is what calls it, in each server worker.
The URL space, roles, errors and audit are in ``api/README.md``.
"""
