"""Registers the DICOM fixtures (defined in dicom_fixtures.py, which tests import by that unique name)."""

from dicom_fixtures import dcmtk, files, node, sqlite_engine, sqlite_node, storescp  # noqa: F401
