"""Meta-like validation of a Send API body (graph-api.md §2): a :class:`SendSpec` or code 100.

Stricter than Meta where Meta silently ignores things a client should not send: unknown top-level
or ``message`` fields are refused, and a sender action carries nothing but ``recipient``,
``sender_action`` and (react/unreact) ``payload``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import GraphError, invalid

TOP_KEYS = frozenset(
    {
        "recipient",
        "message",
        "sender_action",
        "payload",
        "messaging_type",
        "tag",
        "reply_to",
        "notification_type",
    }
)
MESSAGE_KEYS = frozenset({"text", "attachment", "attachments", "quick_replies", "metadata"})
ACTIONS = frozenset({"typing_on", "typing_off", "mark_seen", "react", "unreact"})
MEDIA_TYPES = frozenset({"image", "video", "audio", "file"})
MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})


@dataclass(frozen=True)
class SendSpec:
    """What a valid body asks for."""

    kind: str
    recipient_id: str | None  # the IGSID (None for a private reply)
    comment_id: str | None  # a private reply's comment
    human_agent: bool  # HUMAN_AGENT tag: 7-day window
    text: str  # the text shown in the conversation ("" for non-text messages)
    is_action: bool  # a sender action (no message id)


def validate_send(body: Any) -> SendSpec:
    """Check ``body`` like Meta; raise :class:`GraphError` code 100 naming the first problem."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    unknown = sorted(set(body) - TOP_KEYS)
    if unknown:
        raise invalid(f"unknown field(s) {', '.join(unknown)}")
    if "recipient" not in body:
        raise GraphError(400, 100, "(#100) The parameter recipient is required")
    rid, cid = _recipient(body["recipient"])
    if ("message" in body) == ("sender_action" in body):
        raise invalid("exactly one of message or sender_action is required")
    if "sender_action" in body:
        return _action(body, rid, cid)
    human = _tag(body)
    if "payload" in body:
        raise invalid("payload is only allowed with sender_action react or unreact")
    if "reply_to" in body:
        reply_to = body["reply_to"]
        if not isinstance(reply_to, dict) or not _nonempty(reply_to.get("mid")) or len(reply_to) != 1:
            raise invalid('reply_to must be {"mid": MESSAGE_ID}')
    kind, text = _message(body["message"])
    if cid is not None:
        if kind != "text":
            raise invalid("a private reply (recipient.comment_id) must be a text message")
        kind = "private_reply"
    return SendSpec(kind, rid, cid, human, text, False)


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _ident(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value if _nonempty(value) else None


def _recipient(rec: Any) -> tuple[str | None, str | None]:
    if not isinstance(rec, dict) or len(rec) != 1 or not ({"id", "comment_id"} & set(rec)):
        raise invalid('recipient must be {"id": IGSID} or {"comment_id": COMMENT_ID}')
    key, value = next(iter(rec.items()))
    ident = _ident(value)
    if ident is None:
        raise invalid(f"recipient.{key} must be a non-empty string")
    return (ident, None) if key == "id" else (None, ident)


def _tag(body: dict[str, Any]) -> bool:
    mtype, tag = body.get("messaging_type"), body.get("tag")
    if mtype is not None and mtype not in MESSAGING_TYPES:
        raise invalid(f"messaging_type must be one of {', '.join(sorted(MESSAGING_TYPES))}")
    if tag is not None and tag != "HUMAN_AGENT":
        raise invalid(f"tag {tag!r} is not supported on Instagram (only HUMAN_AGENT)")
    if mtype == "MESSAGE_TAG" and tag is None:
        raise invalid("messaging_type MESSAGE_TAG requires a tag")
    return tag == "HUMAN_AGENT"


def _action(body: dict[str, Any], rid: str | None, cid: str | None) -> SendSpec:
    action = body["sender_action"]
    if action not in ACTIONS:
        raise invalid(f"sender_action must be one of {', '.join(sorted(ACTIONS))}")
    if cid is not None:
        raise invalid("a sender action needs recipient.id, not recipient.comment_id")
    extra = sorted(set(body) - {"recipient", "sender_action", "payload"})
    if extra or ("payload" in body and action not in ("react", "unreact")):
        raise invalid(f"sender_action {action} takes no other field ({', '.join(extra) or 'payload'})")
    if action in ("react", "unreact"):
        payload = body.get("payload")
        if not isinstance(payload, dict) or _ident(payload.get("message_id")) is None:
            raise invalid(f"sender_action {action} requires payload.message_id")
        if set(payload) - {"message_id", "reaction"}:
            raise invalid(f"payload of {action} takes only message_id and reaction")
        if "reaction" in payload and not _nonempty(payload["reaction"]):
            raise invalid("payload.reaction must be a non-empty string (e.g. love)")
    return SendSpec(action, rid, None, False, "", True)


def _text(value: Any, where: str, max_bytes: int = 1000) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"{where} must be a non-empty string")
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise invalid(f"{where} is {size} UTF-8 bytes; the limit is {max_bytes}")
    return value


def _chars(value: Any, where: str, limit: int, required: bool = True) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value:
        raise invalid(f"{where} must be a non-empty string")
    if len(value) > limit:
        raise invalid(f"{where} has {len(value)} characters; the limit is {limit}")


