"""The REST API (Litestar) over the federated index: search, browse, presigned file URLs, operations, the audit log.

``api`` imports ``imaging_sync`` and ``storage``, never ``jobs`` or ``dicom``.
``app.create_app`` assembles it around a core; ``app.app_from_environment`` is
what each server worker runs. The URL space, roles, errors and audit are in
``api/README.md``.
"""
