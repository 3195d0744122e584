"""The audit log in the ecosystem's audit language: DICOM audit messages (PS3.15 A.5, IHE ATNA) over syslog.

Optional (``[audit.atna]``). Hospitals run an Audit Record Repository (or a
SIEM that reads one) and expect every node that touches patient data to
report to it; dcm4chee-arc does, and so do we, from our own audit log:

- :mod:`~imaging_sync.atna.codes`: the coded values (DCM and RFC 3881 code tables) the messages use;
- :mod:`~imaging_sync.atna.message`: which DICOM audit event an entry is, and its PS3.15 A.5.1 XML;
- :mod:`~imaging_sync.atna.syslog`: RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587 octet counting) and TLS (RFC 5425);
- :mod:`~imaging_sync.atna.relay`: the relay that follows the audit log's seals and keeps its position in ``audit_export_cursor``.

Nothing here runs in a request: the relay reads committed, sealed rows, so
a repository that is down or slow delays no answer and loses no entry.
"""

from __future__ import annotations
