"""``/openapi.json``: the OpenAPI 3 document of the producer API, generated with apispec.

The argument schemas are the very marshmallow schemas the Outbox validates with
(:data:`dmworker.schemas.SCHEMAS`, one component ``<Kind>Args`` per kind).  From each,
``<Kind>Job`` (a job of that kind: ``kind`` + ``recipient`` + the options + the arguments) and
``<Kind>Step`` (a step of a sequence) are derived, and ``JobRequest`` is a ``oneOf`` over the
jobs with ``kind`` as discriminator.  What the schemas' validators check between fields (a button's
type, a media's one source, a card's second field), a URL pattern (within what the URL fields
accept) and the identifier rule are added to the generated components (:func:`_nested_rules`).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import flask
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask.typing import ResponseReturnValue

from .. import __version__
from ..due import MAX_SPAN_S
from ..registry import ACCOUNT_ID_RE
from ..schemas import KINDS, MAX_STEPS, REACTIONS, SCHEMAS
from ..schemas.base import _NO_SPACE as NO_SPACE_RE
from ..schemas.kinds import MAX_EMOJI_CHARS
from ..schemas.send import COMMENT_ID_RE, IGSID_RE
from .api import MAX_DLQ_LIMIT, MAX_HEADER_KEY_CHARS, MAX_KEY_CHARS
from .api_accounts import ACCOUNTS_PAGE, ACCOUNTS_PAGE_MAX
from .health import HEARTBEAT_MAX_AGE_MS, READY_TIMEOUT_S

bp = flask.Blueprint("openapi", __name__)

# A stored label (schemas.base.Label): not blank, no control character. Written without a
# lookahead (blanks, then the first other character, then anything but a control character), so
# a generator can build a string of a given length directly.
_LABEL = r"^[^\S\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
# The ISO 8601 times datetime.fromisoformat reads, with a zone, from 1970 on (epoch ms >= 0).
_DATE_TIME = (
    r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)


def _time(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "date-time", "pattern": _DATE_TIME, "description": description}


def _seconds(description: str, exclusive: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": MAX_SPAN_S, "description": description}
    if exclusive:
        out["exclusiveMinimum"] = True
    return out


def _key(description: str, max_chars: int = MAX_KEY_CHARS) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_chars,
        "pattern": _LABEL,
        "description": description,
    }


_OPTIONS: dict[str, Any] = {
    "account": {
        "type": "string",
        "nullable": True,
        "minLength": 1,
        "maxLength": 128,
        "pattern": r"^[^\s{}]+$",
        "description": "Sending account, configured or registered (default, or null: the default "
        "account). An account the deployment does not know is refused.",
    },
    "delay": {
        **_seconds("Send as a follow-up this many seconds from now (at most 366 days).", False),
        "nullable": True,
    },
    "at": {
        **_time(
            "Send as a follow-up at this ISO 8601 time with a timezone (from 1970 on); a time in the "
            "past means now. Not together with delay."
        ),
        "nullable": True,
    },
    "ttl": {
        **_seconds(
            "Expire the job (state expired, never sent) this many seconds after it becomes due; "
            "more than 0, at most 366 days. Not together with expires_at.",
            True,
        ),
        "nullable": True,
    },
    "expires_at": {
        **_time(
            "Expire the job at this ISO 8601 time with a timezone: in the future and after the job "
            "is due (else 422). Not together with ttl."
        ),
        "nullable": True,
    },
    "key": {
        **_key("Name of the follow-up (cancel it with DELETE /v1/followups?key=). Not blank."),
        "nullable": True,
    },
    "priority": {
        "type": "string",
        "enum": ["high", "normal", "low"],
        "default": "normal",
        "description": "Between the recipients of one account, high goes before normal before low "
        "(each recipient's own order never changes). A broadcast is best sent low.",
    },
    "replace": {
        "type": "boolean",
        "default": False,
        "description": "Replace a pending follow-up with the same key (else 422).",
    },
    "cancel_on_reply": {
        "type": "boolean",
        "default": False,
        "description": "Cancel this follow-up when the user writes or taps first (not for private_reply).",
    },
    "idempotency_key": {
        **_key(
            "Same key and same request within the retention: the same job, never a second send; the "
            "same key with a different request: 409 idempotency_conflict. Default: the "
            "Idempotency-Key header (batch item i: '<header>:<i>')."
        ),
        "nullable": True,
    },
}
# What a field's validator checks beyond its marshmallow metadata (schemas.kinds._reaction).
_FIELD_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "react": {
        "reaction": {
            "pattern": "^(?:{})$|^(?=.*[^\\x00-\\x7f])[^A-Za-z\\s\\x00-\\x1f\\x7f-\\x9f]{{1,{}}}$".format(
                "|".join(REACTIONS), MAX_EMOJI_CHARS
            )
        }
    }
}
# An http(s) URL with a host name and a top-level domain, as schemas.base.HttpUrl accepts (a
# subset of what it accepts: no userinfo, IP address or localhost). Python's \s also matches
# \x1c-\x1f, Unicode's White_Space (other regex engines) does not: both are spelled out.
_HTTP_URL = (
    r"^https?://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,6}(:[0-9]{1,5})?"
    r"(/|[/?#][^\s\x1c-\x1f]+)?$"
)
#: What the validators of schemas.nested check between fields: for each value of the field named
#: first, the fields that value needs and the fields it refuses.
_BY_VALUE: dict[str, tuple[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]] = {
    "Button": ("type", {"web_url": (("url",), ("payload",)), "postback": (("payload",), ("url",))}),
    "QuickReply": (
        "content_type",
        {"text": (("title", "payload"), ()), "user_phone_number": ((), ("title", "payload"))},
    ),
}
#: Arguments refused together (schemas.kinds.TypingArgs: seconds only with on=true).
_NOT_TOGETHER = {
    "Typing": {"on": {"enum": [False]}, "seconds": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}
}
#: Objects that need at least one of these fields (schemas.nested.ElementSchema).
_ANY_OF = {"Element": ("subtitle", "image_url", "default_action", "buttons")}
#: Arguments given by exactly one of these fields, not null (schemas.kinds.MediaArgs); ``urls``
#: only with type image.
_ONE_OF = {"Media": ("url", "attachment_id", "urls")}
_NULLABLE_KEYS = ("nullable", "default")


def _by_value(schema: dict[str, Any], field: str, rules: dict[str, Any]) -> dict[str, Any]:
    """``schema`` as a ``oneOf``: one variant per value of ``field`` (its needs and refusals)."""
    variants = []
    for value, (needs, refuses) in rules.items():
        props = {k: copy.deepcopy(v) for k, v in schema["properties"].items() if k not in refuses}
        default = props[field].pop("default", None)
        props[field]["enum"] = [value]
        required = [*schema.get("required", []), *needs]
        if default != value and field not in required:  # the default value may be left out
            required.append(field)
        variants.append({**schema, "properties": props, "required": sorted(set(required))})
    return {"oneOf": variants, "description": f"One variant per {field}."}


def _nested_rules(components: dict[str, Any]) -> None:
    """Add to the generated components what marshmallow validators check beyond field metadata."""
    for schema in components.values():
        for prop in _walk_props(schema):
            if prop.get("format") == "url":
                prop["pattern"] = _HTTP_URL
            if prop.get("pattern") == r"^\S+$":  # an identifier: its validator refuses controls too
                prop["pattern"] = f"^{NO_SPACE_RE.pattern}$"
    for name, (field, rules) in _BY_VALUE.items():
        components[name] = _by_value(components[name], field, rules)
    for name, wanted in _ANY_OF.items():
        components[name]["anyOf"] = [{"required": [f]} for f in wanted]
    for kind, fields in _ONE_OF.items():
        args = components[f"{kind}Args"]
        props = args["properties"]
        not_null = {f: {k: v for k, v in props[f].items() if k not in _NULLABLE_KEYS} for f in fields}
        given = {f: {"required": [f], "properties": {f: not_null[f]}} for f in fields}
        args["oneOf"] = list(given.values())
        if "urls" in given:  # urls only with type image
            args["anyOf"] = [{"not": given["urls"]}, {"properties": {"type": {"enum": ["image"]}}}]
    for kind, pair in _NOT_TOGETHER.items():
        components[f"{kind}Args"]["anyOf"] = [
            {"not": {"required": [name], "properties": {name: schema}}} for name, schema in pair.items()
        ]


def _walk_props(schema: Any) -> list[dict[str, Any]]:
    """Every property schema (and array item) under ``schema``."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        for prop in schema.get("properties", {}).values():
            found.append(prop)
            found.extend(_walk_props(prop))
        if isinstance(schema.get("items"), dict):
            found.append(schema["items"])
            found.extend(_walk_props(schema["items"]))
    return found


