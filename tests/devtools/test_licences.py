"""The licence policy over a bill of materials: planted components, not real installs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools import licences


def _component(name: str, *licenses: dict[str, Any]) -> dict[str, Any]:
    return {"type": "library", "name": name, "version": "1.0", "purl": f"pkg:pypi/{name}@1.0", "licenses": list(licenses)}


def _id(spdx: str) -> dict[str, Any]:
    return {"license": {"id": spdx, "acknowledgement": "declared"}}


def _named(text: str) -> dict[str, Any]:
    return {"license": {"name": text, "acknowledgement": "declared"}}


def _expression(text: str) -> dict[str, Any]:
    return {"expression": text, "acknowledgement": "declared"}


@pytest.mark.parametrize("component", [
    _component("mit", _id("MIT")),
    _component("lgpl", _id("LGPL-3.0-only")),
    _component("classifier", _named("License :: OSI Approved :: BSD License")),
    _component("dual", _expression("MIT OR Apache-2.0")),
    _component("either-side", _expression("GPL-3.0-only OR MIT")),
    _component("grouped", _expression("(MIT OR GPL-2.0-only) AND Apache-2.0")),
    _component("exception", _expression("Apache-2.0 WITH LLVM-exception")),
    _component("id-and-its-classifier", _id("MPL-2.0"), _named("License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)")),
], ids=lambda c: c["name"])
def test_allowed_licences_pass(component: dict[str, Any]) -> None:
    verdict = licences.judge(component)
    assert verdict.allowed, verdict


@pytest.mark.parametrize(("component", "reason"), [
    (_component("gpl", _id("GPL-3.0-only")), "not allowed"),
    (_component("agpl-classifier", _named("License :: OSI Approved :: GNU Affero General Public License v3")), "not allowed"),
    (_component("both-needed", _expression("MIT AND GPL-2.0-or-later")), "not allowed"),
    (_component("listed-twice", _id("MIT"), _id("SSPL-1.0")), "not allowed"),
    (_component("unknown-text", _named("Custom licence, see LICENSE")), "unrecognised licence"),
    (_component("none"), "no licence declared"),
    (_component("broken", _expression("(MIT OR")), "unrecognised licence"),
], ids=lambda c: c["name"] if isinstance(c, dict) else "")
def test_refused_licences_fail_with_the_reason(component: dict[str, Any], reason: str) -> None:
    verdict = licences.judge(component)
    assert not verdict.allowed and reason in verdict.reason, verdict


def test_the_check_fails_naming_a_planted_gpl_component_and_passes_without_it(tmp_path: Path) -> None:
    bom = {"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [_component("fine", _id("MIT")), _component("copyleft-lib", _id("GPL-3.0-or-later"))]}
    path = tmp_path / "sbom.json"
    path.write_text(json.dumps(bom))
    done = subprocess.run([sys.executable, "-m", "devtools.licences", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "copyleft-lib 1.0: GPL-3.0-or-later: not allowed by the policy" in done.stderr
    assert "fine" not in done.stderr
    bom["components"] = bom["components"][:1]
    path.write_text(json.dumps(bom))
    done = subprocess.run([sys.executable, "-m", "devtools.licences", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_reviewed_exception_is_allowed_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(licences.REVIEWED, "odd-lib", "dual-licensed; we use it under the MIT terms (checked 2026-12-03)")
    verdict = licences.judge(_component("odd-lib", _named("Custom licence, see LICENSE")))
    assert verdict.allowed and verdict.reason.startswith("reviewed: dual-licensed")
