"""``/openapi.json``: the OpenAPI 3 document of the producer API, generated with apispec.

The argument schemas are the very marshmallow schemas the Outbox validates with
(:data:`dmworker.schemas.SCHEMAS`, one component ``<Kind>Args`` per kind).  From each,
``<Kind>Job`` (a job of that kind: ``kind`` + ``recipient`` + the options + the arguments) and
``<Kind>Step`` (a step of a sequence) are derived, and ``JobRequest`` is a ``oneOf`` over the
jobs with ``kind`` as discriminator.
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
from ..schemas import KINDS, MAX_STEPS, SCHEMAS
from .health import HEARTBEAT_MAX_AGE_MS, READY_TIMEOUT_S

bp = flask.Blueprint("openapi", __name__)

_OPTIONS: dict[str, Any] = {
    "account": {"type": "string", "description": "Sending account (default: the configured default)."},
    "delay": {
        "type": "number",
        "minimum": 0,
        "maximum": 366 * 86400,
        "description": "Send as a follow-up this many seconds from now.",
    },
    "at": {
        "type": "string",
        "format": "date-time",
        "description": "Send as a follow-up at this ISO 8601 time (with a timezone). Not with delay.",
    },
    "key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "description": "Name of the follow-up (cancel it with DELETE /v1/followups?key=).",
    },
    "replace": {
        "type": "boolean",
        "default": False,
        "description": "Replace a pending follow-up with the same key (else 422).",
    },
    "cancel_on_reply": {
        "type": "boolean",
        "default": False,
        "description": "Cancel this follow-up when the user writes or taps first.",
    },
    "idempotency_key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "description": "Same key within the retention: same job, never a second send. "
        "Default: the Idempotency-Key header (batch item i: '<header>:<i>').",
    },
}
_RECIPIENT = {
    "type": "string",
    "pattern": "^[0-9]{1,32}(_[0-9]{1,32})?$",
    "description": "IGSID of the user (for private_reply: the comment id).",
}


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
        )
    },
    ["id", "state"],
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


def _op(summary: str, ok: tuple[int, dict[str, Any], str], *errors: int, **more: Any) -> dict[str, Any]:
    texts = {
        400: "Malformed JSON or not a job object/list",
        401: "Missing or invalid bearer token",
        404: "Unknown id",
        409: "Already sent, failed or cancelled",
        413: "Body too large",
        422: "Validation failed; nothing queued",
        503: "Redis unreachable; nothing changed",
    }
    responses = {str(ok[0]): _json(ok[1], ok[2])}
    for code in (401, *errors, 503):
        schema = _ref({422: "ValidationError", 409: "Cancel"}.get(code, "Error"))
        responses[str(code)] = _json(schema, texts[code])
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
    account = _param("account", "query", "Account (default: the configured default / every account).")
    many = {"oneOf": [_ref("JobRequest"), {"type": "array", "minItems": 1, "items": _ref("JobRequest")}]}
    accepted = _obj({"jobs": {"type": "array", "items": _ref("AcceptedJob")}}, ["jobs"])
    spec.path(
        "/v1/messages",
        operations={
            "post": _op(
                "Queue one job or a batch (every item validated before any is queued)",
                (202, accepted, "Accepted"),
                400,
                413,
                422,
                parameters=[
                    _param("Idempotency-Key", "header", "Idempotency key of the job (batch: '<key>:<i>').")
                ],
                requestBody={"required": True, "content": {"application/json": {"schema": many}}},
            )
        },
    )
    spec.path(
        "/v1/jobs/{job_id}",
        parameters=[job_id],
        operations={
            "get": _op("Status of a job", (200, _ref("JobStatus"), "The job's status"), 404),
            "delete": _op("Cancel a queued or scheduled job", (200, _ref("Cancel"), "Cancelled"), 404, 409),
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
                parameters=[_param("key", "query", "Follow-up key.", required=True), account],
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
                    _param("limit", "query", "At most this many (1-1000, default 100).", type="integer"),
                ],
            ),
            "delete": _op(
                "Forget every dead letter (of an account)",
                (200, _obj({"purged": {"type": "integer"}}, ["purged"]), "How many"),
                parameters=[account],
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
    spec.path(
        "/v1/dlq/{job_id}/replay",
        parameters=[job_id],
        operations={
            "post": _op("Put a dead letter back at the tail of its lane", (200, replayed, "Replayed"), 404)
        },
    )
    spec.path(
        "/v1/windows/{igsid}",
        parameters=[_param("igsid", "path", "The user's IGSID.")],
        operations={
            "get": _op(
                "The user's messaging window",
                (200, _ref("WindowInfo"), "The window"),
                422,
                parameters=[account],
            )
        },
    )
    accounts = _obj({"accounts": {"type": "array", "items": {"type": "object"}}}, ["accounts"])
    spec.path(
        "/v1/accounts",
        operations={
            "get": _op("Limits, usage, pause and backlog of every known account", (200, accounts, "Accounts"))
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
            )
            spec.components.schema(f"{name}Step", component=step)
            steps[kind] = f"#/components/schemas/{name}Step"
        job = _obj(
            {
                "kind": {"type": "string", "enum": [kind]},
                "recipient": _RECIPIENT,
                **args.get("properties", {}),
                **_OPTIONS,
            },
            ["kind", "recipient", *args.get("required", [])],
            additionalProperties=False,
            description=f"A {kind} job: its arguments (see {name}Args) plus the options.",
        )
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
    ):
        spec.components.schema(name, component=schema)
    _paths(spec)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return flask.jsonify(build_spec())