#: Options that exclude each other: a job carries at most one of each pair.
EXCLUSIVE = (("delay", "at"), ("ttl", "expires_at"))
_IGSID_PATTERN = f"^{IGSID_RE.pattern}$"
_COMMENT_PATTERN = f"^{COMMENT_ID_RE.pattern}$"


def _recipient(kind: str) -> dict[str, Any]:
    if kind == "private_reply":
        return {
            "type": "string",
            "pattern": _COMMENT_PATTERN,
            "description": "The comment id (digits, or digits_digits).",
        }
    return {"type": "string", "pattern": _IGSID_PATTERN, "description": "IGSID of the user (1 to 32 digits)."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


def _obj(properties: dict[str, Any], required: list[str], **more: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, **more}


_JOB = _obj(
    {
        "id": {"type": "string"},
        "ids": {"type": "array", "items": {"type": "string"}},
        "account": {"type": "string"},
        "recipient": {"type": "string"},
        "due_ms": {"type": "integer", "nullable": True},
        "duplicate": {"type": "boolean"},
    },
    ["id", "ids", "recipient", "due_ms", "duplicate"],
)
_STATUS = _obj(
    {
        name: {"type": t, "nullable": True}
        for name, t in (
            ("id", "string"),
            ("account", "string"),
            ("recipient", "string"),
            ("kind", "string"),
            ("state", "string"),
            ("attempts", "integer"),
            ("created_ms", "integer"),
            ("updated_ms", "integer"),
            ("due_ms", "integer"),
            ("sent_ms", "integer"),
            ("next_attempt_ms", "integer"),
            ("message_id", "string"),
            ("key", "string"),
            ("dead_lettered", "boolean"),
            ("last_error", "object"),
            ("expires_at_ms", "integer"),
            ("ended_ms", "integer"),
            ("seen_ms", "integer"),
        )
    }
    | {
        "timeline": {
            "type": "array",
            "description": "The job's history, oldest first: [ms, what, detail(, count)] — accepted, "
            "scheduled, promoted, attempt, retry, throttled, token_refused, waiting (rate, hold, "
            "paused:<reason>, probe), the end state, seen, echo, reaction. Bounded.",
            "items": {"type": "array"},
        }
    },
    ["id", "state"],
)
_NULL_INT = {"type": "integer", "nullable": True}
_ACCOUNT = _obj(
    {
        "account": {"type": "string", "description": "Instagram professional account id."},
        "state": {"type": "string", "description": "active, paused, reauth_required or disabled."},
        "configured": {
            "type": "boolean",
            "description": "Configured (environment/file), not only registered.",
        },
        "limits": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Rate limit per class (text, media, private_reply, ...), e.g. '100/s'.",
        },
        "burst": {"type": "integer", "description": "Sends allowed at once above the rate."},
        "usage_pct": {**_NULL_INT, "description": "Meta's latest usage header, percent."},
        "slowdown": {"type": "number", "description": "Interval multiplier from usage (1 to 4)."},
        "paused_until_ms": {**_NULL_INT, "description": "Sends paused until (epoch ms), null if not paused."},
        "pause_reason": {
            "type": "string",
            "nullable": True,
            "description": "throttled, policy_block, token_invalid.",
        },
        "pause_detail": {"type": "string", "nullable": True},
        "backlog_lanes": {"type": "integer", "description": "Lanes (recipients) with jobs waiting."},
        "scheduled": {"type": "integer", "description": "Follow-ups not yet due."},
        "dead_letters": {"type": "integer", "description": "Jobs in the dead-letter queue."},
        "stats": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "Cluster-wide counters (accepted, sent, failed, ...; see /metrics).",
        },
    },
    ["account", "configured", "limits", "burst", "backlog_lanes", "scheduled", "dead_letters"],
)
_ERROR = _obj({"error": {"type": "string"}, "message": {"type": "string"}}, ["error"])
_VALIDATION = _obj(
    {
        "error": {"type": "string", "enum": ["validation"]},
        "fields": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "Field path (replies.3.title; <index>.<path> in a batch).",
        },
        "message": {"type": "string"},
        "closes_at_ms": {"type": "integer", "nullable": True},
    },
    ["error", "fields"],
)
_WINDOW = _obj(
    {
        "recipient": {"type": "string"},
        "open": {"type": "boolean"},
        "last_user_message_ms": {"type": "integer", "nullable": True},
        "closes_at_ms": {"type": "integer", "nullable": True},
        "human_agent_open": {"type": "boolean"},
        "human_agent_closes_at_ms": {"type": "integer", "nullable": True},
    },
    ["recipient", "open"],
)
_CANCEL = _obj(
    {
        "cancelled": {"type": "boolean"},
        "id": {"type": "string"},
        "state": {"type": "string", "description": "Why not (409): sent, sending, failed, ..."},
    },
    ["cancelled"],
)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_TEXTS = {
    400: "Malformed JSON or not a job object/list",
    401: "Missing or invalid bearer token",
    404: "Unknown id",
    409: "Already sent, failed or cancelled",
    413: "Body too large",
    422: "Validation failed; nothing queued",
    429: "Too many queued jobs for the account; nothing queued",
    503: "Redis unreachable; nothing changed",
}