def _url(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise invalid(f"{where} must be a URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid(f"{where} is not a valid http(s) URL")


def _message(msg: Any) -> tuple[str, str]:
    if not isinstance(msg, dict):
        raise invalid("message must be an object")
    unknown = sorted(set(msg) - MESSAGE_KEYS)
    if unknown:
        raise invalid(f"unknown message field(s) {', '.join(unknown)}")
    present = [k for k in ("text", "attachment", "attachments") if k in msg]
    if len(present) != 1:
        raise invalid("message needs exactly one of text, attachment, attachments")
    if "quick_replies" in msg:
        if "text" not in msg:
            raise invalid("message.quick_replies requires message.text")
        _quick_replies(msg["quick_replies"])
    if "text" in msg:
        text = _text(msg["text"], "message.text")
        return ("quick_replies" if "quick_replies" in msg else "text"), text
    if "attachments" in msg:
        items = msg["attachments"]
        if not isinstance(items, list) or not 1 <= len(items) <= 10:
            raise invalid("message.attachments must be a list of 1 to 10 images")
        for i, att in enumerate(items):
            if not isinstance(att, dict) or att.get("type") != "image":
                raise invalid(f"message.attachments[{i}] must be an image attachment")
            _media_payload(att.get("payload"), f"message.attachments[{i}].payload")
        return "media", ""
    return _attachment(msg["attachment"]), ""


def _quick_replies(items: Any) -> None:
    if not isinstance(items, list) or not 1 <= len(items) <= 13:
        raise invalid("message.quick_replies must be a list of 1 to 13 items")
    for i, qr in enumerate(items):
        where = f"message.quick_replies[{i}]"
        ctype = qr.get("content_type") if isinstance(qr, dict) else None
        if ctype == "text":
            _chars(qr.get("title"), f"{where}.title", 20)
            _chars(qr.get("payload"), f"{where}.payload", 1000)
        elif ctype != "user_phone_number":
            raise invalid(f"{where}.content_type must be text or user_phone_number")


def _media_payload(payload: Any, where: str) -> None:
    if not isinstance(payload, dict):
        raise invalid(f"{where} must be an object with url or attachment_id")
    has_url, has_id = "url" in payload, "attachment_id" in payload
    if has_url == has_id:
        raise invalid(f"{where} needs exactly one of url or attachment_id")
    if has_url:
        _url(payload["url"], f"{where}.url")
    elif _ident(payload["attachment_id"]) is None:
        raise invalid(f"{where}.attachment_id must be a non-empty string")


def _attachment(att: Any) -> str:
    if not isinstance(att, dict):
        raise invalid("message.attachment must be an object")
    atype = att.get("type")
    if atype in MEDIA_TYPES:
        _media_payload(att.get("payload"), "message.attachment.payload")
        return "media"
    if atype == "like_heart":
        if att.get("payload"):
            raise invalid("a like_heart attachment takes no payload")
        return "like_heart"
    if atype == "MEDIA_SHARE":
        payload = att.get("payload")
        if not isinstance(payload, dict) or _ident(payload.get("id")) is None:
            raise invalid("a MEDIA_SHARE attachment requires payload.id")
        return "media_share"
    if atype == "template":
        return _template(att.get("payload"))
    raise invalid(
        "message.attachment.type must be one of image, video, audio, file, like_heart, MEDIA_SHARE, template"
    )


def _template(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise invalid("message.attachment.payload must be an object")
    ttype = payload.get("template_type")
    if ttype == "generic":
        elements = payload.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            raise invalid("generic template elements must be a list of 1 to 10 elements")
        for i, el in enumerate(elements):
            _element(el, f"elements[{i}]")
        return "generic_template"
    if ttype == "button":
        _chars(payload.get("text"), "button template text", 640)
        _buttons(payload.get("buttons"), "button template buttons", required=True)
        return "button_template"
    raise invalid("message.attachment.payload.template_type must be generic or button")


def _element(el: Any, where: str) -> None:
    if not isinstance(el, dict):
        raise invalid(f"{where} must be an object")
    unknown = sorted(set(el) - {"title", "subtitle", "image_url", "default_action", "buttons"})
    if unknown:
        raise invalid(f"{where} has unknown field(s) {', '.join(unknown)}")
    _chars(el.get("title"), f"{where}.title", 80)
    _chars(el.get("subtitle"), f"{where}.subtitle", 80, required=False)
    if len(el) < 2:
        raise invalid(f"{where} needs at least one field besides title")
    if "image_url" in el:
        _url(el["image_url"], f"{where}.image_url")
    if "default_action" in el:
        action = el["default_action"]
        if not isinstance(action, dict) or action.get("type") != "web_url" or "title" in action:
            raise invalid(f"{where}.default_action must be a web_url button without title")
        _url(action.get("url"), f"{where}.default_action.url")
    if "buttons" in el:
        _buttons(el["buttons"], f"{where}.buttons", required=False)


def _buttons(buttons: Any, where: str, required: bool) -> None:
    low = 1 if required else 0
    if not isinstance(buttons, list) or not low <= len(buttons) <= 3:
        raise invalid(f"{where} must be a list of {low} to 3 buttons")
    for i, button in enumerate(buttons):
        here = f"{where}[{i}]"
        btype = button.get("type") if isinstance(button, dict) else None
        if btype == "web_url":
            _url(button.get("url"), f"{here}.url")
        elif btype == "postback":
            _chars(button.get("payload"), f"{here}.payload", 1000)
        else:
            raise invalid(f"{here}.type must be web_url or postback")
        _chars(button.get("title"), f"{here}.title", 20)
