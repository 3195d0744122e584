"""Pictures of the system drawn from the code: the generated parts of ``docs/`` (``imaging-sync docs generate``).

Each document in :data:`app.diagrams.documents.DOCUMENTS` has parts between markers
(:mod:`app.diagrams.markers`) that a function of this package writes from the
code itself: the data model from the SQLAlchemy metadata, the statuses from
the core's enums, the processes from the assembly module, the layout from the
import rule the layout test enforces. The paragraphs around them are
hand-written. ``tests/app/diagrams/test_documents_up_to_date.py`` regenerates every part
and fails, naming the command, when a committed document differs.
"""
