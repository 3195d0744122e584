"""Query semantics every edge shares, decided once: which DICOM attribute is which column, and how a value matches.

- :mod:`~imaging_sync.query.keys`: the DICOM keys ↔ index columns, per
  Query/Retrieve level, each with its matching type (and every PN key with
  its search column);
- :mod:`~imaging_sync.query.matching`: PS3.4 C.2.2.2 matching (single value,
  universal, wildcards, ranges, UID lists) as SQLAlchemy conditions;
- :mod:`~imaging_sync.query.names`: person-name wildcards on the folded
  search form, and the REST API's word search (not PS3.4, kept beside it).

The DICOM node's C-FIND and retrieves and the REST API's searches build their
SQL from these; each edge only parses its own request and translates a
ValidationError into its own answer.
"""
