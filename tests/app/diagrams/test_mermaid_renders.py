"""Every Mermaid diagram in the documentation parses and renders to SVG, so a syntax error cannot land.

Rendered by the Mermaid CLI from the npm registry (``docs/mermaid-cli``,
pinned by its package-lock; ``.ci/run`` installs it) in Debian's Chromium, the
browser GitHub's readers use being beside the point: this is Mermaid's own
parser and renderer, the ones GitHub runs. It never downloads a browser
(``.npmrc`` turns install scripts off; ``puppeteer-config.json`` points at
``/usr/bin/chromium``).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from required import require

REPO = Path(__file__).parents[3]
TOOL = REPO / "docs" / "mermaid-cli"
MMDC = TOOL / "node_modules" / ".bin" / "mmdc"
CHROMIUM = "/usr/bin/chromium"
FENCE = re.compile(r"^```mermaid\n.*?^```$", re.MULTILINE | re.DOTALL)
WITH_DIAGRAMS = sorted(
    str(path.relative_to(REPO)) for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")] if FENCE.search(path.read_text(encoding="utf-8"))
)


@pytest.fixture(scope="module")
def mermaid_cli() -> Path:
    """The pinned Mermaid CLI; skips with how to install it (or fails when the services are mandatory)."""
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    elif not os.access(MMDC, os.X_OK):
        problem = f"the Mermaid CLI is not installed: PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix {TOOL.relative_to(REPO)}"
    require(problem)
    return MMDC


def _render(mmdc: Path, source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1", "HOME": str(out.parent)}
    return subprocess.run([str(mmdc), "--quiet", "-p", str(TOOL / "puppeteer-config.json"), "-i", str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def test_the_documents_with_diagrams_are_the_expected_ones() -> None:
    assert {"docs/data-model.md", "docs/sync.md", "docs/processes.md", "docs/partner-api.md"} <= set(WITH_DIAGRAMS)


@pytest.mark.parametrize("document", WITH_DIAGRAMS)
def test_every_diagram_of_the_document_renders_to_svg(document: str, mermaid_cli: Path, tmp_path: Path) -> None:
    source = REPO / document
    expected = len(FENCE.findall(source.read_text(encoding="utf-8")))

    result = _render(mermaid_cli, source, tmp_path / "rendered.md")

    assert result.returncode == 0, f"{document}: a diagram does not parse:\n{result.stderr[-3000:]}"
    svgs = sorted(tmp_path.glob("rendered-*.svg"))
    assert len(svgs) == expected, (document, [svg.name for svg in svgs])
    for svg in svgs:
        text = svg.read_text(encoding="utf-8")
        assert "<svg" in text and "Syntax error" not in text, svg.name


def test_a_syntax_error_fails_the_render(mermaid_cli: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.md"
    broken.write_text("# broken\n\n```mermaid\nerDiagram\n  study ||--o{ : has\n```\n", encoding="utf-8")

    result = _render(mermaid_cli, broken, tmp_path / "rendered.md")

    assert result.returncode != 0
    assert "Parse error" in result.stderr
