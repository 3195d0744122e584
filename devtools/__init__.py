"""Tools for the tests, the benchmarks and the demo: the partner simulator, the data generator,
DICOM test files, a webhook receiver, an embedded S3 with credentials, an independent recount of
the index. No product module imports this package (the demo, itself a tool, does).
"""
