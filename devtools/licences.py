"""The licence policy of what we ship, checked against a bill of materials (``devtools.sbom``).

    python -m devtools.licences sbom.cdx.json               # exit 1 naming each component the policy refuses
    python -m devtools.licences sbom.cdx.json --markdown    # the licence list (docs/licences.md)

The policy (README, "Dependencies"): a shipped component may carry a
permissive licence, or a weak-copyleft one that binds only changes to that
component's own files, which we use unmodified (MPL-2.0: certifi's CA list;
LGPL: psycopg, dynamically loaded). Strong copyleft (GPL, AGPL), source-
available licences (SSPL, BUSL, Commons Clause) and a component whose licence
is missing or unrecognised are refused until a person has read it and named
it in ``REVIEWED`` with the reason. For ``A OR B`` one allowed choice is
enough; for ``A AND B`` (or several licences listed) each must be allowed.

Licences come as SPDX ids or expressions, or as a trove classifier where a
package declares no SPDX licence; ``CLASSIFIERS`` maps the classifiers to ids.
The generic "BSD License" classifier is taken as the BSD family, all of which
the policy allows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALLOWED = frozenset({
    # permissive
    "MIT", "MIT-0", "BSD-2-Clause", "BSD-3-Clause", "BSD", "0BSD", "ISC", "Apache-2.0", "PSF-2.0", "Python-2.0",
    "Zlib", "Unlicense", "HPND", "CC0-1.0", "BlueOak-1.0.0",
    # weak copyleft, used unmodified
    "MPL-2.0", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only", "LGPL-3.0-or-later",
})

CLASSIFIERS = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: BSD License": "BSD",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: ISC License (ISCL)": "ISC",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.1-or-later",
    "License :: OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "License :: OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "License :: OSI Approved :: GNU Affero General Public License v3": "AGPL-3.0-only",
}

# name -> why its licence, though the checks above refuse it, was accepted (by a person, with the reason)
REVIEWED: dict[str, str] = {}

_TOKEN = re.compile(r"\(|\)|[^\s()]+")


@dataclass(frozen=True)
class Verdict:
    name: str
    version: str
    licence: str  # as declared, joined with " AND " when several are listed
    allowed: bool
    reason: str


def _allowed_expression(expression: str) -> bool:
    """SPDX expression semantics over ALLOWED: OR needs one side, AND (and WITH's licence) both."""
    tokens = _TOKEN.findall(expression)
    position = 0

    def parse_or() -> bool:
        nonlocal position
        result = parse_and()
        while position < len(tokens) and tokens[position].upper() == "OR":
            position += 1
            right = parse_and()
            result = result or right
        return result

    def parse_and() -> bool:
        nonlocal position
        result = parse_atom()
        while position < len(tokens) and tokens[position].upper() == "AND":
            position += 1
            right = parse_atom()
            result = result and right
        return result

    def parse_atom() -> bool:
        nonlocal position
        if position >= len(tokens):
            raise ValueError(f"incomplete licence expression {expression!r}")
        token = tokens[position]
        position += 1
        if token == "(":
            result = parse_or()
            if position >= len(tokens) or tokens[position] != ")":
                raise ValueError(f"unbalanced licence expression {expression!r}")
            position += 1
            return result
        if position < len(tokens) and tokens[position].upper() == "WITH":
            position += 2  # an exception only ever grants more: the licence decides
        return token.removesuffix("+") in ALLOWED or token in ALLOWED

    result = parse_or()
    if position != len(tokens):
        raise ValueError(f"unexpected {tokens[position]!r} in licence expression {expression!r}")
    return result


def _declared(component: dict[str, Any]) -> list[str]:
    """Each licence the component declares, as an SPDX id or expression where we know one, else its text."""
    found = []
    for entry in component.get("licenses", []):
        if "expression" in entry:
            found.append(entry["expression"])
            continue
        licence = entry.get("license", {})
        text = licence.get("id") or licence.get("name") or ""
        found.append(CLASSIFIERS.get(text, text))
    # The same licence named twice (an SPDX id and its classifier) is one licence.
    return list(dict.fromkeys(found))


def judge(component: dict[str, Any]) -> Verdict:
    """The policy's verdict on one SBOM component."""
    name, version = component.get("name", "?"), component.get("version", "?")
    declared = _declared(component)
    licence = " AND ".join(f"({d})" if " " in d and len(declared) > 1 else d for d in declared)
    if name in REVIEWED:
        return Verdict(name, version, licence, True, f"reviewed: {REVIEWED[name]}")
    if not declared or not all(declared):
        return Verdict(name, version, licence or "(none)", False, "no licence declared")
    try:
        allowed = all(_allowed_expression(d) for d in declared)
    except ValueError as exc:
        return Verdict(name, version, licence, False, f"unrecognised licence ({exc})")
    return Verdict(name, version, licence, allowed, "allowed by the policy" if allowed else "not allowed by the policy")


def judge_bom(bom: dict[str, Any]) -> list[Verdict]:
    """A verdict per component, sorted by name."""
    return sorted((judge(c) for c in bom.get("components", [])), key=lambda v: v.name.lower())


def markdown(verdicts: list[Verdict]) -> str:
    """The licence list as a Markdown table."""
    lines = [
        "# Licences of the production install",
        "",
        "Generated from the bill of materials of a base install from `requirements/production.txt`",
        "(`python -m devtools.licences SBOM --markdown`); the policy is in the README, \"Dependencies\".",
        "`tests/infra/test_base_install.py` fails when this list and the lock disagree.",
        "",
        "| component | version | licence |",
        "|---|---|---|",
    ]
    lines += [f"| {v.name} | {v.version} | {v.licence} |" for v in verdicts]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sbom", help="a CycloneDX JSON bill of materials (devtools.sbom)")
    parser.add_argument("--markdown", action="store_true", help="print the licence list instead of checking")
    args = parser.parse_args()
    verdicts = judge_bom(json.loads(Path(args.sbom).read_text(encoding="utf-8")))
    if args.markdown:
        sys.stdout.write(markdown(verdicts))
        return
    refused = [v for v in verdicts if not v.allowed]
    for v in refused:
        print(f"licences: {v.name} {v.version}: {v.licence}: {v.reason}", file=sys.stderr)
    if refused:
        raise SystemExit(1)
    print(f"licences: all {len(verdicts)} components allowed by the policy")


if __name__ == "__main__":
    main()