def _op(
    summary: str,
    ok: tuple[int, dict[str, Any], str],
    *errors: int,
    special: dict[int, tuple[dict[str, Any], str]] | None = None,
    **more: Any,
) -> dict[str, Any]:
    """An operation: ``ok``, 401, ``errors`` and 503 (``special``: a code's own schema and text)."""
    responses = {str(ok[0]): _json(ok[1], ok[2])}
    for code in (401, *errors, 503):
        schema, text = (special or {}).get(
            code, (_ref({422: "ValidationError", 409: "Cancel"}.get(code, "Error")), _TEXTS[code])
        )
        responses[str(code)] = _json(schema, text)
    return {"summary": summary, "responses": responses, **more}


def _param(name: str, where: str, description: str, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _paths(spec: APISpec) -> None:
    job_id = _param("job_id", "path", "Job id (<account>.<random>).")
    account = _param(
        "account",
        "query",
        "An account (empty: the configured default / every account). Where one account is "
        "needed, an unknown one is 422.",
    )
    many = {"oneOf": [_ref("JobRequest"), {"type": "array", "minItems": 1, "items": _ref("JobRequest")}]}
    accepted = _obj({"jobs": {"type": "array", "items": _ref("AcceptedJob")}}, ["jobs"])
    idem_conflict = _obj(
        {
            "error": {"type": "string", "enum": ["idempotency_conflict"]},
            "message": {"type": "string"},
            "fields": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "jobs": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The first request's jobs.",
            },
        },
        ["error"],
    )
    spec.path(
        "/v1/messages",
        operations={
            "post": _op(
                "Queue one job or a batch (every item validated before any is queued)",
                (202, accepted, "Accepted (duplicate: true when the idempotency key was seen)"),
                400,
                409,
                413,
                422,
                429,
                special={
                    429: (
                        _obj(
                            {
                                "error": {"type": "string", "enum": ["backlog_full"]},
                                "message": {"type": "string"},
                                "account": {"type": "string"},
                                "retry_after_s": {"type": "number"},
                            },
                            ["error", "retry_after_s"],
                        ),
                        "The account's backlog is full (DMWORKER_MAX_BACKLOG_S): nothing queued; "
                        "retry after Retry-After seconds",
                    ),
                    409: (
                        idem_conflict,
                        "The idempotency key was already used for a different request (nothing queued)",
                    ),
                    422: (
                        _ref("ValidationError"),
                        "Validation failed, a closed messaging window, a pending follow-up with the "
                        "same key (without replace), an unknown account, expires_at not after the due "
                        "time; nothing queued",
                    ),
                    503: (
                        _obj(
                            {
                                "error": {"type": "string"},
                                "message": {"type": "string"},
                                "queued": {"type": "array", "items": {"type": "string"}},
                                "in_doubt": {"type": "array", "items": {"type": "string"}},
                            },
                            ["error"],
                        ),
                        "Redis unreachable, also when it failed part-way through a batch: retry the "
                        "same request with the same idempotency keys (items already queued are not "
                        "queued twice)",
                    ),
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Idempotency key of the job (batch item i: '<key>:<i>').",
                        "schema": {
                            "type": "string",
                            "maxLength": MAX_HEADER_KEY_CHARS,
                            "description": "Blank: no key.",
                        },
                    }
                ],
                requestBody={"required": True, "content": {"application/json": {"schema": many}}},
            )
        },
    )
    spec.path(
        "/v1/jobs",
        operations={
            "get": _op(
                "Find the job that sent a message",
                (200, _ref("JobStatus"), "The job that sent Meta's message_id"),
                404,
                422,
                special={403: (_ref("Error"), "The token may not read this account")},
                parameters=[
                    {
                        "name": "message_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 512},
                    },
                    {"name": "account", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
            )
        },
    )
    spec.path(
        "/v1/jobs/{job_id}",
        parameters=[job_id],
        operations={
            "get": _op("Status of a job", (200, _ref("JobStatus"), "The job's status"), 404),
            "delete": _op(
                "Cancel a job",
                (200, _ref("Cancel"), "Cancelled: it will not be sent"),
                404,
                409,
                description="DELETE cancels the job (it is kept, in state cancelled, and never "
                "sent); it does not erase it. A job already sent, being sent, failed or "
                "cancelled answers 409 with its state.",
            ),
        },
    )
    spec.path(
        "/v1/followups",
        operations={
            "delete": _op(
                "Cancel a follow-up by key",
                (200, _ref("Cancel"), "Cancelled"),
                404,
                409,
                422,
                parameters=[
                    _param("key", "query", "Follow-up key (not empty).", required=True, minLength=1),
                    account,
                ],
            )
        },
    )
    dlq_list = _obj({"dead_letters": {"type": "array", "items": _ref("JobStatus")}}, ["dead_letters"])
    spec.path(
        "/v1/dlq",
        operations={
            "get": _op(
                "Dead letters, newest first",
                (200, dlq_list, "Dead letters"),
                422,
                parameters=[
                    account,
                    _param(
                        "limit",
                        "query",
                        f"At most this many (1 to {MAX_DLQ_LIMIT}, default 100).",
                        type="integer",
                        minimum=1,
                        maximum=MAX_DLQ_LIMIT,
                    ),
                ],
            ),
            "delete": _op(
                "Forget the dead letters of an account (or, with all=true, of every account)",
                (200, _obj({"purged": {"type": "integer"}}, ["purged"]), "How many"),
                422,
                special={422: (_ref("ValidationError"), "Neither account nor all=true given")},
                parameters=[
                    account,
                    _param("all", "query", "true: purge every account's dead letters.", type="boolean"),
                ],
            ),
        },
    )
    shown = _obj({"status": _ref("JobStatus"), "job": {"type": "object", "nullable": True}}, ["status"])
    spec.path(
        "/v1/dlq/{job_id}",
        parameters=[job_id],
        operations={"get": _op("A dead letter and its stored job", (200, shown, "The dead letter"), 404)},
    )
    replayed = _obj({"replayed": {"type": "boolean"}, "id": {"type": "string"}}, ["replayed"])
    not_dead = _obj(
        {
            "error": {"type": "string", "enum": ["conflict"]},
            "message": {"type": "string"},
            "id": {"type": "string"},
            "state": {"type": "string", "description": "The job's state (queued, sent, ...)."},
        },
        ["error", "state"],
    )
    spec.path(
        "/v1/dlq/{job_id}/replay",
        parameters=[job_id],
        operations={
            "post": _op(
                "Put a dead letter back at the tail of its lane",
                (200, replayed, "Replayed"),
                404,
                409,
                special={409: (not_dead, "The job is no longer dead-lettered (its state says where it is)")},
            )
        },
    )
    spec.path(
        "/v1/windows/{igsid}",
        parameters=[_param("igsid", "path", "The user's IGSID (1 to 32 digits).", pattern=_IGSID_PATTERN)],
        operations={
            "get": _op(
                "The user's messaging window",
                (200, _ref("WindowInfo"), "The window"),
                422,
                parameters=[account],
            )
        },
    )
    accounts = _obj(
        {
            "accounts": {"type": "array", "items": _ref("AccountState")},
            "next": {
                "type": "string",
                "nullable": True,
                "description": "The `after` of the next page; null on the last page.",
            },
        },
        ["accounts", "next"],
    )
    page = [
        _param(
            "limit",
            "query",
            f"At most this many accounts (1 to {ACCOUNTS_PAGE_MAX}, default {ACCOUNTS_PAGE}).",
            type="integer",
            minimum=1,
            maximum=ACCOUNTS_PAGE_MAX,
        ),
        _param(
            "after",
            "query",
            "Only accounts whose id sorts after this one (the previous page's `next`).",
            pattern=ACCOUNT_ID_RE.pattern,
        ),
    ]
    spec.path(
        "/v1/accounts",
        operations={
            "get": _op(
                "Limits, usage, pause and backlog of the known accounts, by account id, a page at a time",
                (200, accounts, "Accounts"),
                422,
                parameters=page,
            )
        },
    )
    health = _obj({"redis": {"type": "string"}, "workers": {"type": "integer"}}, ["redis", "workers"])
    status = _obj({"status": {"type": "string", "enum": ["ok"]}, "redis": {"type": "string"}}, ["status"])
    probes = (
        ("/livez", "Liveness: the process answers (no I/O)", status, None),
        (
            "/readyz",
            f"Readiness: Redis answers a PING within {READY_TIMEOUT_S:g} s",
            status,
            "Redis unreachable",
        ),
        (
            "/healthz",
            f"Redis answers and a worker or dispatcher beat within {HEARTBEAT_MAX_AGE_MS // 1000} s",
            health,
            "Redis unreachable, or no recent heartbeat",
        ),
    )
    for path, summary, ok, down in probes:
        responses = {"200": _json(ok, "OK")}
        if down:
            responses["503"] = _json(_ref("Error"), down)
        op: dict[str, Any] = {"summary": summary, "security": [], "responses": responses}
        if path == "/healthz":
            op["description"] = (
                "The whole cluster's health, kept for existing checks. Not a probe for the web "
                "tier: a worker outage must not take the webhook receiver and the API down. "
                "Use /livez and /readyz there, and alert on dmworker_workers_alive."
            )
        spec.path(path, operations={"get": op})
    spec.path(
        "/openapi.json",
        operations={
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.0 document")},
            }
        },
    )
    spec.path(
        "/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics of the whole cluster (read from Redis)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    )
    received = _obj({"received": {"type": "integer"}, "new": {"type": "integer"}}, ["received", "new"])
    spec.path(
        "/webhooks/instagram",
        operations={
            "get": {
                "summary": "Meta's verification handshake",
                "security": [],
                "parameters": [
                    _param("hub.mode", "query", "subscribe"),
                    _param("hub.verify_token", "query", "Verify token"),
                    _param("hub.challenge", "query", "Echoed back"),
                ],
                "responses": {
                    "200": {"description": "The challenge, text/plain"},
                    "403": _json(_ref("Error"), "Wrong token"),
                },
            },
            "post": {
                "summary": "Signed Instagram events (X-Hub-Signature-256)",
                "security": [],
                "responses": {
                    "200": _json(received, "Recorded"),
                    "400": _json(_ref("Error"), "Malformed JSON"),
                    "403": _json(_ref("Error"), "Missing or invalid signature"),
                },
            },
        },
    )

    # accounts and API tokens at run time (dmworker.web.api_accounts)
    def scoped(op: dict[str, Any]) -> dict[str, Any]:
        op["responses"]["403"] = _json(_ref("Error"), "The token's role or scope does not allow this")
        return op

    malformed = (_ref("Error"), "Malformed JSON")
    conflict = (_ref("Error"), "A static (read-only) account, or a name in use")
    info = _obj(
        {
            "account": {"type": "string"},
            "source": {"type": "string", "enum": ["registry", "static"]},
            "state": {"type": "string", "enum": ["active", "paused", "reauth_required", "disabled"]},
            "login": {"type": "string", "enum": ["instagram", "facebook"]},
            "page_id": {"type": "string", "nullable": True},
            "graph_url": {"type": "string"},
            "token_fingerprint": {"type": "string", "nullable": True, "description": "Never the token."},
            "token_expires_at": {"type": "number", "nullable": True, "description": "Epoch s."},
            "token_issued_at": {"type": "number", "nullable": True, "description": "Epoch s."},
            "limits": {"type": "object", "additionalProperties": {"type": "string"}},
            "burst": {"type": "integer"},
            "pause_reason": {"type": "string", "nullable": True},
            "paused_until_ms": {"type": "integer", "nullable": True},
            "callback_url": {"type": "string", "nullable": True},
            "refresh": {
                "type": "object",
                "description": "Token refresh: state (none, scheduled, ok, failed, expired, invalid), "
                "next_s and last_s (epoch s), failures, error.",
            },
            "created_at": {"type": "number", "nullable": True},
            "updated_at": {"type": "number", "nullable": True},
        },
        ["account", "source", "state", "login", "limits", "burst"],
    )
    rate = {
        "type": "string",
        "pattern": r"^\s*(0*[1-9]\d*(\.\d+)?|0*\.\d*[1-9]\d*)\s*/\s*([1-9]\d*)?\s*(s|sec|m|min|h|hour)\s*$",
        "description": "N/s, N/m, N/h (N > 0).",
    }
    url = {"type": "string", "pattern": r"^https?://[^/\s]+"}
    put_body = _obj(
        {
            "access_token": {"type": "string", "minLength": 1},
            "login": {"type": "string", "enum": ["instagram", "facebook"], "default": "instagram"},
            "page_id": {"type": "string", "pattern": "^[0-9]+$", "description": "Facebook login only."},
            "token_expires_at": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            "token_issued_at": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            "rates": {
                "type": "object",
                "properties": {k: rate for k in ("text", "media", "private_reply", "conversations")},
                "additionalProperties": False,
            },
            "burst": {"type": "integer", "minimum": 1},
            "graph_url": url,
            "callback_url": url,
            "disabled": {"type": "boolean"},
        },
        ["access_token"],
        additionalProperties=False,
        anyOf=[
            {"properties": {"login": {"enum": ["instagram"]}}},
            {"properties": {"login": {"enum": ["facebook"]}}, "required": ["login", "page_id"]},
        ],
    )
    put = scoped(
        _op(
            "Add or replace a registry account (admin)",
            (200, info, "Replaced"),
            400,
            409,
            422,
            special={400: malformed, 409: conflict},
            requestBody={"required": True, "content": {"application/json": {"schema": put_body}}},
        )
    )
    put["responses"]["201"] = _json(info, "Added")
    removed = _obj(
        {"account": {"type": "string"}, "jobs": {"type": "string"}, "ended": {"type": "integer"}},
        ["account", "jobs", "ended"],
    )
    jobs = _param(
        "jobs", "query", "keep (held), fail or cancel.", required=True, enum=["keep", "fail", "cancel"]
    )
    spec.path(
        "/v1/accounts/{account}",
        parameters=[_param("account", "path", "Account id.", pattern="^[A-Za-z0-9_-]{1,64}$")],
        operations={
            "get": _op(
                "One account: state, token fingerprint and expiry, limits, refresh", (200, info, "It"), 404
            ),
            "put": put,
            "delete": scoped(
                _op(
                    "Remove a registry account; jobs says what becomes of its jobs (admin)",
                    (200, removed, "Removed"),
                    404,
                    409,
                    422,
                    special={409: conflict},
                    parameters=[jobs],
                )
            ),
        },
    )
    token_info = _obj(
        {
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "producer", "viewer"]},
            "accounts": {"description": "'*' or a list of account ids."},
            "created_s": {"type": "number"},
        },
        ["name", "role"],
    )
    ids = {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
    new_token = _obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "role": {"type": "string", "enum": ["admin", "producer", "viewer"]},
            "accounts": {**ids, "description": "The accounts of a producer or viewer."},
        },
        ["name", "role"],
        additionalProperties=False,
        anyOf=[
            {"properties": {"role": {"enum": ["admin"]}, "accounts": {"maxItems": 0}}},
            {
                "properties": {"role": {"enum": ["producer", "viewer"]}, "accounts": {"minItems": 1}},
                "required": ["accounts"],
            },
        ],
    )
    made = _obj(
        {
            "name": {"type": "string"},
            "role": {"type": "string"},
            "accounts": ids,
            "token": {"type": "string"},
        },
        ["name", "role", "accounts", "token"],
    )
    spec.path(
        "/v1/api-tokens",
        operations={
            "get": scoped(
                _op(
                    "API tokens of the registry: name, role, accounts; never a token (admin)",
                    (
                        200,
                        _obj({"api_tokens": {"type": "array", "items": token_info}}, ["api_tokens"]),
                        "Tokens",
                    ),
                )
            ),
            "post": scoped(
                _op(
                    "Create an API token; shown once, Redis keeps its SHA-256 (admin)",
                    (201, made, "Created; accounts [] for an admin (every account)"),
                    400,
                    409,
                    422,
                    special={400: malformed, 409: conflict},
                    requestBody={"required": True, "content": {"application/json": {"schema": new_token}}},
                )
            ),
        },
    )
    report = _obj(
        {
            "account": {"type": "string"},
            "window": {"type": "integer", "description": "1 when a messaging window was recorded."},
            "comments": {"type": "integer"},
            "jobs_cancelled": {"type": "integer", "description": "Not yet sent: cancelled first."},
            "jobs_removed": {"type": "integer", "description": "Payload and status deleted, any state."},
            "dead_letters": {"type": "integer"},
            "lanes": {"type": "integer"},
            "events": {"type": "integer", "description": "Event stream entries about them or their jobs."},
            "in_flight": {"type": "integer", "description": "Being sent now: not removed."},
            "complete": {"type": "boolean"},
        },
        ["account", "jobs_removed", "in_flight", "complete"],
    )
    forgotten = _obj(
        {
            "accounts": {"type": "array", "items": report},
            "complete": {
                "type": "boolean",
                "description": "false: a send was in flight; call again once it has ended.",
            },
            "in_flight": {"type": "integer"},
        },
        ["accounts", "complete", "in_flight"],
    )
    spec.path(
        "/v1/people/{igsid}",
        parameters=[_param("igsid", "path", "The person's IGSID (1 to 32 digits).", pattern=_IGSID_PATTERN)],
        operations={
            "delete": scoped(
                _op(
                    "Forget a person (Meta data-deletion request): window, comments, jobs in any "
                    "state and their texts, dead letters, lanes (admin, or a producer of the account)",
                    (200, forgotten, "What was removed, per account"),
                    422,
                    parameters=[
                        _param(
                            "account",
                            "query",
                            "The account (empty or absent: every account; admin-wide tokens only).",
                            pattern="^[A-Za-z0-9_-]{0,64}$",
                        )
                    ],
                )
            )
        },
    )
    spec.path(
        "/v1/api-tokens/{name}",
        parameters=[_param("name", "path", "The API token's name.")],
        operations={
            "delete": scoped(
                _op(
                    "Revoke an API token (admin)",
                    (200, _obj({"removed": {"type": "string"}}, ["removed"]), "Revoked"),
                    404,
                )
            )
        },
    )


