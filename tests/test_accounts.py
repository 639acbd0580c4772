"""The account registry on a real Redis: add / set_token / disable / enable / remove, the live
view every process reads accounts through, encryption at rest, and refusal of unknown accounts."""

from __future__ import annotations

import time

import pytest
from conftest import ACCOUNT

from dmworker.accounts import AccountError, AccountNotFoundError, Accounts
from dmworker.crypto import TokenCipher, TokenDecryptError, new_key
from dmworker.errors import ValidationError
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.runtime import live_settings
from dmworker.settings import ConfigError, Settings

NEW = "17841400000000777"
FB = "17841400000000888"
PAGE = "1029384756"
TOK_A = "IGAAregistry-secret-token-0777"
TOK_B = "IGAAregistry-secret-token-0778"
PAGE_TOK = "EAAregistrypagesecrettoken0888"


@pytest.fixture
def rsettings(settings: Settings, rdb) -> Settings:
    """Settings with a secret key and the live account view, re-read at most every 50 ms."""
    return live_settings(settings.with_overrides(secret_keys=(new_key(),), accounts_refresh_s=0.05), rdb)


@pytest.fixture
def accounts(rsettings: Settings, rdb) -> Accounts:
    return Accounts(rsettings, rdb)


def _seen(settings: Settings, account: str, present: bool = True, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (account in settings.accounts) == present:
            return True
        time.sleep(0.01)
    return False


def test_an_added_account_is_seen_by_the_live_view_with_its_token_login_and_limits(accounts, rsettings):
    # Given a running process's live view that does not know the account
    assert NEW not in rsettings.accounts
    # When it is added with its own text rate
    info = accounts.add(NEW, TOK_A, rates={"text": "20/s"}, burst=3)
    # Then within the refresh interval the view has it, with its token, rate and burst
    assert _seen(rsettings, NEW)
    conf = rsettings.accounts[NEW]
    assert conf.access_token == TOK_A and conf.login == "instagram" and conf.path_id == NEW
    assert str(rsettings.rate_for(NEW, "text")) == "20/s" and rsettings.burst_for(NEW) == 3
    assert info.state == "active" and info.source == "registry" and info.token_fingerprint == conf.fingerprint
    assert TOK_A not in repr(info) and TOK_A not in str(info.to_dict())
    # And static accounts are still there and read-only
    assert ACCOUNT in rsettings.accounts
    with pytest.raises(AccountError, match="read-only"):
        accounts.add(ACCOUNT, TOK_B)
    with pytest.raises(AccountError, match="already registered"):
        accounts.add(NEW, TOK_B)


def test_facebook_login_uses_the_facebook_host_and_the_page_id(accounts, rsettings):
    accounts.add(FB, PAGE_TOK, login="facebook", page_id=PAGE)
    assert _seen(rsettings, FB)
    assert rsettings.accounts[FB].path_id == PAGE
    assert rsettings.graph_url_for(FB) == rsettings.facebook_graph_url
    with pytest.raises(AccountError, match="page_id"):
        accounts.add("17841400000000889", PAGE_TOK, login="facebook")
    with pytest.raises(AccountError, match="login"):
        accounts.add("17841400000000889", PAGE_TOK, login="twitter")


def test_set_token_changes_the_token_and_remove_drops_the_account(accounts, rsettings):
    accounts.add(NEW, TOK_A)
    assert _seen(rsettings, NEW)
    accounts.set_token(NEW, TOK_B)
    deadline = time.monotonic() + 2
    while rsettings.accounts[NEW].access_token != TOK_B and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rsettings.accounts[NEW].access_token == TOK_B
    with pytest.raises(AccountError, match="read-only"):
        accounts.set_token(ACCOUNT, TOK_B)
    with pytest.raises(AccountNotFoundError):
        accounts.set_token("17841400000000999", TOK_B)
    assert accounts.remove(NEW) == {"account": NEW, "jobs": "keep", "ended": 0}
    assert _seen(rsettings, NEW, present=False)
    with pytest.raises(AccountNotFoundError):
        accounts.get(NEW)


def test_disable_holds_the_accounts_lanes_and_enable_releases_them(accounts, rsettings, rdb):
    # Given a registered account with one queued job
    accounts.add(NEW, TOK_A)
    assert _seen(rsettings, NEW)
    ob = Outbox(settings=rsettings, client=rdb, publish=lambda a, r: None)
    job = ob.send_text("5001", "hi", account=NEW)
    store = LaneStore(rsettings, rdb)
    # When it is disabled, the lane step hands out nothing: it waits on the pause
    assert accounts.disable(NEW).state == "disabled"
    step = store.step(NEW, "5001", "w1", acquire=True, token=TOK_A)
    assert step.action == "wait" and step.why == "paused:disabled"
    assert step.until_ms is not None and step.until_ms > time.time() * 1000 + 86_400_000
    assert ob.status(job.id).state == "queued"
    # When it is enabled again, the lane is due now and hands out the job
    assert accounts.enable(NEW).state == "active"
    ready = dict(rdb.zrange(store.acct(NEW).ready, 0, -1, withscores=True))
    assert ready["5001"] <= time.time() * 1000 + 1000
    step = store.step(NEW, "5001", "w1", acquire=True, token=TOK_A)
    assert step.action == "job" and step.job_id == job.id


def test_enable_lifts_only_a_disabled_pause(accounts, rdb, rsettings):
    accounts.add(NEW, TOK_A)
    pause = LaneStore(rsettings, rdb).acct(NEW).pause
    rdb.hset(pause, mapping={"until": int(time.time() * 1000) + 60_000, "reason": "throttled"})
    assert accounts.enable(NEW).state == "paused"
    assert rdb.hget(pause, "reason") == "throttled"


def test_state_reauth_required_while_the_rejected_token_is_configured(accounts, rdb, rsettings):
    # Given an account whose token Meta rejected (the lane step wrote this pause)
    info = accounts.add(NEW, TOK_A)
    pause = LaneStore(rsettings, rdb).acct(NEW).pause
    far = int(time.time() * 1000) + 10**12
    rdb.hset(pause, mapping={"until": far, "reason": "token_invalid", "token_fp": info.token_fingerprint})
    assert accounts.get(NEW).state == "reauth_required"
    # When a new token is set, the account is no longer waiting for one
    assert accounts.set_token(NEW, TOK_B).state == "active"


def test_sends_for_unknown_accounts_are_refused_at_enqueue(accounts, settings, rsettings, rdb):
    ob = Outbox(settings=rsettings, client=rdb, publish=lambda a, r: None)
    with pytest.raises(ValidationError, match="not registered"):
        ob.send_text("5001", "hi", account="17841400000000999")
    # An Outbox built with plain settings (no live view) asks the registry
    plain = Outbox(settings=settings, client=rdb, publish=lambda a, r: None)
    with pytest.raises(ValidationError, match="not registered"):
        plain.send_text("5001", "hi", account=NEW)
    accounts.add(NEW, TOK_A)
    assert plain.send_text("5001", "hi", account=NEW).account == NEW
    assert _seen(rsettings, NEW)
    assert ob.send_text("5001", "hi", account=NEW).account == NEW


def test_tokens_are_encrypted_at_rest_and_keys_rotate(accounts, rsettings, rdb, key_prefix):
    accounts.add(NEW, TOK_A, token_expires_at=time.time() + 30 * 86_400)
    accounts.add(FB, PAGE_TOK, login="facebook", page_id=PAGE)
    # Then no key and no value under the prefix holds a token in clear
    assert_no_token_in_redis(rdb, key_prefix, [TOK_A, PAGE_TOK])
    # A second key decrypts after rotation; a missing key is refused clearly
    old = rsettings.secret_keys[0]
    rotated = TokenCipher((new_key(), old))
    blob = TokenCipher((old,)).encrypt(TOK_A)
    assert rotated.decrypt(blob) == TOK_A
    with pytest.raises(TokenDecryptError):
        TokenCipher((new_key(),)).decrypt(blob)
    with pytest.raises(ConfigError, match="DMWORKER_SECRET_KEY"):
        Accounts(rsettings.with_overrides(secret_keys=()), rdb).add("17841400000000889", TOK_B)
    with pytest.raises(ConfigError, match="DMWORKER_SECRET_KEY"):
        Settings.from_env({"DMWORKER_SECRET_KEY": "not-a-key"})


def test_list_shows_static_and_registered_accounts(accounts):
    accounts.add(NEW, TOK_A)
    listed = {i.account: i for i in accounts.list()}
    assert listed[NEW].source == "registry" and listed[ACCOUNT].source == "static"
    assert listed[ACCOUNT].token_fingerprint and listed[ACCOUNT].state == "active"


def test_the_live_view_reads_only_what_changed_among_thousands_of_accounts(accounts, rsettings, rdb):
    # Given 2,000 registered accounts, loaded once by a process
    reg = accounts.registry
    cipher = accounts.cipher
    from dmworker.registry import AccountRecord
    from dmworker.settings import token_fingerprint

    pipe = rdb.pipeline(transaction=False)
    for n in range(2000):
        tok = f"IGAAbulk{n:06d}secret"
        rec = AccountRecord(account=f"9{n:08d}", tok=cipher.encrypt(tok), fp=token_fingerprint(tok))
        pipe.hset(reg.keys.accounts, rec.account, rec.dumps())
    pipe.execute()
    rdb.incr(reg.keys.version)
    live = rsettings.accounts
    live.refresh()
    assert len(live) == 2000 + 2
    # When one account changes
    accounts.set_token("900000007", "IGAAchanged-one-secret")
    t0 = time.perf_counter()
    live.refresh()
    one_change_s = time.perf_counter() - t0
    # Then the view has it, having read one record (not 2,000), and an unchanged check is one GET
    assert live["900000007"].access_token == "IGAAchanged-one-secret"
    t0 = time.perf_counter()
    for _ in range(100):
        live.refresh()
    unchanged_s = (time.perf_counter() - t0) / 100
    print(
        f"2,002 accounts: one change applied in {one_change_s * 1000:.2f} ms, "
        f"an unchanged check {unchanged_s * 1000:.3f} ms"
    )
    assert one_change_s < 0.05 and unchanged_s < 0.005


def assert_no_token_in_redis(rdb, prefix: str, tokens: list[str]) -> None:
    """Scan every key under ``prefix`` (names and every value, whatever the type) for ``tokens``."""
    keys = list(rdb.scan_iter(match=f"{prefix}:*", count=1000))
    assert keys
    for key in keys:
        kind = rdb.type(key)
        if kind == "string":
            values = [rdb.get(key)]
        elif kind == "hash":
            values = [x for kv in rdb.hgetall(key).items() for x in kv]
        elif kind == "list":
            values = rdb.lrange(key, 0, -1)
        elif kind == "set":
            values = list(rdb.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in rdb.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [str(e) for e in rdb.xrange(key)]
        else:
            values = []
        blob = key + "\n" + "\n".join(str(v) for v in values if v is not None)
        for tok in tokens:
            assert tok not in blob, f"a token in clear in {key}"


def test_remove_can_cancel_or_fail_the_accounts_queued_jobs(accounts, rsettings, rdb):
    accounts.add(NEW, TOK_A)
    accounts.add(FB, PAGE_TOK, login="facebook", page_id=PAGE)
    assert _seen(rsettings, NEW) and _seen(rsettings, FB)
    ob = Outbox(settings=rsettings, client=rdb, publish=lambda a, r: None)
    cancelled = [ob.send_text("5001", f"c{i}", account=NEW) for i in range(3)]
    failed = [ob.send_text("5002", f"f{i}", account=FB) for i in range(2)]
    assert accounts.remove(NEW, jobs="cancel") == {"account": NEW, "jobs": "cancel", "ended": 3}
    assert accounts.remove(FB, jobs="fail")["ended"] == 2
    assert {ob.status(j.id).state for j in cancelled} == {"cancelled"}
    assert {ob.status(j.id).state for j in failed} == {"failed"}
    with pytest.raises(AccountError, match="jobs must be"):
        accounts.remove(ACCOUNT, jobs="drop")
    # and new sends for them are refused
    assert _seen(rsettings, NEW, present=False)
    with pytest.raises(ValidationError, match="not registered"):
        ob.send_text("5001", "again", account=NEW)


def test_log_lines_never_show_a_registry_token(accounts, rsettings):
    import io
    import logging

    from dmworker.logs import setup_logging

    stream = io.StringIO()
    handler = setup_logging(rsettings, stream)
    try:
        accounts.add(NEW, TOK_A)
        assert _seen(rsettings, NEW)
        logging.getLogger("dmworker.test").warning("calling with %s and %s", TOK_A, "plain words here")
        accounts.set_token(NEW, "Zk9new0token0without0any0known0shape")
        deadline = time.monotonic() + 2
        while "Zk9new0token0without0any0known0shape" not in rsettings.accounts.secrets():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        logging.getLogger("dmworker.test").warning("now Zk9new0token0without0any0known0shape!")
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert TOK_A not in out and "Zk9new0token0without0any0known0shape" not in out
    assert out.count("[redacted]") == 2 and "plain words here" in out


def test_the_webhook_accepts_any_of_several_app_secrets():
    import hashlib
    import hmac

    from dmworker.web.webhook import signature_ok

    body = b'{"object":"instagram","entry":[]}'

    def sign(secret: str) -> str:
        return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    secrets = "app-one-secret, app-two-secret"
    assert signature_ok(secrets, body, sign("app-one-secret"))
    assert signature_ok(secrets, body, sign("app-two-secret"))
    assert not signature_ok(secrets, body, sign("app-three-secret"))
    assert not signature_ok(secrets, body + b" ", sign("app-two-secret"))
