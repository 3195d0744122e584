"""``Content-Disposition: attachment`` values that every browser reads the same way.

RFC 6266 §4.3 and appendix D: send ``filename="…"`` with a plain-ASCII
fallback for old clients, and, when the real name is not plain ASCII,
``filename*=UTF-8''…`` (RFC 8187 ext-value) which modern clients prefer.
The value reaches S3 as ``response-content-disposition`` and comes back as a
response header, so control and format characters (CR, LF: header injection; U+202E
right-to-left override: a disguised extension) are dropped and path
separators (a download name is never a path) replaced everywhere; the
ASCII fallback also loses ``"`` and ``\\`` (no quoted-pair: clients disagree
on it) and ``%`` (some clients percent-decode it), per RFC 6266 appendix D.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from imaging_sync.errors import ValidationError

MAX_FILENAME_CHARS = 255
# RFC 8187 attr-char minus ALPHA / DIGIT (which quote() never encodes).
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"
_NEVER = set("/\\")
# Controls (CR, LF, NUL…), format characters (right-to-left override that
# disguises an extension), line and paragraph separators.
_CONTROL = {"Cc", "Cf", "Zl", "Zp"}
_NOT_IN_FALLBACK = set('"\\%')


def attachment(filename: str) -> str:
    """``attachment; filename="ascii"`` plus ``filename*=UTF-8''…`` when the name is not plain ASCII."""
    name = "".join(
        "_" if ch in _NEVER else ch for ch in filename if unicodedata.category(ch) not in _CONTROL
    ).strip()
    if not name:
        raise ValidationError("filename", "must contain at least one printable character")
    if len(name) > MAX_FILENAME_CHARS:
        raise ValidationError("filename", f"must be at most {MAX_FILENAME_CHARS} characters")
    fallback = "".join(ch if ch.isascii() and ch not in _NOT_IN_FALLBACK else "_" for ch in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe=_ATTR_CHAR_SAFE)}"
    return value
