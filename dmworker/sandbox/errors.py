"""The Graph API error answers the sandbox gives, each built by one function (graph-api.md §5).

Every answer is the Meta envelope ``{"error": {"message", "type", "code", "error_subcode"?,
"is_transient", "fbtrace_id"}}`` with a fresh random ``fbtrace_id``::

    code  subcode   HTTP  when
    1     -         500   fault "5xx"                      (is_transient true)
    2     -         400   fault "transient"                (is_transient true)
    4     -         400   set_rate_limit exceeded; throttle(code=4)   (is_transient true)
    4     -         429   throttle(code=429), with Retry-After
    17/32/341/613/80002/80006  400   throttle(code=...)    (is_transient true)
    368   -         400   throttle(code=368)               (policy block, is_transient false)
    10    2534022   400   outside the messaging window / private reply too old
    100   -         400   invalid body ("(#100) Invalid parameter: <what>")
    100   33        400   unknown object / id that is not the token's account / unknown comment
    100   2534025   400   private reply already sent for this comment
    190   -/460     400   unknown (or missing) token / revoked token
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

THROTTLE_MESSAGES = {
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    341: "(#341) Application limit reached",
    368: "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    80002: "(#80002) There have been too many calls to this Instagram account. Wait a bit and try again.",
    80006: "(#80006) There have been too many messenger api calls to this account. Wait a bit and try again.",
    429: "(#4) Application request limit reached",
}
WINDOW_MESSAGE = "This message is sent outside of allowed window."


def fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(16)[:22]


class GraphError(Exception):
    """One error answer: HTTP status, envelope fields and extra headers."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        type_: str = "OAuthException",
        transient: bool = False,
        headers: Iterable[tuple[str, str]] = (),
        pct: int | None = None,
        regain_min: int = 0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.subcode = subcode
        self.message = message
        self.type = type_
        self.transient = transient
        self.headers = list(headers)
        self.pct = pct  # usage percentage to report instead of the measured one (throttles)
        self.regain_min = regain_min

    def envelope(self) -> dict[str, object]:
        err: dict[str, object] = {"message": self.message, "type": self.type, "code": self.code}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        err["is_transient"] = self.transient
        if self.code == 10:
            err["error_user_title"] = "Message not sent"
            err["error_user_msg"] = self.message
        err["fbtrace_id"] = fbtrace_id()
        return {"error": err}

    def body(self) -> bytes:
        return json.dumps(self.envelope()).encode()


def invalid(detail: str) -> GraphError:
    return GraphError(400, 100, f"(#100) Invalid parameter: {detail}")


def no_object(obj_id: str, method: str = "get") -> GraphError:
    return GraphError(
        400,
        100,
        f"Unsupported {method.lower()} request. Object with ID '{obj_id}' does not "
        "exist, cannot be loaded due to missing permissions, or does not support this "
        "operation",
        subcode=33,
    )


def bad_token(revoked: bool = False, missing: bool = False, expired: bool = False) -> GraphError:
    if missing:
        return GraphError(400, 190, "An access token is required to request this resource.")
    if expired:
        return GraphError(400, 190, "Error validating access token: Session has expired.", subcode=463)
    if revoked:
        return GraphError(
            400,
            190,
            "Error validating access token: The session has been invalidated "
            "because the user changed their password or Facebook has changed the session "
            "for security reasons.",
            subcode=460,
        )
    return GraphError(400, 190, "Invalid OAuth access token - Cannot parse access token")


def outside_window() -> GraphError:
    return GraphError(400, 10, WINDOW_MESSAGE, subcode=2534022, type_="IGApiException")


def already_replied(comment_id: str) -> GraphError:
    return GraphError(
        400,
        100,
        f"(#100) A private reply has already been sent for comment {comment_id}",
        subcode=2534025,
        type_="IGApiException",
    )


def throttled(code: int, remaining_s: float, retry_after_s: float | None) -> GraphError:
    """A throttle answer; ``estimated_time_to_regain_access`` is whole minutes left (may be 0)."""
    headers = []
    if code == 429 and retry_after_s is None:
        retry_after_s = max(1, int(remaining_s + 0.999))
    if retry_after_s is not None:
        headers.append(("Retry-After", str(int(retry_after_s + 0.999))))
    return GraphError(
        429 if code == 429 else 400,
        4 if code == 429 else code,
        THROTTLE_MESSAGES[code],
        transient=code != 368,
        headers=headers,
        pct=100,
        regain_min=int(remaining_s // 60),
    )


def rate_limited(pct: int) -> GraphError:
    return GraphError(400, 4, THROTTLE_MESSAGES[4], transient=True, pct=pct)


def fault(kind: str) -> GraphError:
    if kind == "5xx":
        return GraphError(500, 1, "An unknown error occurred", transient=True)
    return GraphError(
        400, 2, "An unexpected error has occurred. Please retry your request later.", transient=True
    )
