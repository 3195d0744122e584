"""The optional parts of the install, and the one answer when a process asks for one that is not there.

The base install is what production runs: the API, the DICOM node, the
workers, beat and the CLI against PostgreSQL or SQLite and a real S3. The
``demo`` extra adds the embedded S3 (moto's S3, served by waitress) and numpy,
which pydicom needs to write the demo's pixel data. Without it a production
image carries none of those packages; a process that is asked for them
anyway (``[storage] embedded = true``, ``imaging-sync demo``) stops at once
with a :class:`~imaging_sync.errors.ConfigError` naming the key and the
install command, rather than an ``ImportError`` from deep inside a thread.

``EXTRA_MODULES`` is the single list of what each extra provides to our own
code; ``tests/imaging_sync/test_extras.py`` keeps it equal to the extras in
``pyproject.toml``, and the base-install test (``tests/infra/test_base_install.py``)
proves every module of ours imports without them.
"""

from __future__ import annotations

import importlib.util

from imaging_sync.errors import ConfigError

# extra -> the top-level modules our code imports from it (each one a requirement of that extra)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("moto", "waitress", "numpy"),
    "render": ("numpy", "PIL"),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` this interpreter cannot import (empty when the extra is installed)."""
    return [module for module in EXTRA_MODULES[extra] if importlib.util.find_spec(module) is None]


def require_extra(extra: str, *, key: str, purpose: str) -> None:
    """Raise a ConfigError at ``key`` unless every module of ``extra`` is installed.

    ``purpose`` says what needed it ("the embedded S3"); the message says how to get it.
    """
    missing = missing_modules(extra)
    if missing:
        raise ConfigError(
            key,
            f"{purpose} needs the '{extra}' extra, which this install lacks (no {', '.join(missing)}): "
            f"install it with pip install 'imaging-sync[{extra}]' (in a checkout: pip install -e '.[{extra}]')",
        )
