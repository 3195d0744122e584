"""Where a document's generated parts sit: between a pair of HTML comments, everything else hand-written.

A generated part looks like this in the Markdown (the comments render as
nothing on GitHub and in most documentation tools)::

    <!-- generated: data-model — written by `imaging-sync docs generate`; edit the code, not this -->
    ...
    <!-- end generated: data-model -->

:func:`fill` replaces what lies between each pair with the part of that name
and leaves the rest of the text byte for byte as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from imaging_sync.errors import ValidationError

COMMAND = "imaging-sync docs generate"
_BEGIN = "<!-- generated: {name} — written by `" + COMMAND + "`; edit the code, not this -->"
_END = "<!-- end generated: {name} -->"
_PAIR = re.compile(
    r"^<!-- generated: (?P<name>[a-z0-9-]+) — [^\n]*-->\n(?P<body>.*?)^<!-- end generated: (?P=name) -->$",
    re.MULTILINE | re.DOTALL,
)
_ANY_BEGIN = re.compile(r"^<!-- generated: ([a-z0-9-]+)", re.MULTILINE)


def block(name: str, body: str) -> str:
    """A generated part with its markers, as :func:`fill` writes it (for a new document)."""
    return f"{_BEGIN.format(name=name)}\n{body.strip()}\n{_END.format(name=name)}"


def names(text: str) -> list[str]:
    """The generated parts ``text`` holds, in order."""
    return [match["name"] for match in _PAIR.finditer(text)]


def fill(text: str, parts: Mapping[str, str], *, document: str = "document") -> str:
    """``text`` with each generated part replaced by ``parts[name]``.

    Every part must have its markers in the text, and every marked part must
    have a generator: a missing or orphaned marker is an error naming it, not
    a silently stale document.
    """
    opened = _ANY_BEGIN.findall(text)
    closed = names(text)
    if opened != closed:
        unclosed = sorted(set(opened) - set(closed)) or opened
        raise ValidationError(document, f"generated part(s) {', '.join(unclosed)} have no matching '<!-- end generated: NAME -->' line")
    missing = [name for name in parts if name not in closed]
    if missing:
        raise ValidationError(document, f"no markers for generated part(s) {', '.join(missing)}; add {_BEGIN.format(name=missing[0])!r} and its end line")
    orphans = [name for name in closed if name not in parts]
    if orphans:
        raise ValidationError(document, f"marked part(s) {', '.join(orphans)} have no generator (remove the markers, or add one in app/diagrams)")
    return _PAIR.sub(lambda match: block(match["name"], parts[match["name"]]), text)
