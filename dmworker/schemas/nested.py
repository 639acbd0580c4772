"""Objects nested in send arguments: buttons, quick replies, generic-template cards.

Optional fields are left out of the loaded object when absent (Meta expects them absent, not null).
Rules that depend on another field (a ``web_url`` button needs ``url``, a ``postback`` one ``payload``)
are schema validators that report on the field concerned (``buttons.0.url``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, validate, validates_schema

from .base import BaseSchema, Count, HttpUrl, ListOf, Str, chars, present

MAX_PAYLOAD_CHARS = 1000
MAX_TITLE_CHARS = 20


def _title(description: str = "Button label, 1 to 20 characters.") -> Str:
    return chars(1, MAX_TITLE_CHARS, description, required=True)


def _payload(description: str, **kwargs: Any) -> Str:
    return chars(1, MAX_PAYLOAD_CHARS, f"{description} 1 to {MAX_PAYLOAD_CHARS} characters.", **kwargs)


class ButtonSchema(BaseSchema):
    """A ``web_url`` button (``url`` + ``title``) or a ``postback`` button (``title`` + ``payload``)."""

    type = Str(
        required=True,
        validate=validate.OneOf(("web_url", "postback")),
        metadata={"description": "`web_url` opens `url`; `postback` sends `payload` back by webhook."},
    )
    title = _title()
    url = HttpUrl(metadata={"description": "http(s) URL opened by a `web_url` button (required for it)."})
    payload = _payload("Sent back in the postback webhook (required for a `postback` button).")

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _by_type(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        kind = data.get("type")
        if kind not in ("web_url", "postback"):
            return
        needs, refuses = ("url", "payload") if kind == "web_url" else ("payload", "url")
        errors: dict[str, list[str]] = {}
        if not present(original, needs):
            errors[needs] = [f"Missing data for required field (a {kind} button needs {needs})."]
        if present(original, refuses):
            errors[refuses] = [f"not allowed on a {kind} button"]
        if errors:
            raise MarshmallowError(errors)


class QuickReplySchema(BaseSchema):
    """``{content_type: "text", title, payload}`` or ``{content_type: "user_phone_number"}``."""

    content_type = Str(
        load_default="text",
        validate=validate.OneOf(("text", "user_phone_number")),
        metadata={"description": "`text` (default) or `user_phone_number`."},
    )
    title = chars(1, MAX_TITLE_CHARS, "Shown on the chip, 1 to 20 characters (text replies only).")
    payload = _payload("Sent back in the message webhook when tapped (text replies only).")

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _by_content_type(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        if data.get("content_type") == "text":
            for name in ("title", "payload"):
                if not present(original, name):
                    errors[name] = ["Missing data for required field."]
        elif data.get("content_type") == "user_phone_number":
            for name in present(original, "title", "payload"):
                errors[name] = ["not allowed with content_type 'user_phone_number'"]
        if errors:
            raise MarshmallowError(errors)


class DefaultActionSchema(BaseSchema):
    """What tapping a template element opens: a ``web_url`` button without a title."""

    type = Str(
        load_default="web_url",
        validate=validate.OneOf(("web_url",)),
        metadata={"description": "Always `web_url` (the default)."},
    )
    url = HttpUrl(required=True, metadata={"description": "http(s) URL opened when the element is tapped."})


class ElementSchema(BaseSchema):
    """One card of a generic template: a title and at least one more field."""

    title = chars(1, 80, "Card title, 1 to 80 characters.", required=True)
    subtitle = chars(1, 80, "Card subtitle, 1 to 80 characters.")
    image_url = HttpUrl(metadata={"description": "http(s) URL of the card image."})
    default_action = fields.Nested(
        DefaultActionSchema, metadata={"description": "Opened when the card is tapped."}
    )
    buttons = ListOf(
        fields.Nested(ButtonSchema), validate=Count(min=1, max=3), metadata={"description": "1 to 3 buttons."}
    )

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _not_only_title(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        if isinstance(original, Mapping) and not present(
            original, "subtitle", "image_url", "default_action", "buttons"
        ):
            raise MarshmallowError("needs at least one of subtitle, image_url, default_action, buttons")
