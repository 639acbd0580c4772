"""One schema per send kind: its fields are exactly the keyword arguments of the client method.

Limits follow the wire contract (``graph-api.md`` §2). Loading returns the *normalized* arguments:
every top-level argument of the kind is present, defaults filled (``human_agent=False``,
``reply_to=None``, ``reaction="love"``, ``on=True``, ``seconds=0.0``, ``content_type="text"`` …), so a
worker can call ``getattr(client, METHOD_OF_KIND[kind])(recipient, **args)``. Optional fields *inside*
nested objects (a button, a template element) are left out when absent, as Meta expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, validate, validates_schema

from .base import (
    BaseSchema,
    Bool,
    Count,
    Float,
    HttpUrl,
    ListOf,
    Str,
    chars,
    digits,
    opaque_id,
    present,
    utf8_text,
)
from .nested import ButtonSchema, ElementSchema, QuickReplySchema

MAX_TEXT_BYTES = 1000
MAX_MESSAGE_ID_CHARS = 512
MAX_TYPING_PAUSE_S = 20.0

MEDIA_TYPES = ("image", "video", "audio", "file")
REACTIONS = ("love", "like", "laugh", "wow", "sad", "angry")
MAX_EMOJI_CHARS = 8


def _message_id(description: str, **kwargs: Any) -> Str:
    return opaque_id(MAX_MESSAGE_ID_CHARS, description, **kwargs)


class TextArgs(BaseSchema):
    """``send_text``: a text message."""

    text = utf8_text(MAX_TEXT_BYTES, "Message text.", required=True)
    human_agent = Bool(
        load_default=False,
        metadata={
            "description": "Send with the HUMAN_AGENT tag (7-day window; needs the Human Agent permission)."
        },
    )
    reply_to = _message_id("Id (mid) of the message this one replies to.", load_default=None)


class MediaArgs(BaseSchema):
    """``send_media``: an attachment given by exactly one of ``url``, ``attachment_id`` or ``urls``."""

    type = Str(
        required=True,
        validate=validate.OneOf(MEDIA_TYPES),
        metadata={"description": "image, video, audio or file."},
    )
    url = HttpUrl(load_default=None, metadata={"description": "http(s) URL of the file."})
    attachment_id = digits(64, "Id of an attachment uploaded before (digits).", load_default=None)
    urls = ListOf(
        HttpUrl(),
        load_default=None,
        validate=Count(min=2, max=10),
        metadata={"description": "2 to 10 http(s) image URLs sent together (type image only)."},
    )

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _exactly_one_source(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        if not isinstance(original, Mapping):
            return
        given = present(original, "url", "attachment_id", "urls")
        errors: dict[str, list[str]] = {}
        if not given:
            errors["url"] = ["one of url, attachment_id or urls is required"]
        for name in given[1:]:
            errors[name] = [f"give only one of url, attachment_id, urls (got {', '.join(given)})"]
        if "urls" in given and "type" in data and data["type"] != "image":
            errors.setdefault("urls", []).append(f"only allowed with type 'image' (got {data['type']!r})")
        if errors:
            raise MarshmallowError(errors)


class LikeHeartArgs(BaseSchema):
    """``send_like_heart``: the heart sticker (no arguments)."""


class MediaShareArgs(BaseSchema):
    """``send_media_share``: share one of the account's own posts."""

    post_id = digits(64, "Id of the account's own Instagram post (digits).", required=True)


class QuickRepliesArgs(BaseSchema):
    """``send_quick_replies``: a text with 1 to 13 quick-reply chips."""

    text = utf8_text(MAX_TEXT_BYTES, "Message text.", required=True)
    replies = ListOf(
        fields.Nested(QuickReplySchema),
        required=True,
        validate=Count(min=1, max=13),
        metadata={"description": "1 to 13 quick replies."},
    )


class GenericTemplateArgs(BaseSchema):
    """``send_generic_template``: a carousel of 1 to 10 cards."""

    elements = ListOf(
        fields.Nested(ElementSchema),
        required=True,
        validate=Count(min=1, max=10),
        metadata={"description": "1 to 10 cards."},
    )


