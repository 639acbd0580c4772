"""The stored job envelope: JSON with a schema version, validated when written and again when read.

::

    {"v": 1, "id": "<account>.<random>", "account": "1784…", "recipient": "…", "kind": "text",
     "args": {...the kind's normalized arguments...}, "created_ms": 1764064800000, "due_ms": null,
     "key": null, "cancel_on_reply": false, "idem": null, "seq": null}

A producer may run older or newer code than the worker, so the worker loads every job again with
:func:`load_job`; a job written by a newer producer (``v`` > :data:`SCHEMA_VERSION`) is refused with a
clear message rather than half-understood. Tokens are never part of a job: any key that looks like a
token or secret, at any depth, is refused. Never pickle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, post_load, pre_load, validate, validates_schema

from ..errors import ValidationError
from .base import BaseSchema, Bool, Int, Label, Opaque, Str, flatten_errors, short
from .kinds import INSTANCES, KINDS
from .send import kind_error, recipient_error

SCHEMA_VERSION = 1
#: Largest epoch-ms value accepted (exact in a double: Redis sorted-set scores, Lua numbers).
MAX_MS = 2**53 - 1

_SECRET_KEY = re.compile(r"token|secret|authorization|password", re.IGNORECASE)
_SECRET_MESSAGE = "refused: a stored job never carries a token or secret"


def _secret_paths(data: Any) -> list[str]:
    """Dotted paths of mapping keys that look like tokens or secrets (iterative; cycle-safe)."""
    found: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, (Mapping, list, tuple)):
            if id(node) in seen:
                continue
            seen.add(id(node))
        if isinstance(node, Mapping):
            for key, value in node.items():
                sub = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and _SECRET_KEY.search(key):
                    found.append(sub)
                stack.append((sub, value))
        elif isinstance(node, (list, tuple)):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(node))
    return sorted(found)


def _check_kind(kind: str) -> str:
    bad = kind_error(kind)
    if bad:
        raise MarshmallowError(bad)
    return kind


def _nullable_label(description: str) -> Str:
    meta = {"description": description, "maxLength": 256}
    return Str(load_default=None, validate=Label(256), metadata=meta)


class JobSchema(BaseSchema):
    """One stored send job (see the module docstring)."""

    v = Int(
        required=True,
        validate=validate.Range(min=1),
        metadata={"description": f"Schema version of the stored job (this code writes {SCHEMA_VERSION})."},
    )
    id = Str(required=True, validate=Opaque(256), metadata={"description": "Job id (`<account>.<random>`)."})
    account = Str(
        required=True,
        validate=Opaque(128, forbidden="{}"),
        metadata={"description": "Instagram professional account id the job is sent from."},
    )
    recipient = Str(
        required=True, metadata={"description": "IGSID of the recipient; for private_reply the comment id."}
    )
    kind = Str(
        required=True, validate=_check_kind, metadata={"description": "What to send.", "enum": list(KINDS)}
    )
    args = fields.Dict(
        required=True, metadata={"description": "The kind's arguments (see the kind schemas)."}
    )
    created_ms = Int(
        required=True,
        validate=validate.Range(min=0, max=MAX_MS),
        metadata={"description": "When the job was accepted (epoch ms)."},
    )
    due_ms = Int(
        load_default=None,
        validate=validate.Range(min=0, max=MAX_MS),
        metadata={
            "description": "When a delayed follow-up is due (epoch ms); null = send as soon as possible."
        },
    )
    key = _nullable_label("Follow-up key (a later follow-up with the same key replaces this one).")
    cancel_on_reply = Bool(
        load_default=False,
        metadata={"description": "Cancel this follow-up when the recipient writes before it is due."},
    )
    idem = _nullable_label("Idempotency key given by the producer.")
    seq = _nullable_label("Id of the sequence this job is a step of.")

    @pre_load
    def _version_and_secrets(self, data: Any, **kwargs: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        v = data.get("v")
        if isinstance(v, int) and not isinstance(v, bool) and v > SCHEMA_VERSION:
            raise MarshmallowError(
                {
                    "v": [
                        f"unsupported schema version {short(v)} "
                        f"(this worker understands up to {SCHEMA_VERSION})"
                    ]
                }
            )
        secrets = _secret_paths(data)
        if secrets:
            raise MarshmallowError({path: [_SECRET_MESSAGE] for path in secrets})
        return data

    @validates_schema(skip_on_field_errors=False)
    def _args_and_recipient_of_kind(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind = data.get("kind")
        if not isinstance(kind, str) or kind_error(kind):
            return
        errors: dict[str, Any] = {}
        if "recipient" in data:
            bad = recipient_error(kind, data["recipient"])
            if bad:
                errors["recipient"] = [bad]
        if "args" in data:
            try:
                INSTANCES[kind].load(data["args"])
            except MarshmallowError as exc:
                errors["args"] = exc.messages
        if errors:
            raise MarshmallowError(errors)

    @post_load
    def _normalize_args(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["args"] = INSTANCES[data["kind"]].load(data["args"])
        return data


_JOB = JobSchema()


def validate_job(job: object) -> dict[str, Any]:
    """The normalized job (defaults filled, args normalized).

    Raises:
        ValidationError: flat paths (``args.replies.3.title``, ``v``, ``_schema``).
    """
    try:
        return _JOB.load(job)  # type: ignore[arg-type]  # any input is checked by the schema
    except MarshmallowError as exc:
        raise ValidationError(flatten_errors(exc.messages)) from None


def dump_job(job: Mapping[str, Any]) -> str:
    """Validate ``job`` and return it as compact JSON (``v`` defaults to :data:`SCHEMA_VERSION`).

    Raises:
        ValidationError: for anything malformed (nothing is written).
    """
    if isinstance(job, Mapping) and "v" not in job:
        job = {"v": SCHEMA_VERSION, **job}
    data = validate_job(job)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {short(key)}")
        out[key] = value
    return out


def load_job(raw: str | bytes) -> dict[str, Any]:
    """Parse a stored job and validate it again (worker side).

    Raises:
        ValidationError: for anything malformed (not UTF-8, not JSON, ``NaN``, duplicate keys, a newer
            schema version, a bad field) and never any other exception.
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"stored job is not UTF-8: {exc.reason} at byte {exc.start}") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise ValidationError(f"stored job must be str or bytes, not {type(raw).__name__}")
    try:
        data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValidationError("stored job is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, our hooks, int digit limit
        raise ValidationError(f"stored job is not valid JSON: {str(exc)[:200]}") from None
    return validate_job(data)
