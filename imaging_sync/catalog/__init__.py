"""Read queries over the federated index: studies, subjects, series, instances, operations.

SQL only, no HTTP: the REST API calls these and translates the results; the
conditions of a search come from the PS3.4 matching the DICOM node uses too
(``imaging_sync.query``). Soft-deleted rows (``deleted_at`` set) are never
returned. Listings are keyset-paginated: each takes the sort key of the last
row seen (``after``) and returns the key to continue from, never an OFFSET, so
a page costs the same at row 10 and at row 100 000 and rows inserted while a
client pages through neither repeat nor hide others.
"""
