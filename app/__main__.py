"""``python -m app`` is the ``imaging-sync`` command."""

from app.cli import main

main()