def _callback_paths(spec: APISpec) -> None:
    """``/v1/callbacks/dead``: dead callbacks (:mod:`dmworker.web.api_callbacks`)."""
    account = _param("account", "query", "Only this account's dead callbacks (empty: every one in scope).")
    dead = _obj(
        {
            "id": {"type": "string", "description": "The event's id (<account>/<stream entry>)."},
            "to": {
                "type": "array",
                "items": {"type": "string", "enum": ["default", "account"]},
                "description": "Destinations that gave it up: default (DMWORKER_CALLBACK_URL), "
                "account (the account's callback_url).",
            },
            "reason": {"type": "string", "description": "The last failure: HTTP <status>, or an error name."},
            "dead_ms": {"type": "integer", "description": "When it was given up (epoch ms)."},
            "event": {"type": "object", "description": "The event as it was (see docs/events.md)."},
        },
        ["id", "to", "reason", "dead_ms", "event"],
    )
    listed = _obj({"dead_callbacks": {"type": "array", "items": dead}}, ["dead_callbacks"])
    limit = _param(
        "limit",
        "query",
        f"At most this many (1 to {MAX_DLQ_LIMIT}, default 100).",
        type="integer",
        minimum=1,
        maximum=MAX_DLQ_LIMIT,
    )
    listing = _op("Dead callbacks, newest first", (200, listed, "Dead"), 422, parameters=[account, limit])
    ids = {"type": "array", "items": {"type": "string", "minLength": 1}, "description": "Event ids."}
    replay = _op(
        "Replay dead callbacks: the ids given, else the account's, else every one (admin-wide)",
        (200, _obj({"replayed": {"type": "integer"}}, ["replayed"]), "How many were handed back"),
        422,
        parameters=[account],
        requestBody={
            "required": False,
            "content": {"application/json": {"schema": {"type": "object", "properties": {"ids": ids}}}},
        },
        description="Each replayed event keeps its id and is retried for a new "
        "DMWORKER_CALLBACK_MAX_AGE_S. Ids of accounts outside the token's scope are skipped.",
    )
    for op, why in ((listing, "An account outside the token's scope"), (replay, "A read-only token, or an "
                    "account outside its scope")):  # fmt: skip
        op["responses"]["403"] = _json(_ref("Error"), why)
    spec.path("/v1/callbacks/dead", operations={"get": listing})
    spec.path("/v1/callbacks/dead/replay", operations={"post": replay})


