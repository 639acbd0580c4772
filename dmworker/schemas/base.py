"""Strict marshmallow fields, validators and the error flattener every dmworker schema uses.

marshmallow's own fields coerce (``"1"`` → ``True``, ``"2"`` → ``2``, ``b"x"`` → ``"x"``); a job that
crosses Redis must not change meaning on the way, so these fields accept exactly one JSON type each:

- :class:`Str` - ``str`` only, and no lone surrogate (so every stored job encodes as UTF-8);
- :class:`Bool` - ``True``/``False`` only; :class:`Int` - ``int`` only (not ``bool``);
- :class:`Float` - ``int`` or ``float`` (not ``bool``), finite, loaded as ``float``;
- :class:`HttpUrl` - an absolute ``http``/``https`` URL with a host;
- :class:`ListOf` - ``list`` or ``tuple`` only (never a ``set``, whose order is undefined).

:func:`flatten_errors` turns marshmallow's nested error dict into dmworker's flat one
(``{"replies": {3: {"title": [...]}}}`` → ``{"replies.3.title": [...]}``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from marshmallow import ValidationError as MarshmallowError

#: Largest accepted length of a URL (bounds job size; long presigned URLs still fit).
MAX_URL_CHARS = 4096

_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]+")
# no whitespace, no C0/C1 control character
_NO_SPACE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BaseSchema(Schema):
    """Every dmworker schema: unknown fields raise, a non-object says so."""

    error_messages = {"type": "Must be an object."}

    class Meta:
        unknown = RAISE


# ------------------------------------------------------------------------------------------- fields
class Str(fields.String):
    """A string; nothing else is coerced into one."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if _SURROGATE.search(value):
            raise MarshmallowError("Not valid Unicode text (contains a lone surrogate).")
        return value


class HttpUrl(Str, fields.Url):
    """An absolute ``http`` or ``https`` URL with a host (``ftp:``, ``javascript:`` … are refused)."""

    default_error_messages = {"invalid": "Not a valid http or https URL."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {})
        kwargs["metadata"] = {"maxLength": MAX_URL_CHARS, **kwargs["metadata"]}
        super().__init__(schemes={"http", "https"}, require_tld=True, **kwargs)
        self.validators.append(Chars(max=MAX_URL_CHARS))


class Bool(fields.Boolean):
    """``true`` or ``false`` only (no ``"yes"``, ``1`` or ``"true"``)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Int(fields.Integer):
    """A JSON integer (``bool`` and numeric strings are refused)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return int(value)


class Float(fields.Float):
    """A finite JSON number, loaded as ``float`` (``bool`` and numeric strings are refused)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        try:
            number = float(value)
        except OverflowError:
            raise self.make_error("too_large") from None
        if not math.isfinite(number):
            raise self.make_error("special")
        return number


class ListOf(fields.List):
    """A JSON array (``list`` or ``tuple``), loaded as ``list``.

    The length validators run *before* the items: 14 quick replies are refused as ``replies`` (one
    message), without validating each of them.
    """

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Any:
        if not isinstance(value, (list, tuple)):
            raise self.make_error("invalid")
        self._validate(value)
        return super()._deserialize(value, attr, data, **kwargs)


# --------------------------------------------------------------------------------------- validators
class Chars(validate.Length):
    """Length in characters, saying which bound was crossed ("Longer than maximum length 20.")."""

    def __call__(self, value: Any) -> Any:
        if self.max is not None and len(value) > self.max:
            raise MarshmallowError(self.message_max.format(max=self.max))
        if self.min is not None and len(value) < self.min:
            raise MarshmallowError(self.message_min.format(min=self.min))
        return value


class Count(validate.Length):
    """Number of items of a list: "must have 1 to 13 items (got 14)"."""

    def __call__(self, value: Any) -> Any:
        too_few = self.min is not None and len(value) < self.min
        if too_few or (self.max is not None and len(value) > self.max):
            raise MarshmallowError(f"must have {self.min} to {self.max} items (got {len(value)})")
        return value


class Utf8Length(validate.Validator):
    """Length of a string in UTF-8 bytes (Meta counts bytes, not characters)."""

    def __init__(self, min_bytes: int, max_bytes: int) -> None:
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes

    def __call__(self, value: str) -> str:
        size = len(value.encode("utf-8"))
        if not self.min_bytes <= size <= self.max_bytes:
            raise MarshmallowError(f"must be {self.min_bytes} to {self.max_bytes} UTF-8 bytes (got {size})")
        return value

    def _repr_args(self) -> str:
        return f"min_bytes={self.min_bytes!r}, max_bytes={self.max_bytes!r}"


class Digits(validate.Validator):
    """A non-empty string of ASCII digits, at most ``max_len`` of them."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def __call__(self, value: str) -> str:
        if not value:
            raise MarshmallowError("must not be empty")
        if not _DIGITS.fullmatch(value):
            raise MarshmallowError("must be a string of digits 0-9")
        if len(value) > self.max_len:
            raise MarshmallowError(f"Longer than maximum length {self.max_len}.")
        return value


