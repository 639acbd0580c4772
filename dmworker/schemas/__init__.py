"""marshmallow schemas of everything dmworker accepts: one per send kind, and the stored job.

::

    validate_send(kind, recipient, args)  -> normalized args      (producer, before enqueue)
    validate_sequence(recipient, steps)   -> [(kind, args), ...]  (producer, a sequence of sends)
    dump_job(job) -> JSON str;  load_job(raw) -> job dict         (Redis boundary, both directions)
    rate_class(kind, args)                -> "text" | "media" | "private_reply"

The arguments of a kind are exactly the keyword arguments of the client method
``METHOD_OF_KIND[kind]`` (recipient excluded). Every refusal is a
:class:`dmworker.errors.ValidationError` whose ``messages`` map flat paths (``replies.3.title``,
``steps.1.text``, ``args.elements.0.buttons.2.url``) to lists of messages.

Modules: :mod:`.base` (strict fields, validators, error flattening), :mod:`.nested` (buttons,
quick replies, template cards), :mod:`.kinds` (the per-kind schemas), :mod:`.send`
(validate_send, validate_sequence, rate_class), :mod:`.job` (the stored envelope).
"""

from __future__ import annotations

from .base import BaseSchema, flatten_errors
from .job import MAX_MS, SCHEMA_VERSION, JobSchema, dump_job, load_job, validate_job
from .kinds import (
    KINDS,
    MAX_TEXT_BYTES,
    MEDIA_TYPES,
    METHOD_OF_KIND,
    REACTIONS,
    SCHEMAS,
    ButtonTemplateArgs,
    GenericTemplateArgs,
    LikeHeartArgs,
    MarkSeenArgs,
    MediaArgs,
    MediaShareArgs,
    PrivateReplyArgs,
    QuickRepliesArgs,
    ReactArgs,
    TextArgs,
    TypingArgs,
    UnreactArgs,
)
from .nested import ButtonSchema, DefaultActionSchema, ElementSchema, QuickReplySchema
from .send import MAX_STEPS, rate_class, recipient_error, validate_send, validate_sequence

__all__ = [
    "KINDS",
    "MAX_MS",
    "MAX_STEPS",
    "MAX_TEXT_BYTES",
    "MEDIA_TYPES",
    "METHOD_OF_KIND",
    "REACTIONS",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "BaseSchema",
    "ButtonSchema",
    "ButtonTemplateArgs",
    "DefaultActionSchema",
    "ElementSchema",
    "GenericTemplateArgs",
    "JobSchema",
    "LikeHeartArgs",
    "MarkSeenArgs",
    "MediaArgs",
    "MediaShareArgs",
    "PrivateReplyArgs",
    "QuickRepliesArgs",
    "QuickReplySchema",
    "ReactArgs",
    "TextArgs",
    "TypingArgs",
    "UnreactArgs",
    "dump_job",
    "flatten_errors",
    "load_job",
    "rate_class",
    "recipient_error",
    "validate_job",
    "validate_send",
    "validate_sequence",
]
