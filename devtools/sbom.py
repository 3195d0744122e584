"""The bill of materials of an installed environment: CycloneDX 1.6 JSON, for a hospital's security review.

    python -m devtools.sbom --python /opt/venv/bin/python -o sbom.cdx.json

``cyclonedx-py environment`` (the ``cyclonedx-bom`` tool, run as a program so
this module needs nothing beyond the standard library) lists every
distribution installed in that interpreter's environment with its version,
package URL and declared licences; ours is the root component (from
``pyproject.toml``). Added here: the files we ship that are no Python
distribution, Swagger UI's (``api/static/swagger-ui/SOURCE.json``: its npm
package URL, licence and each file's SHA-256), as a dependency of the root.

The image build writes it to ``/usr/share/imaging-sync/sbom.cdx.json``; CI
writes the base install's and checks it (``tests/infra/test_base_install.py``).
Licences are checked against the README's policy by ``devtools.licences``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENDORED = (REPO / "api" / "static" / "swagger-ui" / "SOURCE.json",)
SPEC_VERSION = "1.6"


def cyclonedx_executable() -> str:
    """``cyclonedx-py`` beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("cyclonedx-py")
    found = str(beside) if beside.exists() else shutil.which("cyclonedx-py")
    if found is None:
        raise SystemExit("cyclonedx-py is not installed: pip install -e '.[dev]' (or requirements/sbom-tool.txt)")
    return found


def vendored_component(manifest_path: Path) -> dict[str, Any]:
    """A CycloneDX component for files vendored from another registry, from their SOURCE.json."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return {
        "type": "library",
        "bom-ref": manifest["purl"],
        "name": manifest["name"],
        "version": manifest["version"],
        "purl": manifest["purl"],
        "licenses": [{"license": {"id": manifest["license"], "acknowledgement": "declared"}}],
        "externalReferences": [{"type": "distribution", "url": manifest["tarball"], "comment": f"npm integrity {manifest['integrity']}"}],
        "properties": [
            {"name": f"imaging-sync:file:{name}", "value": f"sha256:{digest}"} for name, digest in sorted(manifest["files"].items())
        ],
    }


def build(python: str, *, pyproject: Path = REPO / "pyproject.toml") -> dict[str, Any]:
    """The SBOM of the environment ``python`` runs in, with our vendored files added."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "environment.cdx.json"
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "0")}
        done = subprocess.run(
            [cyclonedx_executable(), "environment", "--pyproject", str(pyproject), "--sv", SPEC_VERSION, "--output-reproducible",
             "--mc-type", "application", "--of", "JSON", "-o", str(out), python],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"cyclonedx-py failed: {done.stderr.strip()}")
        bom: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    root_ref = bom["metadata"]["component"]["bom-ref"]
    for manifest in VENDORED:
        component = vendored_component(manifest)
        bom.setdefault("components", []).append(component)
        edges = bom.setdefault("dependencies", [])
        root = next((d for d in edges if d["ref"] == root_ref), None)
        if root is None:
            root = {"ref": root_ref, "dependsOn": []}
            edges.append(root)
        root.setdefault("dependsOn", []).append(component["bom-ref"])
        edges.append({"ref": component["bom-ref"]})
    return bom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the environment's interpreter (default: this one)")
    parser.add_argument("-o", "--output", required=True, help="where to write the JSON")
    args = parser.parse_args()
    bom = build(args.python)
    Path(args.output).write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"sbom: {len(bom['components'])} components of {args.python} in {args.output}")


if __name__ == "__main__":
    main()
