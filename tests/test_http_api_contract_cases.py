"""Cases the OpenAPI contract run (tests/test_openapi_contract.py) found, each kept as a plain test
of the HTTP API on a real Redis: what the server answered wrongly, and what it answers now."""

from __future__ import annotations

from typing import Any

import pytest

from dmworker.web import create_app
from dmworker.web.api import MAX_HEADER_KEY_CHARS

API_TOKEN = "contract-cases-api-token-0123456789"


@pytest.fixture
def client(settings, rdb) -> Any:
    s = settings.with_overrides(api_tokens=(API_TOKEN,), window_policy="trust")
    return create_app(s, redis_client=rdb, publish=lambda a, r: None).test_client()


def _post(client: Any, body: Any, **headers: str) -> Any:
    return client.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {API_TOKEN}", **headers})


def test_an_idempotency_key_header_longer_than_documented_is_refused(client):
    # Given a header one character longer than the documented maximum
    job = {"kind": "text", "recipient": "4440001", "text": "hi", "idempotency_key": "own"}

    # When a job is posted with it (and with its own idempotency_key, so the header is not used)
    resp = _post(client, job, **{"Idempotency-Key": "k" * (MAX_HEADER_KEY_CHARS + 1)})

    # Then it is a validation error naming the header
    assert resp.status_code == 422, resp.json
    assert resp.json["error"] == "validation"
    assert list(resp.json["fields"]) == ["Idempotency-Key"]
    # and nothing was queued: the same job without the header is new, not a duplicate
    again = _post(client, job)
    assert again.status_code == 202, again.json
    assert again.json["jobs"][0]["duplicate"] is False


def test_an_idempotency_key_header_of_the_documented_length_is_accepted(client):
    resp = _post(
        client,
        [{"kind": "text", "recipient": "4440001", "text": "hi"}] * 2,
        **{"Idempotency-Key": "k" * MAX_HEADER_KEY_CHARS},
    )
    assert resp.status_code == 202, resp.json
    assert len(resp.json["jobs"]) == 2


def test_a_time_past_year_9999_in_utc_is_a_validation_error():
    from dmworker.due import due_ms
    from dmworker.errors import ValidationError

    with pytest.raises(ValidationError) as e:
        due_ms(None, "9999-12-31T23:59:59-23:59")  # year 10000 in UTC
    assert "at" in e.value.messages