class ButtonTemplateArgs(BaseSchema):
    """``send_button_template``: a text with 1 to 3 buttons."""

    text = chars(1, 640, "Message text, 1 to 640 characters.", required=True)
    buttons = ListOf(
        fields.Nested(ButtonSchema),
        required=True,
        validate=Count(min=1, max=3),
        metadata={"description": "1 to 3 buttons."},
    )


class PrivateReplyArgs(BaseSchema):
    """``send_private_reply``: the one private message allowed per comment (recipient = comment id)."""

    text = utf8_text(MAX_TEXT_BYTES, "Message text.", required=True)


def _reaction(value: str) -> str:
    """One of the six named reactions, or an emoji: 1 to 8 characters, at least one of them not
    ASCII, no ASCII letter, no whitespace or control character."""
    if value in REACTIONS:
        return value
    if (
        not value
        or len(value) > MAX_EMOJI_CHARS
        or value.isascii()
        or any(c.isascii() and c.isalpha() for c in value)
        or any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
    ):
        raise MarshmallowError(
            f"must be one of {', '.join(REACTIONS)} or a single emoji (1 to {MAX_EMOJI_CHARS} characters, "
            "no ASCII letters or spaces)"
        )
    return value


class ReactArgs(BaseSchema):
    """``react_to_message``: react to a message of the recipient."""

    message_id = _message_id("Id (mid) of the message to react to.", required=True)
    reaction = Str(
        load_default="love",
        validate=_reaction,
        metadata={
            "description": "love (default), like, laugh, wow, sad, angry, or one emoji (at most 8 "
            "characters, no ASCII letters or spaces; only Meta's newest API accepts any emoji).",
            "maxLength": MAX_EMOJI_CHARS,
        },
    )


class UnreactArgs(BaseSchema):
    """``unreact_to_message``: remove the account's reaction."""

    message_id = _message_id("Id (mid) of the message to unreact to.", required=True)


class TypingArgs(BaseSchema):
    """``send_typing_indicator``: typing_on / typing_off, optionally holding the recipient's lane."""

    on = Bool(load_default=True, metadata={"description": "true: typing_on (default); false: typing_off."})
    seconds = Float(
        load_default=0.0,
        validate=validate.Range(min=0.0, max=MAX_TYPING_PAUSE_S),
        metadata={
            "description": "dmworker only (not sent to Meta): pause this many seconds (0 to 20) "
            "after typing_on before the next job of the same recipient. Only with on=true."
        },
    )

    @validates_schema(skip_on_field_errors=False)
    def _pause_after_typing_on(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("on") is False and data.get("seconds", 0.0) > 0:
            raise MarshmallowError({"seconds": ["only allowed with on=true (a pause after typing_on)"]})


class MarkSeenArgs(BaseSchema):
    """``mark_seen``: mark the conversation as seen (no arguments)."""


SCHEMAS: dict[str, type[BaseSchema]] = {
    "text": TextArgs,
    "media": MediaArgs,
    "like_heart": LikeHeartArgs,
    "media_share": MediaShareArgs,
    "quick_replies": QuickRepliesArgs,
    "generic_template": GenericTemplateArgs,
    "button_template": ButtonTemplateArgs,
    "private_reply": PrivateReplyArgs,
    "react": ReactArgs,
    "unreact": UnreactArgs,
    "typing": TypingArgs,
    "mark_seen": MarkSeenArgs,
}
KINDS: tuple[str, ...] = tuple(SCHEMAS)
METHOD_OF_KIND: dict[str, str] = {
    "text": "send_text",
    "media": "send_media",
    "like_heart": "send_like_heart",
    "media_share": "send_media_share",
    "quick_replies": "send_quick_replies",
    "generic_template": "send_generic_template",
    "button_template": "send_button_template",
    "private_reply": "send_private_reply",
    "react": "react_to_message",
    "unreact": "unreact_to_message",
    "typing": "send_typing_indicator",
    "mark_seen": "mark_seen",
}

#: One loaded schema instance per kind (marshmallow schemas keep no per-call state).
INSTANCES: dict[str, BaseSchema] = {kind: cls() for kind, cls in SCHEMAS.items()}
