"""The synchronous Instagram Graph API client and the one map from the wire to errors.

::

    from dmworker.graph import InstagramClient, GraphError, TemporaryError, ThrottledError

    with InstagramClient(token, base_url="https://graph.instagram.com/v25.0") as client:
        result = client.messaging.send_text(igsid, "Hello")      # -> SendResult
        result = client.messaging.call("send_text", igsid, text="Hello")

See :mod:`dmworker.graph.errors` for the exception tree and :mod:`dmworker.graph.bodies` for the
pure body builders the worker can reuse.
"""

from .bodies import BUILDERS, build_body
from .client import DEFAULT_BASE_URL, GraphReply, InstagramClient
from .conversations import Conversation, Conversations, Message, Participant
from .errors import (
    GraphError,
    InvalidRequestError,
    OutcomeUnknownError,
    OutsideWindowError,
    PermanentError,
    PermissionDeniedError,
    PermissionError_,
    PolicyBlockedError,
    RecipientUnavailableError,
    TemporaryError,
    ThrottledError,
    TokenInvalidError,
    map_error,
    redact,
)
from .messaging import METHODS, Messaging, SendResult
from .usage import Usage, parse_usage

__all__ = [
    "BUILDERS",
    "DEFAULT_BASE_URL",
    "METHODS",
    "Conversation",
    "Conversations",
    "GraphError",
    "GraphReply",
    "InstagramClient",
    "InvalidRequestError",
    "Message",
    "Messaging",
    "OutcomeUnknownError",
    "OutsideWindowError",
    "Participant",
    "PermanentError",
    "PermissionDeniedError",
    "PermissionError_",
    "PolicyBlockedError",
    "RecipientUnavailableError",
    "SendResult",
    "TemporaryError",
    "ThrottledError",
    "TokenInvalidError",
    "Usage",
    "build_body",
    "map_error",
    "parse_usage",
    "redact",
]
