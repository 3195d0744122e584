"""Writing configuration as TOML: the commented example of every key, and a settings file.

The example (``docs/imaging-sync.example.toml``, ``imaging-sync config
example``) is generated from the declarations in :mod:`imaging_sync.config`:
each key's description, default and example value live there, once, so the
example cannot miss a key or drift from the code. :func:`dumps` writes a
plain settings file (the demo writes its own with it, for the CLI to read).

Only what the configuration uses is written: strings, numbers, booleans,
lists of those, and tables.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
from msgspec import inspect

from imaging_sync.config import Settings

HEADER = """\
imaging-sync configuration: every key, with its default and what it does.
Generated from imaging_sync/config.py (`imaging-sync config example`); do not edit by hand.
Copy it to ./imaging-sync.toml (or point IMAGING_SYNC_CONFIG at it) and keep what you change.
Every key can be overridden from the environment as IMAGING_SYNC__SECTION__KEY
(IMAGING_SYNC__PARTNERS__B__PAGE_SIZE=50; a list takes a JSON array or comma-separated values).
Secrets never go in this file: name an environment variable (…_env) or a file (…_file);
every one named is read at start, and all that are missing are reported together.
Lines starting with "# key =" are keys with no default: uncomment to set them."""

_WIDTH = 100
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Not keys of the file: set from the section name, or recording where the settings came from.
_NOT_KEYS = {"name", "source"}


def render_example() -> str:
    """The example config: every key of :class:`~imaging_sync.config.Settings`, commented."""
    lines = [f"# {line}" if line else "#" for line in HEADER.splitlines()]
    for field in _fields(_struct(inspect.type_info(Settings))):
        kind = _plain(field.type)
        if isinstance(kind, inspect.StructType):
            lines += ["", *_table([field.name], kind, None, full=True)]
        else:  # [partners.NAME]: the section's example entries
            lines += [*_subtables([field.name], kind, _example(_meta(field.type)), _meta(field.type).get("description", ""), full=True)]
    return "\n".join(lines).rstrip() + "\n"


def dumps(data: Mapping[str, Any]) -> str:
    """A settings mapping (``msgspec.to_builtins(settings)``, say) as TOML; None values are left out."""
    return "\n".join(_plain_table([], data)).lstrip("\n") + "\n"


# -- the example ----------------------------------------------------------------------------------


def _table(path: list[str], struct: inspect.StructType, given: Mapping[str, Any] | None, *, full: bool) -> Iterator[str]:
    """``[path]`` with its keys, then its sub-tables. ``given``: an example entry's values (they win);
    ``full``: every key (else only the given ones: a second example entry shows what differs)."""
    yield f"[{'.'.join(_key(p) for p in path)}]"
    if full:
        yield from _comment(_first_paragraph(struct.cls.__doc__))
    later: list[tuple[list[str], Any, Any, str]] = []
    given_values: Mapping[str, Any] = given if given is not None else {}
    for field in _fields(struct):
        name, kind, meta = field.name, _plain(field.type), _meta(field.type)
        has_given = name in given_values
        if not (full or has_given):
            continue
        value = given_values[name] if has_given else _example(meta) if field.required else _default(field)
        if isinstance(kind, (inspect.StructType, inspect.DictType)) and _is_table(kind):
            later.append(([*path, name], kind, value if has_given or field.required else _example(meta), meta.get("description", "") if full else ""))
            continue
        yield ""
        description = meta.get("description", "")
        example = _example(meta)
        if value is None:  # no default: shown as an example to uncomment
            yield from _comment(description)
            yield f"# {_key(name)} = {_value(example)}"
            continue
        if example is not None and example != value and not has_given:
            description += f" Example: {_value(example)}."
        yield from _comment(description)
        yield f"{_key(name)} = {_value(value)}"
    for sub_path, kind, value, description in later:
        yield from _subtables(sub_path, kind, value, description, full=full)


def _subtables(path: list[str], kind: Any, value: Any, description: str, *, full: bool) -> Iterator[str]:
    """A nested section ([partners.b.retry], [outbox.webhook]) or a section's entries ([partners.b], [partners.b.vocabulary.sex])."""
    yield ""
    yield from _comment(f"{'.'.join(path)}: {description}" if description else "")
    if isinstance(kind, inspect.StructType):
        yield from _table(path, kind, value if isinstance(value, Mapping) else None, full=full)
        return
    entry_type = _plain(kind.value_type)
    for index, (name, entry) in enumerate((value or {}).items()):
        if index:
            yield ""
        if isinstance(entry_type, inspect.StructType):  # [partners.b], [storage.buckets.x]: the first entry shows every key
            yield from _table([*path, name], entry_type, entry, full=full and index == 0)
        else:  # [partners.b.vocabulary.sex]: a plain mapping
            yield f"[{'.'.join(_key(p) for p in [*path, name])}]"
            yield from (f"{_key(k)} = {_value(v)}" for k, v in entry.items())


def _is_table(kind: Any) -> bool:
    """Struct sections and dicts of tables are written as [tables]; other dicts inline."""
    if isinstance(kind, inspect.StructType):
        return True
    value_type = _plain(kind.value_type)
    return isinstance(value_type, (inspect.StructType, inspect.DictType))


def _default(field: inspect.Field) -> Any:
    return field.default_factory() if field.default is msgspec.NODEFAULT else field.default


def _fields(struct: inspect.StructType) -> list[inspect.Field]:
    return [f for f in struct.fields if f.name not in _NOT_KEYS]


def _struct(kind: Any) -> inspect.StructType:
    plain = _plain(kind)
    assert isinstance(plain, inspect.StructType)
    return plain


def _plain(kind: Any) -> Any:
    """The type without its metadata and without ``| None``."""
    if isinstance(kind, inspect.Metadata):
        return _plain(kind.type)
    if isinstance(kind, inspect.UnionType):
        others = [t for t in kind.types if not isinstance(t, inspect.NoneType)]
        return _plain(others[0]) if len(others) == 1 else kind
    return kind


def _meta(kind: Any) -> dict[str, Any]:
    return dict(kind.extra_json_schema or {}) if isinstance(kind, inspect.Metadata) else {}


def _example(meta: Mapping[str, Any]) -> Any:
    examples = meta.get("examples")
    return examples[0] if examples else None


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def _comment(text: str) -> Iterator[str]:
    for line in textwrap.wrap(text, _WIDTH - 2, break_on_hyphens=False):
        yield f"# {line}"


# -- TOML values ----------------------------------------------------------------------------------


def _plain_table(path: list[str], data: Mapping[str, Any]) -> Iterator[str]:
    """A non-empty mapping value is a sub-table; every other value a key (None: left out)."""
    scalars = {k: v for k, v in data.items() if v is not None and not (isinstance(v, Mapping) and v)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping) and v}
    if path and (scalars or not tables):
        yield ""
        yield f"[{'.'.join(_key(p) for p in path)}]"
    for key, value in scalars.items():
        yield f"{_key(key)} = {_value(value)}"
    for key, value in tables.items():
        yield from _plain_table([*path, key], value)


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, msgspec.Struct):
        return _value(msgspec.to_builtins(value))
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
