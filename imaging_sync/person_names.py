"""DICOM Person Name (PN) values: checking and the normalised search form.

PS3.5 §6.2: up to three component groups (alphabetic, ideographic, phonetic)
separated by ``=``, each of up to five components separated by ``^``, each
group at most 64 characters. The search form is what name matching compares
against (REST name words and wildcards, C-FIND PN matching), and the name
words are what the REST word search indexes, so both live here, once.
"""

from __future__ import annotations

import re
import unicodedata

from imaging_sync.errors import ValidationError

GROUP_MAX_LENGTH = 64
WORD_MAX_LENGTH = 64  # a name word longer than this is cut (the token column's width)
_WORD = re.compile(r"\w+")
_FORBIDDEN = set("\\\r\n\t\x1b\x00")


def check_person_name(value: str, path: str) -> str:
    if any(ch in _FORBIDDEN for ch in value):
        raise ValidationError(path, "person name contains a control character or backslash")
    groups = value.split("=")
    if len(groups) > 3:
        raise ValidationError(path, f"person name has {len(groups)} component groups (at most 3)")
    for group in groups:
        if len(group) > GROUP_MAX_LENGTH:
            raise ValidationError(path, f"person name group is {len(group)} characters (at most {GROUP_MAX_LENGTH})")
        if group.count("^") > 4:
            raise ValidationError(path, "person name group has more than 5 components")
    return value


def search_form(value: str | None) -> str | None:
    """Case-, width- and accent-folded name: what every name match compares.

    NFKD splits compatibility characters (full-width Latin, compatibility
    Hangul jamo) and accented letters into their base and combining marks; the
    marks are dropped, NFC puts Hangul syllables back together, and casefold
    handles case (``ß`` → ``ss``). So ``Émile``, ``EMILE`` and ``ｅｍｉｌｅ`` all
    fold to ``emile``, as Orthanc matches PN accent-insensitively. Scripts
    without case match as written, except for their combining marks (Japanese
    voiced sound marks among them: ``ガ`` folds to ``カ``).
    """
    if value is None:
        return None
    decomposed = unicodedata.normalize("NFKD", value)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", bare).casefold()


def name_words(value: str | None) -> list[str]:
    """The words of a name (or of a word query): each maximal run of word characters of its search form.

    Component and group separators (``^``, ``=``), spaces, hyphens and
    apostrophes all separate words, so ``HONG^GILDONG=洪^吉洞=홍^길동`` has the
    words hong, gildong, 洪, 吉洞, 홍, 길동 and ``Van Der Berg^Jan`` van, der,
    berg, jan. Distinct, in order of first appearance, each at most
    ``WORD_MAX_LENGTH`` characters.
    """
    words: dict[str, None] = {}
    for word in _WORD.findall(search_form(value) or ""):
        words.setdefault(word[:WORD_MAX_LENGTH])
    return list(words)
