"""Pure builders of Send API bodies (``POST /{account}/messages``), exactly as graph-api.md §2.

Each builder returns a new JSON-ready dict and does no I/O, so the worker can build a body,
store or log it (bodies hold no token) and send it later. Builders check only the shape they
need to build a valid body and raise ``ValueError`` otherwise; content limits (text bytes,
title lengths, counts) are the producer schema's job.

:data:`BUILDERS` maps every client method name (``send_text`` ...) to its builder; the first
argument of every builder is the recipient IGSID, except :func:`private_reply_body` whose
first argument is the comment id.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Body = dict[str, Any]
MEDIA_TYPES = ("image", "video", "audio", "file")
MAX_IMAGES = 10


def _to(recipient: str) -> dict[str, str]:
    if not isinstance(recipient, str) or not recipient:
        raise ValueError(f"recipient must be a non-empty IGSID string, got {recipient!r}")
    return {"id": recipient}


def _message(recipient: str, message: Mapping[str, Any]) -> Body:
    return {"recipient": _to(recipient), "message": dict(message)}


def _action(recipient: str, action: str, payload: Mapping[str, Any] | None = None) -> Body:
    body: Body = {"recipient": _to(recipient), "sender_action": action}
    if payload is not None:
        body["payload"] = dict(payload)
    return body


def text_body(recipient: str, text: str, human_agent: bool = False, reply_to: str | None = None) -> Body:
    """A text message; ``human_agent`` adds the HUMAN_AGENT tag (7-day window); ``reply_to`` a mid."""
    body = _message(recipient, {"text": text})
    if human_agent:
        body["messaging_type"] = "MESSAGE_TAG"
        body["tag"] = "HUMAN_AGENT"
    if reply_to is not None:
        body["reply_to"] = {"mid": reply_to}
    return body


def media_body(
    recipient: str,
    type: str = "image",
    url: str | None = None,
    attachment_id: str | None = None,
    urls: Sequence[str] | None = None,
) -> Body:
    """One attachment by ``url`` or ``attachment_id``, or 2-10 images by ``urls`` (``attachments``)."""
    if type not in MEDIA_TYPES:
        raise ValueError(f"media type must be one of {', '.join(MEDIA_TYPES)}, got {type!r}")
    given = [name for name, v in (("url", url), ("attachment_id", attachment_id), ("urls", urls)) if v]
    if len(given) != 1:
        raise ValueError(f"give exactly one of url, attachment_id or urls (got {given or 'none'})")
    if urls:
        if isinstance(urls, str) or type != "image" or not 2 <= len(urls) <= MAX_IMAGES:
            raise ValueError(f"urls takes a list of 2 to {MAX_IMAGES} image URLs")
        return _message(recipient, {"attachments": [{"type": "image", "payload": {"url": u}} for u in urls]})
    payload = {"url": url} if url else {"attachment_id": attachment_id}
    return _message(recipient, {"attachment": {"type": type, "payload": payload}})


def like_heart_body(recipient: str) -> Body:
    """The like-heart sticker (an attachment without payload)."""
    return _message(recipient, {"attachment": {"type": "like_heart"}})


def media_share_body(recipient: str, post_id: str) -> Body:
    """Share one of the account's own posts."""
    return _message(recipient, {"attachment": {"type": "MEDIA_SHARE", "payload": {"id": post_id}}})


def quick_replies_body(recipient: str, text: str, replies: Sequence[Mapping[str, Any]]) -> Body:
    """Text with quick replies: ``content_type`` ``text`` (title, payload) or ``user_phone_number``."""
    if isinstance(replies, (str, Mapping)) or not replies:
        raise ValueError("replies must be a non-empty list of quick reply objects")
    body = _message(recipient, {"text": text, "quick_replies": [dict(r) for r in replies]})
    body["messaging_type"] = "RESPONSE"
    return body


def generic_template_body(recipient: str, elements: Sequence[Mapping[str, Any]]) -> Body:
    """A generic template (carousel) of 1-10 elements."""
    if isinstance(elements, (str, Mapping)) or not elements:
        raise ValueError("elements must be a non-empty list of template elements")
    payload = {"template_type": "generic", "elements": [dict(e) for e in elements]}
    return _message(recipient, {"attachment": {"type": "template", "payload": payload}})


def button_template_body(recipient: str, text: str, buttons: Sequence[Mapping[str, Any]]) -> Body:
    """A button template: text with 1-3 ``web_url`` or ``postback`` buttons."""
    if isinstance(buttons, (str, Mapping)) or not buttons:
        raise ValueError("buttons must be a non-empty list of buttons")
    payload = {"template_type": "button", "text": text, "buttons": [dict(b) for b in buttons]}
    return _message(recipient, {"attachment": {"type": "template", "payload": payload}})


def private_reply_body(comment_id: str, text: str) -> Body:
    """A private reply to a comment (one per comment, within 7 days)."""
    if not isinstance(comment_id, str) or not comment_id:
        raise ValueError(f"comment_id must be a non-empty string, got {comment_id!r}")
    return {"recipient": {"comment_id": comment_id}, "message": {"text": text}}


def react_body(recipient: str, message_id: str, reaction: str = "love") -> Body:
    """React to a message (``love`` is accepted everywhere; newer pages accept any emoji)."""
    if not reaction:
        raise ValueError("reaction must be a non-empty string")
    return _action(recipient, "react", {"message_id": message_id, "reaction": reaction})


def unreact_body(recipient: str, message_id: str) -> Body:
    """Remove the account's reaction from a message."""
    return _action(recipient, "unreact", {"message_id": message_id})


def typing_body(recipient: str, on: bool = True) -> Body:
    """The typing indicator on or off (nothing but recipient and sender_action)."""
    return _action(recipient, "typing_on" if on else "typing_off")


def mark_seen_body(recipient: str) -> Body:
    """Mark the conversation's last message as seen."""
    return _action(recipient, "mark_seen")


BUILDERS: Mapping[str, Callable[..., Body]] = {
    "send_text": text_body,
    "send_media": media_body,
    "send_like_heart": like_heart_body,
    "send_media_share": media_share_body,
    "send_quick_replies": quick_replies_body,
    "send_generic_template": generic_template_body,
    "send_button_template": button_template_body,
    "send_private_reply": private_reply_body,
    "react_to_message": react_body,
    "unreact_to_message": unreact_body,
    "send_typing_indicator": typing_body,
    "mark_seen": mark_seen_body,
}


@functools.lru_cache(maxsize=64)
def _signature(builder: Any) -> inspect.Signature:
    """A builder's signature, computed once (``inspect.signature`` costs more than building a body)."""
    return inspect.signature(builder)


def build_body(method_name: str, recipient: str, **kwargs: Any) -> Body:
    """The body of client method ``method_name`` (``recipient`` is the comment id for a private reply).

    Raises:
        ValueError: for an unknown method name or arguments it cannot take.
    """
    try:
        builder = BUILDERS[method_name]
    except KeyError:
        raise ValueError(f"unknown messaging method {method_name!r}; one of {', '.join(BUILDERS)}") from None
    try:
        _signature(builder).bind(recipient, **kwargs)
    except TypeError as exc:  # unknown, duplicate or missing arguments
        raise ValueError(f"{method_name}: {exc}") from None
    return builder(recipient, **kwargs)