class Opaque(validate.Validator):
    """A non-empty identifier of at most ``max_len`` characters without whitespace or control characters."""

    def __init__(self, max_len: int, forbidden: str = "") -> None:
        self.max_len = max_len
        self.forbidden = forbidden

    def __call__(self, value: str) -> str:
        if not value:
            raise MarshmallowError("must not be empty")
        if not _NO_SPACE.fullmatch(value):
            raise MarshmallowError("must not contain whitespace or control characters")
        bad = sorted({c for c in value if c in self.forbidden})
        if bad:
            raise MarshmallowError(f"must not contain {' '.join(bad)}")
        if len(value) > self.max_len:
            raise MarshmallowError(f"Longer than maximum length {self.max_len}.")
        return value


class Label(validate.Validator):
    """A non-empty free-form name (spaces allowed) without control characters."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def __call__(self, value: str) -> str:
        if not value.strip():
            raise MarshmallowError("must not be empty")
        if _CONTROL.search(value):
            raise MarshmallowError("must not contain control characters")
        if len(value) > self.max_len:
            raise MarshmallowError(f"Longer than maximum length {self.max_len}.")
        return value


# ------------------------------------------------------------------------------------ field helpers
def utf8_text(max_bytes: int, description: str, **kwargs: Any) -> Str:
    """A text field limited in UTF-8 bytes (1 to ``max_bytes``)."""
    meta = {
        "description": f"{description} 1 to {max_bytes} UTF-8 bytes.",
        "minLength": 1,
        "maxLength": max_bytes,
    }
    return Str(validate=Utf8Length(1, max_bytes), metadata=meta, **kwargs)


def chars(lo: int, hi: int, description: str, **kwargs: Any) -> Str:
    """A text field limited in characters (``lo`` to ``hi``)."""
    return Str(validate=Chars(min=lo, max=hi), metadata={"description": description}, **kwargs)


def digits(max_len: int, description: str, **kwargs: Any) -> Str:
    """A string of 1 to ``max_len`` ASCII digits."""
    meta = {"description": description, "pattern": f"^[0-9]{{1,{max_len}}}$"}
    return Str(validate=Digits(max_len), metadata=meta, **kwargs)


def opaque_id(max_len: int, description: str, **kwargs: Any) -> Str:
    """A non-empty id without whitespace (message ids, job ids)."""
    meta = {"description": description, "minLength": 1, "maxLength": max_len, "pattern": r"^\S+$"}
    return Str(validate=Opaque(max_len), metadata=meta, **kwargs)


def present(original: Any, *names: str) -> list[str]:
    """Which of ``names`` the raw input (before loading) carries with a non-null value."""
    if not isinstance(original, Mapping):
        return []
    return [n for n in names if original.get(n) is not None]


# ------------------------------------------------------------------------------------------- errors
def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested errors as ``{"dotted.path.3": [message, ...]}``.

    A ``_schema`` entry belongs to its parent path (``replies.3``); at the top it stays ``_schema``.
    """
    out: dict[str, list[str]] = {}
    stack: list[tuple[str, Any]] = [(prefix, messages)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Mapping):
            for key, value in reversed(list(node.items())):
                if key == "_schema":
                    stack.append((path, value))
                else:
                    stack.append((f"{path}.{key}" if path else str(key), value))
        elif isinstance(node, (list, tuple)):
            for item in reversed(node):
                stack.append((path, item))
        else:
            out.setdefault(path or "_schema", []).append(str(node))
    return out


def prefixed(messages: Mapping[str, list[str]], prefix: str) -> dict[str, list[str]]:
    """Flat errors moved under ``prefix`` (``_schema`` becomes the prefix itself)."""
    return {(prefix if key == "_schema" else f"{prefix}.{key}"): value for key, value in messages.items()}


def short(value: object, limit: int = 40) -> str:
    """``repr`` of a value, cut to ``limit`` characters (for error messages about user input)."""
    try:
        text = repr(value)
    except ValueError:  # an int too large to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
