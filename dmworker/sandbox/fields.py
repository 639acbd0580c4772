"""The Graph ``fields`` parameter: ``id,updated_time,messages.limit(5){id,from,message}``.

Parsed into ``{name: (subfields or None, limit or None)}``; a malformed value is a code 100.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import invalid

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_]+\([^)]*\))*)\s*")
_LIMIT = re.compile(r"\.limit\((\d+)\)")

Fields = dict[str, tuple[Any, int | None]]


def parse_fields(text: str) -> Fields:
    """``{}`` for an empty value (the caller applies the node's default fields)."""
    if not text or not text.strip():
        return {}
    fields, pos = _parse(text, 0, nested=False)
    if pos != len(text):
        raise invalid(f"fields: unexpected {text[pos : pos + 10]!r}")
    return fields


def _parse(text: str, pos: int, nested: bool) -> tuple[Fields, int]:
    out: Fields = {}
    while True:
        match = _NAME.match(text, pos)
        if match is None:
            raise invalid(f"fields: a field name is expected at {text[pos : pos + 10]!r}")
        name, mods = match.group(1), match.group(2)
        pos = match.end()
        limit_match = _LIMIT.search(mods)
        sub = None
        if pos < len(text) and text[pos] == "{":
            sub, pos = _parse(text, pos + 1, nested=True)
            if pos >= len(text) or text[pos] != "}":
                raise invalid("fields: unbalanced braces")
            pos += 1
            while pos < len(text) and text[pos] == " ":
                pos += 1
        out[name] = (sub, int(limit_match.group(1)) if limit_match else None)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if nested or pos >= len(text):
            return out, pos
        raise invalid(f"fields: unexpected {text[pos : pos + 10]!r}")
