"""``python -m imaging_sync`` is the ``imaging-sync`` command."""

from imaging_sync.cli import main

main()
