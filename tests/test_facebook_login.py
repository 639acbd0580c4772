"""Facebook Login accounts (a Page access token on graph.facebook.com): sends go to
``/<page id>/messages`` with the Page token, and the conversations read side follows the same
choice; the sandbox refuses a Page token on the Instagram account's path, as Meta does."""

from __future__ import annotations

import pytest
from test_worker_e2e import _publisher

from dmworker.accounts import Accounts
from dmworker.clients import ClientPool
from dmworker.crypto import new_key
from dmworker.graph import InstagramClient
from dmworker.graph.errors import GraphError
from dmworker.outbox import Outbox
from dmworker.runtime import live_settings
from dmworker.settings import AccountConfig, token_fingerprint
from dmworker.testing import ProcessGroup, wait_until

pytestmark = pytest.mark.slow  # real processes: the full suite and CI run it

IG = "17841400000000950"
PAGE = "1029384756"
PAGE_TOKEN = "EAAfacebookpagetokensecret0950"


def test_a_facebook_login_accounts_sends_go_to_the_page_with_its_page_token(settings, sandbox, rdb):
    # Given a Page token (Facebook Login) and a worker whose facebook host is the sandbox (v24.0)
    key = new_key()
    s = settings.with_overrides(secret_keys=(key,), window_policy="trust")
    sandbox.add_token(PAGE_TOKEN, IG, login="facebook", page_id=PAGE)
    sandbox.open_window(IG, "8001")
    fb_url = sandbox.url + "/v24.0"
    g = ProcessGroup(
        s,
        extra_env={
            "DMWORKER_SECRET_KEY": key,
            "DMWORKER_ACCOUNTS_REFRESH_S": "1",
            "DMWORKER_FACEBOOK_GRAPH_URL": fb_url,
            "DMWORKER_WINDOW_POLICY": "trust",
        },
    )
    try:
        g.start_worker("w1", concurrency=4)
        # When the account is registered with its Page and a message is queued
        Accounts(s, rdb).add(IG, PAGE_TOKEN, login="facebook", page_id=PAGE)
        ob = Outbox(settings=s, client=rdb, publish=_publisher(s))
        job = ob.send_text("8001", "from the page", account=IG)
        assert wait_until(lambda: ob.status(job.id).state == "sent", 15), g.log_tail("w1")
    finally:
        g.stop_all()
    # Then Meta saw POST /v24.0/<page id>/messages with the Page token
    sends = sandbox.sends(IG)
    assert [(x["path"], x["token_fp"]) for x in sends] == [
        (f"/v24.0/{PAGE}/messages", token_fingerprint(PAGE_TOKEN))
    ]


def test_the_client_pool_and_the_read_side_use_the_page_id(settings, sandbox, rdb):
    sandbox.add_token(PAGE_TOKEN, IG, login="facebook", page_id=PAGE)
    sandbox.inbound(IG, "8002", "hello page")
    static = {IG: AccountConfig(IG, PAGE_TOKEN, login="facebook", page_id=PAGE)}
    s = settings.with_overrides(accounts=static, facebook_graph_url=sandbox.url + "/v24.0")
    pool = ClientPool(s)
    try:
        client = pool.get(IG)
        assert client is not None and client.account_id == PAGE and client.base_url.endswith("/v24.0")
        assert client.messaging.send_text("8002", "hi").message_id
    finally:
        pool.close()
    with InstagramClient.for_account(s, IG) as reader:
        convs = list(reader.conversations.list())
    assert len(convs) == 1
    paths = [r["path"] for r in sandbox.requests(IG)]
    assert paths == [f"/v24.0/{PAGE}/messages", f"/v24.0/{PAGE}/conversations"]
    # and the Instagram account's own path is refused with a Page token (what the page id avoids)
    wrong = InstagramClient(PAGE_TOKEN, base_url=sandbox.url + "/v24.0", account_id=IG)
    with wrong, pytest.raises(GraphError):
        wrong.messaging.send_text("8002", "wrong path")


def test_a_changed_token_or_host_rebuilds_the_pooled_client(settings, sandbox, rdb):
    s = live_settings(settings.with_overrides(secret_keys=(new_key(),), accounts_refresh_s=0.01), rdb)
    accounts = Accounts(s, rdb)
    accounts.add(IG, "IGAApool-token-one-000000", graph_url=sandbox.url + "/v23.0")
    pool = ClientPool(s)
    try:
        assert wait_until(lambda: pool.get(IG) is not None, 2, 0.01)
        first = pool.get(IG)
        assert first is pool.get(IG)
        accounts.set_token(IG, "IGAApool-token-two-000000")
        assert wait_until(lambda: pool.get(IG) is not first, 2, 0.01)
        assert pool.token(IG) == "IGAApool-token-two-000000"
        second = pool.get(IG)
        accounts.add(IG, None, login="facebook", page_id=PAGE, replace=True)
        assert wait_until(lambda: pool.get(IG) is not second, 2, 0.01)
        third = pool.get(IG)
        assert third is not None and third.account_id == PAGE and third.base_url == s.facebook_graph_url
    finally:
        pool.close()