@cache
def build_spec() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    spec = APISpec(
        title="dmworker producer API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Queue Instagram DM sends; delivered in order per recipient."},
        security=[{"bearer": []}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for kind in KINDS:
        spec.components.schema(f"{_camel(kind)}Args", schema=SCHEMAS[kind])
        props = spec.components.schemas[f"{_camel(kind)}Args"].get("properties", {})
        for name, extra in _FIELD_RULES.get(kind, {}).items():
            props[name].update(extra)
    _nested_rules(spec.components.schemas)
    mapping: dict[str, str] = {}
    steps: dict[str, str] = {}
    for kind in (*KINDS, "sequence"):
        name = _camel(kind)
        if kind == "sequence":
            args = _obj(
                {
                    "steps": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_STEPS,
                        "items": {
                            "oneOf": [{"$ref": r} for r in steps.values()],
                            "discriminator": {"propertyName": "kind", "mapping": steps},
                        },
                    }
                },
                ["steps"],
            )
        else:
            args = copy.deepcopy(spec.components.schemas[f"{name}Args"])
            step = _obj(
                {"kind": {"type": "string", "enum": [kind]}, **args.get("properties", {})},
                ["kind", *args.get("required", [])],
                additionalProperties=False,
                **{k: args[k] for k in ("oneOf", "anyOf") if k in args},
            )
            spec.components.schema(f"{name}Step", component=step)
            steps[kind] = f"#/components/schemas/{name}Step"
        options = copy.deepcopy(_OPTIONS)
        if kind == "private_reply":  # it answers a comment: there is no reply to cancel it on
            options["cancel_on_reply"]["enum"] = [False]
        job = _obj(
            {
                "kind": {"type": "string", "enum": [kind]},
                "recipient": _recipient(kind),
                **args.get("properties", {}),
                **options,
            },
            ["kind", "recipient", *args.get("required", [])],
            additionalProperties=False,
            **{k: args[k] for k in ("oneOf", "anyOf") if k in args},
            description=f"A {kind} job: its arguments (see {name}Args) plus the options. "
            + " ".join(f"At most one of {a} and {b}." for a, b in EXCLUSIVE),
        )
        # delay and at (ttl and expires_at) exclude each other; null counts as not given
        job["not"] = {
            "anyOf": [
                {
                    "required": [a, b],
                    "properties": {
                        a: _OPTIONS[a] | {"nullable": False},
                        b: _OPTIONS[b] | {"nullable": False},
                    },
                }
                for a, b in EXCLUSIVE
            ]
        }
        spec.components.schema(f"{name}Job", component=job)
        mapping[kind] = f"#/components/schemas/{name}Job"
    spec.components.schema(
        "JobRequest",
        component={
            "oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "kind", "mapping": mapping},
        },
    )
    for name, schema in (
        ("AcceptedJob", _JOB),
        ("JobStatus", _STATUS),
        ("Error", _ERROR),
        ("ValidationError", _VALIDATION),
        ("WindowInfo", _WINDOW),
        ("Cancel", _CANCEL),
        ("AccountState", _ACCOUNT),
    ):
        spec.components.schema(name, component=schema)
    _paths(spec)
    _callback_paths(spec)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return flask.jsonify(build_spec())
