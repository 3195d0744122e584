"""The DICOM Query/Retrieve node: C-ECHO, C-FIND, C-MOVE and C-GET over the federated index.

``server`` wires the Application Entity, ``handlers`` has one function per
DIMSE and association event, ``access`` decides who may associate and do
what (deny by default: ``[dicom.peers]``), ``limits`` bounds what any peer
can make the node hold (PDU length, request size, time), ``session`` is the
per-association state; ``identifiers``/``keys``/``matching``/``find`` turn
identifiers into SQL (PS3.4 C.2.2.2, C.4.1), ``retrieve``/``sending`` fetch
stored files from the partners' buckets and send them as stored,
``auditing`` writes the audit rows, ``statuses`` names every DIMSE status
we answer. Depends on ``imaging_sync`` and ``storage``; nothing depends on it.
"""
