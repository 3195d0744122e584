"""The DICOM Query/Retrieve node: C-ECHO, C-FIND, C-MOVE and C-GET over the federated index.

``server`` wires the Application Entity, ``handlers`` has one function per
DIMSE event, ``identifiers``/``keys``/``matching``/``find`` turn identifiers
into SQL (PS3.4 C.2.2.2, C.4.1), ``retrieve``/``sending`` fetch stored files
from the partners' buckets and send them as stored, ``auditing`` writes one
audit row per operation, ``statuses`` names every DIMSE status we answer.
Depends on ``imaging_sync`` and ``storage``; nothing depends on it.
"""
