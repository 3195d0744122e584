"""The outermost package: the command line and the one place each process is assembled.

It may import every other package (the core ``imaging_sync``, ``storage``, the
edges ``api``, ``dicom``, ``jobs``, and for the demo ``devtools``); nothing
imports it. ``app.assembly`` builds each kind of process (REST API, DICOM
node, Celery worker, the all-in-one ``serve``) and passes the parts in;
``app.cli`` is the ``imaging-sync`` command.
"""
