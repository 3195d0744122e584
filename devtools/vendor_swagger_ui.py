"""Refresh the Swagger UI files the API serves (``api/static/swagger-ui``) from the npm registry.

    python -m devtools.vendor_swagger_ui 5.35.0

The docs page must work without internet (``api/docs.py``), so its script and
style sheet ship inside our package. They used to come from the
``swagger-ui-py`` distribution, 25 MB of Swagger Editor bundles and source
maps around the 1.9 MB we serve; now only the served files (and the licence
texts that go with them) are copied from the ``swagger-ui-dist`` tarball,
checked against the registry's published ``integrity`` hash before anything
is written. ``SOURCE.json`` records where they came from and each file's
SHA-256: the bill of materials lists them as the npm component they are
(``devtools/sbom.py``), and a test fails when a file no longer matches.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx

TARGET = Path(__file__).resolve().parent.parent / "api" / "static" / "swagger-ui"
PACKAGE = "swagger-ui-dist"
REGISTRY = "https://registry.npmjs.org"
# Served by api/docs.py, and the licence texts that must travel with them.
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt")
MANIFEST = "SOURCE.json"


def vendor(version: str, target: Path = TARGET) -> dict[str, object]:
    """Download ``swagger-ui-dist@version``, verify it, write ``FILES`` and the manifest into ``target``."""
    meta = httpx.get(f"{REGISTRY}/{PACKAGE}/{version}", timeout=60).raise_for_status().json()
    tarball_url, integrity = meta["dist"]["tarball"], meta["dist"]["integrity"]
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"{PACKAGE}@{version}: unexpected integrity algorithm {algorithm!r}")
    tarball = httpx.get(tarball_url, timeout=120).raise_for_status().content
    if base64.b64encode(hashlib.sha512(tarball).digest()).decode() != expected:
        raise SystemExit(f"{PACKAGE}@{version}: the tarball does not match the registry's integrity hash")
    contents: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for name in FILES:
            member = archive.extractfile(f"package/{name}")
            if member is None:
                raise SystemExit(f"{PACKAGE}@{version} has no {name}")
            contents[name] = member.read()
    target.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (target / name).write_bytes(data)
    manifest: dict[str, object] = {
        "name": PACKAGE,
        "version": version,
        "license": meta.get("license", ""),
        "purl": f"pkg:npm/{PACKAGE}@{version}",
        "tarball": tarball_url,
        "integrity": integrity,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(contents.items())},
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", help="the swagger-ui-dist version (npm), e.g. 5.35.0")
    manifest = vendor(parser.parse_args().version)
    print(f"{manifest['purl']}: {len(manifest['files'])} files in {TARGET}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
