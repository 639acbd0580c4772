"""dmworker.schemas: one schema per send kind, the stored job envelope, flat error paths.

Property-based (hypothesis): valid arguments of every kind load and survive ``dump_job`` /
``load_job``; arbitrary values thrown at the public functions raise ``ValidationError`` or succeed,
never another exception.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema

from dmworker.errors import ValidationError
from dmworker.schemas import (
    KINDS,
    METHOD_OF_KIND,
    SCHEMA_VERSION,
    SCHEMAS,
    ButtonSchema,
    DefaultActionSchema,
    ElementSchema,
    JobSchema,
    QuickReplySchema,
    dump_job,
    load_job,
    rate_class,
    validate_job,
    validate_send,
    validate_sequence,
)

IGSID = "17841400000000001"
ACCOUNT = "17841400000000002"
COMMENT = "17858893269000001_17858893269000002"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ strategies
igsids = st.from_regex(r"[0-9]{1,32}", fullmatch=True)
comment_ids = st.one_of(igsids, st.from_regex(r"[0-9]{1,20}_[0-9]{1,20}", fullmatch=True))
message_ids = st.from_regex(r"[A-Za-z0-9_=-]{1,120}", fullmatch=True)
digit_ids = st.from_regex(r"[0-9]{1,30}", fullmatch=True)
# at most 250 characters = at most 1000 UTF-8 bytes; plus the exact byte boundaries
texts = st.one_of(
    st.text(min_size=1, max_size=250),
    st.sampled_from(["x" * 1000, "é" * 500, "€" * 333 + "x", "😀" * 250, " ", "line\nbreak"]),
)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,12}[a-z0-9]\.(com|org|net|io|co\.uk)", fullmatch=True)
paths = st.from_regex(r"(/[A-Za-z0-9._~%-]{0,12}){0,3}(\?[a-z]{1,5}=[A-Za-z0-9]{0,8})?", fullmatch=True)
urls = st.builds(lambda s, h, p: f"{s}://{h}{p}", st.sampled_from(["http", "https", "HTTPS"]), hosts, paths)


def chars(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.one_of(st.text(min_size=lo, max_size=min(hi, 40)), st.just("t" * hi))


web_url_buttons = st.fixed_dictionaries({"type": st.just("web_url"), "url": urls, "title": chars(1, 20)})
postback_buttons = st.fixed_dictionaries(
    {"type": st.just("postback"), "title": chars(1, 20), "payload": chars(1, 1000)}
)
buttons = st.one_of(web_url_buttons, postback_buttons)
quick_replies = st.one_of(
    st.fixed_dictionaries(
        {"title": chars(1, 20), "payload": chars(1, 1000)}, optional={"content_type": st.just("text")}
    ),
    st.just({"content_type": "user_phone_number"}),
)
default_actions = st.fixed_dictionaries({"url": urls}, optional={"type": st.just("web_url")})
_ELEMENT_EXTRAS = {
    "subtitle": chars(1, 80),
    "image_url": urls,
    "default_action": default_actions,
    "buttons": st.lists(buttons, min_size=1, max_size=3),
}
elements = st.builds(
    lambda title, extras, first: {"title": title, first[0]: first[1], **extras},
    chars(1, 80),
    st.fixed_dictionaries({}, optional=_ELEMENT_EXTRAS),
    st.sampled_from(sorted(_ELEMENT_EXTRAS)).flatmap(lambda k: st.tuples(st.just(k), _ELEMENT_EXTRAS[k])),
)
emoji = st.sampled_from(["❤️", "😂", "👍", "🔥", "😮", "😢", "😡", "1️⃣", "🇫🇷", "👨‍👩‍👧"])
media = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["image", "video", "audio", "file"]), "url": urls}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["image", "video", "audio", "file"]), "attachment_id": digit_ids}
    ),
    st.fixed_dictionaries({"type": st.just("image"), "urls": st.lists(urls, min_size=2, max_size=10)}),
)

VALID_ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "text": st.fixed_dictionaries(
        {"text": texts}, optional={"human_agent": st.booleans(), "reply_to": st.none() | message_ids}
    ),
    "media": media,
    "like_heart": st.just({}),
    "media_share": st.fixed_dictionaries({"post_id": digit_ids}),
    "quick_replies": st.fixed_dictionaries(
        {"text": texts, "replies": st.lists(quick_replies, min_size=1, max_size=13)}
    ),
    "generic_template": st.fixed_dictionaries({"elements": st.lists(elements, min_size=1, max_size=10)}),
    "button_template": st.fixed_dictionaries(
        {"text": chars(1, 640), "buttons": st.lists(buttons, min_size=1, max_size=3)}
    ),
    "private_reply": st.fixed_dictionaries({"text": texts}),
    "react": st.fixed_dictionaries(
        {"message_id": message_ids},
        optional={
            "reaction": st.one_of(st.sampled_from(["love", "like", "laugh", "wow", "sad", "angry"]), emoji)
        },
    ),
    "unreact": st.fixed_dictionaries({"message_id": message_ids}),
    "typing": st.one_of(
        st.fixed_dictionaries(
            {}, optional={"on": st.just(True), "seconds": st.floats(0, 20) | st.integers(0, 20)}
        ),
        st.fixed_dictionaries({"on": st.just(False)}, optional={"seconds": st.just(0)}),
    ),
    "mark_seen": st.just({}),
}
assert set(VALID_ARGS) == set(KINDS)

sends = st.sampled_from(KINDS).flatmap(lambda kind: st.tuples(st.just(kind), VALID_ARGS[kind]))

# The arguments of each kind after normalization: exactly the client method's keyword arguments.
DEFAULTS: dict[str, dict[str, Any]] = {
    "text": {"human_agent": False, "reply_to": None},
    "media": {"url": None, "attachment_id": None, "urls": None},
    "like_heart": {},
    "media_share": {},
    "quick_replies": {},
    "generic_template": {},
    "button_template": {},
    "private_reply": {},
    "react": {"reaction": "love"},
    "unreact": {},
    "typing": {"on": True, "seconds": 0.0},
    "mark_seen": {},
}
ARGUMENTS = {
    "text": {"text", "human_agent", "reply_to"},
    "media": {"type", "url", "attachment_id", "urls"},
    "like_heart": set(),
    "media_share": {"post_id"},
    "quick_replies": {"text", "replies"},
    "generic_template": {"elements"},
    "button_template": {"text", "buttons"},
    "private_reply": {"text"},
    "react": {"message_id", "reaction"},
    "unreact": {"message_id"},
    "typing": {"on", "seconds"},
    "mark_seen": set(),
}


def expected(kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """What validate_send must return for valid ``args``: defaults filled, nothing else changed."""
    out = {**DEFAULTS[kind], **args}
    if kind == "typing":
        out["seconds"] = float(out["seconds"])
    if kind == "quick_replies":
        out["replies"] = [{"content_type": "text", **r} for r in out["replies"]]
    if kind == "generic_template":
        out["elements"] = [
            {**e, "default_action": {"type": "web_url", **e["default_action"]}}
            if "default_action" in e
            else e
            for e in out["elements"]
        ]
    return out


def recipient_for(kind: str) -> str:
    return COMMENT if kind == "private_reply" else IGSID


def make_job(kind: str, args: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    job = {
        "v": SCHEMA_VERSION,
        "id": f"{ACCOUNT}.01JD7ZQ4",
        "account": ACCOUNT,
        "recipient": recipient_for(kind),
        "kind": kind,
        "args": dict(args),
        "created_ms": 1_764_064_800_000,
        "due_ms": None,
        "key": None,
        "cancel_on_reply": False,
        "idem": None,
        "seq": None,
    }
    job.update(overrides)
    return job


def errors_of(fn: Any, *args: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        fn(*args)
    return info.value.messages


# ----------------------------------------------------------------------------------- the API surface
def test_kinds_methods_and_schemas_line_up() -> None:
    assert SCHEMA_VERSION == 1
    assert KINDS == tuple(METHOD_OF_KIND) == tuple(SCHEMAS)
    assert METHOD_OF_KIND["react"] == "react_to_message"
    assert METHOD_OF_KIND["typing"] == "send_typing_indicator"
    assert METHOD_OF_KIND["mark_seen"] == "mark_seen"
    for kind, schema in SCHEMAS.items():
        assert issubclass(schema, Schema)
        assert set(schema().fields) == ARGUMENTS[kind], kind


def test_every_field_is_described_for_openapi() -> None:
    for schema in [
        *SCHEMAS.values(),
        ButtonSchema,
        QuickReplySchema,
        ElementSchema,
        DefaultActionSchema,
        JobSchema,
    ]:
        for name, field in schema().fields.items():
            assert field.metadata.get("description"), f"{schema.__name__}.{name}"


def test_openapi_document_builds() -> None:
    apispec = pytest.importorskip("apispec")
    from apispec.ext.marshmallow import MarshmallowPlugin

    spec = apispec.APISpec(
        title="dmworker", version="1", openapi_version="3.0.3", plugins=[MarshmallowPlugin()]
    )
    for schema in SCHEMAS.values():
        spec.components.schema(schema.__name__, schema=schema)
    doc = spec.to_dict()["components"]["schemas"]
    assert doc["TextArgs"]["additionalProperties"] is False
    assert doc["QuickRepliesArgs"]["properties"]["replies"]["maxItems"] == 13
    assert doc["MediaArgs"]["properties"]["type"]["enum"] == ["image", "video", "audio", "file"]
    assert doc["Button"]["properties"]["title"]["maxLength"] == 20


# --------------------------------------------------------------------------------------- valid input
@VALID
@given(sends)
def test_valid_args_load_with_defaults_filled(send: tuple[str, dict[str, Any]]) -> None:
    kind, args = send
    normalized = validate_send(kind, recipient_for(kind), args)
    assert normalized == expected(kind, args)
    assert set(normalized) == ARGUMENTS[kind]
    # normalizing is idempotent: the worker validates the stored args again
    assert validate_send(kind, recipient_for(kind), normalized) == normalized


@VALID
@given(sends, st.booleans())
def test_jobs_round_trip(send: tuple[str, dict[str, Any]], as_bytes: bool) -> None:
    kind, args = send
    job = make_job(kind, validate_send(kind, recipient_for(kind), args))
    raw = dump_job(job)
    assert isinstance(raw, str)
    assert "\n" not in raw and ": " not in raw.replace('": "', "")  # compact separators
    assert load_job(raw.encode() if as_bytes else raw) == job


@VALID
@given(
    sends,
    st.fixed_dictionaries(
        {},
        optional={
            "due_ms": st.none() | st.integers(0, 2**53 - 1),
            "key": st.none() | st.text(min_size=1, max_size=30).filter(str.strip).filter(str.isprintable),
            "cancel_on_reply": st.booleans(),
            "idem": st.none() | st.from_regex(r"[a-z0-9:-]{1,40}", fullmatch=True),
            "seq": st.none() | st.uuids().map(str),
        },
    ),
)
def test_jobs_with_optional_fields_round_trip(
    send: tuple[str, dict[str, Any]], extra: dict[str, Any]
) -> None:
    kind, args = send
    job = {
        k: v
        for k, v in make_job(kind, args).items()
        if k not in ("due_ms", "key", "cancel_on_reply", "idem", "seq")
    }
    job.update(extra)
    loaded = load_job(dump_job(job))
    assert loaded == validate_job(job)
    assert loaded["args"] == expected(kind, args)
    assert loaded["cancel_on_reply"] is extra.get("cancel_on_reply", False)
    assert load_job(dump_job(loaded)) == loaded


def test_dump_job_fills_the_version_and_is_compact_json() -> None:
    job = make_job("text", {"text": "hi"})
    del job["v"]
    raw = dump_job(job)
    assert raw.startswith('{"v":1,')
    assert json.loads(raw)["args"] == {"text": "hi", "human_agent": False, "reply_to": None}
    assert "é" in dump_job(make_job("text", {"text": "é"}))  # UTF-8, not \u escapes


@VALID
@given(st.lists(sends, min_size=1, max_size=6))
def test_sequences_load_in_order(steps: list[tuple[str, dict[str, Any]]]) -> None:
    steps = [(k, a) for k, a in steps if k != "private_reply"] or [("typing", {"seconds": 2})]
    loaded = validate_sequence(IGSID, [{"kind": k, **a} for k, a in steps])
    assert loaded == [(k, expected(k, a)) for k, a in steps]


def test_examples_from_the_brief() -> None:
    assert validate_sequence(IGSID, [{"kind": "typing", "seconds": 2}, {"kind": "text", "text": "hi"}]) == [
        ("typing", {"on": True, "seconds": 2.0}),
        ("text", {"text": "hi", "human_agent": False, "reply_to": None}),
    ]
    assert validate_send("react", IGSID, {"message_id": "aWdfZAG1"}) == {
        "message_id": "aWdfZAG1",
        "reaction": "love",
    }
    assert validate_send("like_heart", IGSID, {}) == {}
    assert validate_send("mark_seen", IGSID, None) == {}
    assert validate_send("private_reply", "17858893269000001", {"text": "thanks!"}) == {"text": "thanks!"}
    assert validate_send("text", IGSID, MappingProxyType({"text": "hi"}))["text"] == "hi"
    assert (
        validate_send(
            "media", IGSID, {"type": "audio", "url": "https://cdn.example.com/a.m4a", "urls": None}
        )["url"]
        == "https://cdn.example.com/a.m4a"
    )


def test_text_limit_counts_utf8_bytes_not_characters() -> None:
    assert validate_send("text", IGSID, {"text": "é" * 500})["text"] == "é" * 500  # 1000 bytes
    assert errors_of(validate_send, "text", IGSID, {"text": "é" * 501}) == {
        "text": ["must be 1 to 1000 UTF-8 bytes (got 1002)"]
    }
    with pytest.raises(ValidationError, match=r"text: must be 1 to 1000 UTF-8 bytes \(got 1003\)"):
        validate_send("private_reply", IGSID, {"text": "x" + "€" * 334})
    assert errors_of(
        validate_send,
        "quick_replies",
        IGSID,
        {"text": "😀" * 251, "replies": [{"content_type": "user_phone_number"}]},
    ) == {"text": ["must be 1 to 1000 UTF-8 bytes (got 1004)"]}
    assert errors_of(validate_send, "text", IGSID, {"text": ""}) == {
        "text": ["must be 1 to 1000 UTF-8 bytes (got 0)"]
    }


# ------------------------------------------------------------------------------------- invalid input
_QR = {"content_type": "text", "title": "Yes", "payload": "YES"}
_WEB = {"type": "web_url", "url": "https://shop.example.com/p/1", "title": "View"}
_POST = {"type": "postback", "title": "Start over", "payload": "RESTART"}
_EL = {"title": "Product", "subtitle": "$29.99"}

INVALID: list[tuple[str, Any, str, str]] = [
    # kind, args, the one expected error path, a fragment of its message
    ("text", {"text": "é" * 501}, "text", "UTF-8 bytes (got 1002)"),
    ("text", {"text": 5}, "text", "Not a valid string."),
    ("text", {"text": b"hi"}, "text", "Not a valid string."),
    ("text", {"text": "\ud800"}, "text", "lone surrogate"),
    ("text", {}, "text", "Missing data for required field."),
    ("text", {"text": "hi", "human_agent": "true"}, "human_agent", "Not a valid boolean."),
    ("text", {"text": "hi", "human_agent": 1}, "human_agent", "Not a valid boolean."),
    ("text", {"text": "hi", "reply_to": ""}, "reply_to", "must not be empty"),
    ("text", {"text": "hi", "reply_to": "m id"}, "reply_to", "whitespace"),
    ("text", {"text": "hi", "tag": "HUMAN_AGENT"}, "tag", "Unknown field."),
    ("text", {"text": "hi", "access_token": "IGAA"}, "access_token", "Unknown field."),
    ("media", {"type": "image"}, "url", "one of url, attachment_id or urls is required"),
    ("media", {"type": "gif", "url": "https://a.example.com/x.gif"}, "type", "Must be one of"),
    ("media", {"type": "image", "url": "ftp://files.example.com/x.png"}, "url", "http or https"),
    ("media", {"type": "image", "url": "javascript:alert(1)"}, "url", "http or https"),
    ("media", {"type": "image", "url": "https://"}, "url", "http or https"),
    ("media", {"type": "image", "url": "/relative/x.png"}, "url", "http or https"),
    (
        "media",
        {"type": "image", "url": "https://a.example.com/" + "x" * 5000},
        "url",
        "Longer than maximum length 4096.",
    ),
    ("media", {"type": "file", "attachment_id": ""}, "attachment_id", "must not be empty"),
    ("media", {"type": "file", "attachment_id": "12a"}, "attachment_id", "digits"),
    ("media", {"type": "file", "attachment_id": 123}, "attachment_id", "Not a valid string."),
    (
        "media",
        {"type": "image", "url": "https://a.example.com/1.png", "attachment_id": "1"},
        "attachment_id",
        "give only one of",
    ),
    (
        "media",
        {"type": "video", "urls": ["https://a.example.com/1", "https://a.example.com/2"]},
        "urls",
        "type 'image'",
    ),
    (
        "media",
        {"type": "image", "urls": ["https://a.example.com/1"]},
        "urls",
        "must have 2 to 10 items (got 1)",
    ),
    ("media", {"type": "image", "urls": ["https://a.example.com/1"] * 11}, "urls", "(got 11)"),
    (
        "media",
        {"type": "image", "urls": ["https://a.example.com/1", "ftp://a.example.com/2"]},
        "urls.1",
        "http or https",
    ),
    (
        "media",
        {"type": "image", "urls": {"https://a.example.com/1", "https://a.example.com/2"}},
        "urls",
        "Not a valid list.",
    ),
    ("like_heart", {"heart": True}, "heart", "Unknown field."),
    ("media_share", {"post_id": ""}, "post_id", "must not be empty"),
    ("media_share", {"post_id": "17895695668004550\n"}, "post_id", "digits"),
    ("media_share", {"post_id": "١٢٣"}, "post_id", "digits"),  # Arabic-Indic digits are not ASCII digits
    ("quick_replies", {"text": "Pick", "replies": [_QR] * 14}, "replies", "must have 1 to 13 items (got 14)"),
    ("quick_replies", {"text": "Pick", "replies": []}, "replies", "(got 0)"),
    (
        "quick_replies",
        {"text": "Pick", "replies": [_QR] * 3 + [{**_QR, "title": "t" * 21}]},
        "replies.3.title",
        "Longer than maximum length 20.",
    ),
    (
        "quick_replies",
        {"text": "Pick", "replies": [{**_QR, "title": ""}]},
        "replies.0.title",
        "Shorter than minimum length 1.",
    ),
    (
        "quick_replies",
        {"text": "Pick", "replies": [{**_QR, "payload": "p" * 1001}]},
        "replies.0.payload",
        "maximum length 1000",
    ),
    ("quick_replies", {"text": "Pick", "replies": [{"title": "Yes"}]}, "replies.0.payload", "Missing data"),
    (
        "quick_replies",
        {"text": "Pick", "replies": [{"content_type": "location"}]},
        "replies.0.content_type",
        "Must be one of",
    ),
    (
        "quick_replies",
        {"text": "Pick", "replies": [{"content_type": "user_phone_number", "payload": "x"}]},
        "replies.0.payload",
        "not allowed",
    ),
    ("quick_replies", {"text": "Pick", "replies": [_QR, "Yes"]}, "replies.1", "Must be an object."),
    (
        "quick_replies",
        {"text": "Pick", "replies": [{**_QR, "image_url": "https://a.example.com/i.png"}]},
        "replies.0.image_url",
        "Unknown field.",
    ),
    ("generic_template", {"elements": [_EL] * 11}, "elements", "(got 11)"),
    ("generic_template", {"elements": [{"title": "Only a title"}]}, "elements.0", "at least one of"),
    ("generic_template", {"elements": [{"subtitle": "no title"}]}, "elements.0.title", "Missing data"),
    ("generic_template", {"elements": [{**_EL, "title": "t" * 81}]}, "elements.0.title", "maximum length 80"),
    (
        "generic_template",
        {"elements": [_EL, {**_EL, "subtitle": "s" * 81}]},
        "elements.1.subtitle",
        "maximum length 80",
    ),
    (
        "generic_template",
        {"elements": [{**_EL, "image_url": "ftp://x.example.com/i.png"}]},
        "elements.0.image_url",
        "http or https",
    ),
    ("generic_template", {"elements": [{**_EL, "buttons": [_WEB] * 4}]}, "elements.0.buttons", "(got 4)"),
    (
        "generic_template",
        {
            "elements": [
                {**_EL, "default_action": {"type": "web_url", "url": "https://a.example.com", "title": "x"}}
            ]
        },
        "elements.0.default_action.title",
        "Unknown field.",
    ),
    (
        "generic_template",
        {"elements": [{**_EL, "default_action": {"type": "postback", "url": "https://a.example.com"}}]},
        "elements.0.default_action.type",
        "Must be one of",
    ),
    (
        "generic_template",
        {"elements": [{**_EL, "buttons": [_WEB, {**_POST, "type": "phone_number"}]}]},
        "elements.0.buttons.1.type",
        "Must be one of",
    ),
    (
        "button_template",
        {"text": "Choose", "buttons": [_WEB, _POST, _WEB, _POST]},
        "buttons",
        "must have 1 to 3 items (got 4)",
    ),
    ("button_template", {"text": "t" * 641, "buttons": [_WEB]}, "text", "maximum length 640"),
    (
        "button_template",
        {"text": "Choose", "buttons": [{**_WEB, "title": "t" * 21}]},
        "buttons.0.title",
        "maximum length 20",
    ),
    (
        "button_template",
        {"text": "Choose", "buttons": [{**_WEB, "url": "javascript:alert(1)"}]},
        "buttons.0.url",
        "http or https",
    ),
    (
        "button_template",
        {"text": "Choose", "buttons": [{"type": "web_url", "title": "Go"}]},
        "buttons.0.url",
        "Missing data",
    ),
    (
        "button_template",
        {"text": "Choose", "buttons": [{**_POST, "url": "https://a.example.com"}]},
        "buttons.0.url",
        "not allowed",
    ),
    (
        "button_template",
        {"text": "Choose", "buttons": [{**_POST, "payload": ""}]},
        "buttons.0.payload",
        "Shorter than",
    ),
    (
        "button_template",
        {"text": "Choose", "buttons": [{"type": "call", "title": "Call", "payload": "+1"}]},
        "buttons.0.type",
        "Must be one of",
    ),
    (
        "button_template",
        {"text": "Choose", "buttons": [{"title": "x", "payload": "p"}]},
        "buttons.0.type",
        "Missing data",
    ),
    ("private_reply", {"text": "x" * 1001}, "text", "(got 1001)"),
    ("react", {"message_id": ""}, "message_id", "must not be empty"),
    ("react", {"message_id": "   "}, "message_id", "whitespace"),
    ("react", {"message_id": "mid", "reaction": "smile"}, "reaction", "must be one of love"),
    ("react", {"message_id": "mid", "reaction": ""}, "reaction", "must be one of love"),
    ("react", {"message_id": "mid", "reaction": "123"}, "reaction", "must be one of love"),
    ("react", {"message_id": "mid", "reaction": "😀" * 9}, "reaction", "must be one of love"),
    ("react", {"message_id": "mid", "reaction": "❤ x"}, "reaction", "must be one of love"),
    ("react", {"reaction": "love"}, "message_id", "Missing data"),
    ("unreact", {"message_id": None}, "message_id", "Field may not be null."),
    ("unreact", {"message_id": "mid", "reaction": "love"}, "reaction", "Unknown field."),
    ("typing", {"seconds": 21}, "seconds", "less than or equal to 20"),
    ("typing", {"seconds": -1}, "seconds", "greater than or equal to 0"),
    ("typing", {"seconds": "2"}, "seconds", "Not a valid number."),
    ("typing", {"seconds": True}, "seconds", "Not a valid number."),
    ("typing", {"seconds": float("nan")}, "seconds", "not permitted"),
    ("typing", {"seconds": float("inf")}, "seconds", "not permitted"),
    ("typing", {"on": False, "seconds": 2}, "seconds", "only allowed with on=true"),
    ("typing", {"on": "off"}, "on", "Not a valid boolean."),
    ("mark_seen", {"seen": True}, "seen", "Unknown field."),
]


@pytest.mark.parametrize(("kind", "args", "path", "fragment"), INVALID)
def test_invalid_args_name_the_field(kind: str, args: Any, path: str, fragment: str) -> None:
    messages = errors_of(validate_send, kind, recipient_for(kind), args)
    assert list(messages) == [path], messages
    assert any(fragment in m for m in messages[path]), messages


@pytest.mark.parametrize(("kind", "args", "path", "fragment"), INVALID)
def test_invalid_args_in_a_sequence_and_a_job(kind: str, args: Any, path: str, fragment: str) -> None:
    steps = [{"kind": "typing", "seconds": 1}, {"kind": kind, **args}]
    if kind != "private_reply":
        messages = errors_of(validate_sequence, IGSID, steps)
        assert list(messages) == [f"steps.1.{path}"], messages
    job = make_job(kind, args)
    assert list(errors_of(dump_job, job)) == [f"args.{path}"]
    try:
        raw = json.dumps(job, allow_nan=False)
    except (TypeError, ValueError):  # bytes, a set, NaN: not JSON at all
        return
    assert list(errors_of(load_job, raw)) == [f"args.{path}"]


def test_several_errors_are_reported_together() -> None:
    messages = errors_of(
        validate_send,
        "quick_replies",
        IGSID,
        {
            "text": "",
            "replies": [_QR, {**_QR, "title": "t" * 21}, {"content_type": "user_phone_number", "title": "x"}],
        },
    )
    assert messages == {
        "text": ["must be 1 to 1000 UTF-8 bytes (got 0)"],
        "replies.1.title": ["Longer than maximum length 20."],
        "replies.2.title": ["not allowed with content_type 'user_phone_number'"],
    }


def test_unknown_kind_recipient_and_args_type() -> None:
    messages = errors_of(validate_send, "x", IGSID, {})
    assert messages == {"kind": [f"unknown kind 'x'; expected one of {', '.join(KINDS)}"]}
    assert errors_of(validate_send, ["text"], IGSID, {})["kind"][0].startswith("unknown kind ['text']")
    assert errors_of(validate_send, "text", "", {"text": "hi"}) == {"recipient": ["must not be empty"]}
    assert list(errors_of(validate_send, "text", "abc", {"text": "hi"})) == ["recipient"]
    assert list(errors_of(validate_send, "text", 17841400000000001, {"text": "hi"})) == ["recipient"]
    assert list(errors_of(validate_send, "text", "1" * 33, {"text": "hi"})) == ["recipient"]
    assert list(errors_of(validate_send, "text", "123\n", {"text": "hi"})) == ["recipient"]
    assert list(errors_of(validate_send, "text", COMMENT, {"text": "hi"})) == ["recipient"]  # needs an IGSID
    assert validate_send("private_reply", COMMENT, {"text": "hi"}) == {"text": "hi"}
    assert list(errors_of(validate_send, "private_reply", "1_2_3", {"text": "hi"})) == ["recipient"]
    for bad in (["text", "hi"], "text=hi", 5):
        assert list(errors_of(validate_send, "text", IGSID, bad)) == ["args"]


def test_sequence_shape_errors() -> None:
    assert list(errors_of(validate_sequence, IGSID, {"kind": "text", "text": "hi"})) == ["steps"]
    assert list(errors_of(validate_sequence, IGSID, "text")) == ["steps"]
    assert errors_of(validate_sequence, IGSID, []) == {"steps": ["must have 1 to 50 steps (got 0)"]}
    assert errors_of(validate_sequence, IGSID, [{"kind": "mark_seen"}] * 51) == {
        "steps": ["must have 1 to 50 steps (got 51)"]
    }
    assert len(validate_sequence(IGSID, [{"kind": "mark_seen"}] * 50)) == 50
    messages = errors_of(
        validate_sequence, "abc", [{"text": "hi"}, "hi", {"kind": "text", "text": "é" * 501}, {"kind": 3}]
    )
    assert messages == {
        "steps.0.kind": ["Missing data for required field."],
        "steps.1": ["must be an object with a kind and its arguments, not str"],
        "steps.2.text": ["must be 1 to 1000 UTF-8 bytes (got 1002)"],
        "steps.3.kind": [f"unknown kind 3; expected one of {', '.join(KINDS)}"],
        "recipient": ["must be an Instagram-scoped user id (IGSID): 1 to 32 digits"],
    }


# ------------------------------------------------------------------------------------ the stored job
def test_job_envelope_rules() -> None:
    good = make_job("text", {"text": "hi"})
    assert load_job(dump_job(good)) == {
        **good,
        "args": {"text": "hi", "human_agent": False, "reply_to": None},
    }

    def problems(**changes: Any) -> dict[str, list[str]]:
        return errors_of(load_job, json.dumps({**good, **changes}))

    assert problems(v=2) == {"v": ["unsupported schema version 2 (this worker understands up to 1)"]}
    assert problems(v=7, future_field=1) == {
        "v": ["unsupported schema version 7 (this worker understands up to 1)"]
    }
    with pytest.raises(
        ValidationError, match=r"^v: unsupported schema version 2 \(this worker understands up to 1\)$"
    ):
        load_job(json.dumps({**good, "v": 2}))
    assert list(problems(v=0)) == ["v"]
    assert list(problems(v="1")) == ["v"]
    assert list(problems(v=True)) == ["v"]
    assert list(problems(access_token="IGAA...")) == ["access_token"]
    assert "never carries a token" in problems(token="x")["token"][0]
    assert list(problems(args={"text": "hi", "Page_Access_Token": "x"})) == ["args.Page_Access_Token"]
    assert problems(extra=1) == {"extra": ["Unknown field."]}
    assert list(problems(kind="sms")) == ["kind"]
    assert problems(args=[]) == {"args": ["Not a valid mapping type."]}
    assert list(problems(recipient=COMMENT)) == ["recipient"]
    assert load_job(dump_job(make_job("private_reply", {"text": "hi"})))["recipient"] == COMMENT
    assert list(problems(created_ms=1.5)) == ["created_ms"]
    assert list(problems(created_ms=-1)) == ["created_ms"]
    assert list(problems(due_ms=2**53)) == ["due_ms"]
    assert list(problems(cancel_on_reply="yes")) == ["cancel_on_reply"]
    assert list(problems(idem="")) == ["idem"]
    assert list(problems(key="a\x00b")) == ["key"]
    assert list(problems(id="")) == ["id"]
    assert list(problems(account="{evil}")) == ["account"]
    missing = {k: v for k, v in good.items() if k not in ("id", "args")}
    assert set(errors_of(load_job, json.dumps(missing))) == {"id", "args"}
    assert set(errors_of(dump_job, {**good, "args": {"text": ""}, "id": None})) == {"id", "args.text"}


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{",
        "[]",
        "null",
        "1",
        '"job"',
        b"\xff\xfe{}",
        b'{"v": 1, "text": "\xe9"}',
        "NaN",
        '{"v": 1, "created_ms": Infinity}',
        '{"v": 1, "v": 2}',
        "[" * 100_000 + "]" * 100_000,
        '{"v": 1, "created_ms": ' + "9" * 5000 + "}",
        '{"v": ' + "9" * 5000 + "}",
        "\ufeff{}",
        '{"v": 1, "id": "\\ud800"}',
    ],
)
def test_load_job_refuses_garbage_with_validation_error(raw: str | bytes) -> None:
    with pytest.raises(ValidationError):
        load_job(raw)


@pytest.mark.parametrize("raw", [None, 5, {"v": 1}, ["{}"], object()])
def test_load_job_refuses_non_text(raw: Any) -> None:
    assert list(errors_of(load_job, raw)) == ["_schema"]


def test_dump_job_refuses_cycles_and_non_mappings() -> None:
    args: dict[str, Any] = {"text": "hi"}
    args["self"] = args
    assert list(errors_of(dump_job, make_job("text", args))) == ["args.self"]
    for bad in (None, "job", [make_job("text", {"text": "hi"})]):
        assert list(errors_of(dump_job, bad)) == ["_schema"]


# --------------------------------------------------------------------------------------- rate classes
@pytest.mark.parametrize(
    ("kind", "args", "klass"),
    [
        ("text", {"text": "hi"}, "text"),
        ("quick_replies", {}, "text"),
        ("generic_template", {}, "text"),
        ("button_template", {}, "text"),
        ("react", {}, "text"),
        ("unreact", {}, "text"),
        ("typing", {}, "text"),
        ("mark_seen", {}, "text"),
        ("like_heart", {}, "text"),
        ("media_share", {}, "text"),
        ("media", {"type": "image"}, "text"),
        ("media", {"type": "file"}, "text"),
        ("media", {"type": "audio"}, "media"),
        ("media", {"type": "video"}, "media"),
        ("private_reply", {"text": "hi"}, "private_reply"),
    ],
)
def test_rate_class(kind: str, args: dict[str, Any], klass: str) -> None:
    assert rate_class(kind, args) == klass


def test_rate_class_refuses_unknown_kinds() -> None:
    assert list(errors_of(rate_class, "fax", {})) == ["kind"]
    assert list(errors_of(rate_class, None, {})) == ["kind"]
    assert list(errors_of(rate_class, "media", None)) == ["args"]


@VALID
@given(sends)
def test_rate_class_of_every_valid_send(send: tuple[str, dict[str, Any]]) -> None:
    kind, args = send
    klass = rate_class(kind, validate_send(kind, recipient_for(kind), args))
    if kind == "private_reply":
        assert klass == "private_reply"
    elif kind == "media" and args["type"] in ("audio", "video"):
        assert klass == "media"
    else:
        assert klass == "text"


# ------------------------------------------------------------------------------------------------ fuzz
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
python_values = st.one_of(
    st.from_type(bytes),
    st.from_type(bytearray),
    st.from_type(complex),
    st.from_type(Decimal),
    st.from_type(Fraction),
    st.from_type(datetime.datetime),
    st.from_type(uuid.UUID),
    st.sets(st.integers(), max_size=3),
    st.tuples(st.text(max_size=5), st.integers()),
    st.builds(object),
)
anything = st.one_of(json_values, python_values)
FIELD_NAMES = sorted(
    {
        name
        for schema in [*SCHEMAS.values(), ButtonSchema, QuickReplySchema, ElementSchema, JobSchema]
        for name in schema().fields
    }
    | {"kind", "content_type", "token"}
)
# dictionaries with the real field names reach the validators behind the first type check
near_values = st.recursive(
    anything
    | texts
    | urls
    | igsids
    | st.sampled_from([*list(KINDS), "web_url", "postback", "user_phone_number", "image", "audio"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)
near_args = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), near_values, max_size=6)


def valid_or_validation_error(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValidationError as exc:
        assert exc.messages and all(isinstance(k, str) for k in exc.messages)
        assert all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in exc.messages.values())
        str(exc)
        return exc


@FUZZ
@given(st.sampled_from(KINDS) | anything, igsids | comment_ids | anything, near_args | anything)
def test_fuzz_validate_send(kind: Any, recipient: Any, args: Any) -> None:
    result = valid_or_validation_error(validate_send, kind, recipient, args)
    if isinstance(result, dict):
        assert validate_send(kind, recipient, result) == result
        valid_or_validation_error(rate_class, kind, result)


@FUZZ
@given(igsids | anything, st.lists(near_args | anything, max_size=5) | anything)
def test_fuzz_validate_sequence(recipient: Any, steps: Any) -> None:
    valid_or_validation_error(validate_sequence, recipient, steps)


@FUZZ
@given(st.sampled_from(KINDS) | anything, near_args | anything)
def test_fuzz_rate_class(kind: Any, args: Any) -> None:
    result = valid_or_validation_error(rate_class, kind, args)
    assert isinstance(result, ValidationError) or result in ("text", "media", "private_reply")


@FUZZ
@given(
    st.one_of(
        st.text(max_size=50),
        st.binary(max_size=50),
        json_values.map(lambda v: json.dumps(v, allow_nan=True)),
        near_args.map(lambda v: json.dumps(v, default=repr, allow_nan=True)),
    )
)
def test_fuzz_load_job_raw(raw: str | bytes) -> None:
    valid_or_validation_error(load_job, raw)


@FUZZ
@given(
    sends,
    st.sampled_from([*FIELD_NAMES, "v", "id", "account"]),
    st.one_of(anything, near_values),
    st.booleans(),
)
def test_fuzz_load_job_mutated(
    send: tuple[str, dict[str, Any]], name: str, value: Any, into_args: bool
) -> None:
    kind, args = send
    job = make_job(kind, args)
    target = job["args"] if into_args else job
    target[name] = value
    raw = json.dumps(job, default=repr, allow_nan=True)
    result = valid_or_validation_error(load_job, raw)
    if isinstance(result, dict):
        assert load_job(dump_job(result)) == result
    valid_or_validation_error(dump_job, job)
