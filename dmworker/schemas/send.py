"""Validating one send or a sequence of sends at the door, and the rate class of a send.

Every function here raises :class:`dmworker.errors.ValidationError` with flat field paths
(``"replies.3.title"``, ``"steps.1.text"``) for any bad input, whatever its type: never
``TypeError``, ``KeyError`` or marshmallow's own exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError as MarshmallowError

from ..errors import ValidationError
from .base import flatten_errors, prefixed, short
from .kinds import INSTANCES, KINDS, SCHEMAS

MAX_STEPS = 50

#: An Instagram-scoped user id (IGSID), matched whole (``fullmatch``); the OpenAPI patterns use it too.
IGSID_RE = re.compile(r"[0-9]{1,32}")
#: A comment id (``digits`` or ``digits_digits``), matched whole; the OpenAPI patterns use it too.
COMMENT_ID_RE = re.compile(r"[0-9]{1,32}(?:_[0-9]{1,32})?")
_IGSID = IGSID_RE  # older private names, kept for code that imports them
_COMMENT_ID = COMMENT_ID_RE
IGSID_MESSAGE = "must be an Instagram-scoped user id (IGSID): 1 to 32 digits"
COMMENT_ID_MESSAGE = "must be a comment id: digits, or digits_digits"
ANY_ID_MESSAGE = "must be an IGSID (1 to 32 digits) or, for private_reply, a comment id (digits_digits)"


def kind_error(kind: object) -> str | None:
    """Why ``kind`` is not a send kind, or ``None``."""
    if isinstance(kind, str) and kind in SCHEMAS:
        return None
    return f"unknown kind {short(kind)}; expected one of {', '.join(KINDS)}"


def recipient_error(kind: str | None, recipient: object) -> str | None:
    """Why ``recipient`` cannot receive a send of ``kind``, or ``None``.

    The recipient of ``private_reply`` is a comment id (``"178…"`` or ``"178…_179…"``); of every other
    kind an IGSID. With ``kind=None`` (kind unknown) either shape passes.
    """
    if not isinstance(recipient, str):
        return "Not a valid string."
    if not recipient:
        return "must not be empty"
    if kind is None:
        return None if _COMMENT_ID.fullmatch(recipient) else ANY_ID_MESSAGE
    if kind == "private_reply":
        return None if _COMMENT_ID.fullmatch(recipient) else COMMENT_ID_MESSAGE
    return None if _IGSID.fullmatch(recipient) else IGSID_MESSAGE


def load_args(kind: str, args: object) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """Normalized ``args`` of a known ``kind`` and flat errors (one of the two is empty)."""
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        return None, {"args": [f"must be an object of {kind} arguments, not {type(args).__name__}"]}
    try:
        return INSTANCES[kind].load(args), {}
    except MarshmallowError as exc:
        return None, flatten_errors(exc.messages)


def validate_send(kind: str, recipient: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The normalized arguments of one send of ``kind`` to ``recipient`` (defaults filled).

    ``args`` are the keyword arguments of the kind's client method (``None`` = no arguments).

    Raises:
        ValidationError: ``.messages`` maps flat paths (``kind``, ``recipient``, ``args``,
            ``replies.3.title``) to messages.
    """
    errors: dict[str, list[str]] = {}
    bad_kind = kind_error(kind)
    if bad_kind:
        errors["kind"] = [bad_kind]
    bad_recipient = recipient_error(None if bad_kind else kind, recipient)
    if bad_recipient:
        errors["recipient"] = [bad_recipient]
    normalized: dict[str, Any] | None = None
    if not bad_kind:
        normalized, arg_errors = load_args(kind, args)
        errors.update(arg_errors)
    if errors:
        raise ValidationError(errors)
    return normalized or {}  # None only together with errors


def validate_sequence(recipient: str, steps: list[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``[(kind, normalized args), ...]`` of 1 to 50 steps sent in order to one recipient.

    Each step is ``{"kind": ..., **args}``, e.g. ``[{"kind": "typing", "seconds": 2},
    {"kind": "text", "text": "hi"}]``.

    Raises:
        ValidationError: with paths ``steps``, ``steps.1``, ``steps.1.kind``, ``steps.1.text``,
            ``recipient``.
    """
    errors: dict[str, list[str]] = {}
    if not isinstance(steps, (list, tuple)):
        raise ValidationError(
            {"steps": [f"must be a list of 1 to {MAX_STEPS} steps, not {type(steps).__name__}"]}
        )
    if not 1 <= len(steps) <= MAX_STEPS:
        raise ValidationError({"steps": [f"must have 1 to {MAX_STEPS} steps (got {len(steps)})"]})
    out: list[tuple[str, dict[str, Any]]] = []
    recipient_messages: list[str] = []
    for i, step in enumerate(steps):
        where = f"steps.{i}"
        if not isinstance(step, Mapping):
            errors[where] = [f"must be an object with a kind and its arguments, not {type(step).__name__}"]
            continue
        kind = step.get("kind")
        bad_kind = kind_error(kind) if "kind" in step else "Missing data for required field."
        if bad_kind is not None or not isinstance(kind, str):
            errors[f"{where}.kind"] = [bad_kind or "Not a valid string."]
            continue
        bad_recipient = recipient_error(kind, recipient)
        if bad_recipient and bad_recipient not in recipient_messages:
            recipient_messages.append(bad_recipient)
        normalized, arg_errors = load_args(kind, {k: v for k, v in step.items() if k != "kind"})
        if arg_errors:
            errors.update(prefixed(arg_errors, where))
        elif normalized is not None:
            out.append((kind, normalized))
    if recipient_messages:
        errors["recipient"] = recipient_messages
    if errors:
        raise ValidationError(errors)
    return out


def rate_class(kind: str, args: Mapping[str, Any] | None) -> str:
    """The limiter class of a send: ``"media"`` (audio or video), ``"private_reply"``, else ``"text"``.

    ``"text"`` covers text, links, reactions, stickers, typing, quick replies, templates, mark_seen,
    like_heart, media_share and image/file media (graph-api.md §4).

    Raises:
        ValidationError: for an unknown kind, or media arguments that are not an object.
    """
    bad_kind = kind_error(kind)
    if bad_kind:
        raise ValidationError({"kind": [bad_kind]})
    if kind == "private_reply":
        return "private_reply"
    if kind == "media":
        if not isinstance(args, Mapping):
            raise ValidationError({"args": ["must be an object of media arguments"]})
        return "media" if args.get("type") in ("audio", "video") else "text"
    return "text"
