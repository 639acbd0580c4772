"""dmworker's state on a real 3-primary Redis Cluster (the broker a separate plain Redis): keys of
an account in one slot, accounts on every primary, batches and dispatcher ticks that mix accounts,
scripts reloaded on every primary, and the worker scenario under SIGKILL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import TEST_TIMINGS
from ha_servers import (
    Cluster,
    PlainRedis,
    redis_server_binary,
    sandbox_accounts,
    spread_accounts,
    worker_scenario,
)

from dmworker import redisconn, scripts
from dmworker.accounts import Accounts
from dmworker.dispatcher import Dispatcher
from dmworker.errors import ValidationError
from dmworker.keys import AccountKeys
from dmworker.outbox import Outbox
from dmworker.registry import AccountError
from dmworker.settings import ConfigError, Rate, Settings
from dmworker.testing import ProcessGroup, wait_until

pytestmark = [
    pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server binary found"),
    pytest.mark.slow,  # starts a 3-primary cluster: the full suite and CI run it
]

ACCOUNTS = spread_accounts(per_node=1)  # one account on each primary


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as c:
        yield c


@pytest.fixture(scope="module")
def broker() -> Iterator[PlainRedis]:
    with PlainRedis() as b:
        yield b


@pytest.fixture
def csettings(cluster: Cluster, broker: PlainRedis, sandbox: object) -> Iterator[Settings]:
    """Settings on the cluster (broker: the plain Redis), with a token per account in the sandbox."""
    accounts = sandbox_accounts(sandbox, ACCOUNTS)
    prefix = f"dmwt{uuid.uuid4().hex[:10]}"
    s = Settings.from_env({}).with_overrides(
        redis_url=cluster.url,
        broker_url=broker.url,
        key_prefix=prefix,
        graph_url=sandbox.url + "/v25.0",  # type: ignore[attr-defined]
        accounts=accounts,
        default_account=ACCOUNTS[0],
        **TEST_TIMINGS,
        rates={**Settings().rates, "text": Rate(5000, 1)},
    )
    yield s
    for n in cluster.nodes:
        keys = list(n.client.scan_iter(match=f"{prefix}:*", count=1000))
        for k in keys:
            n.client.delete(k)
    broker.node.client.flushdb()


def test_a_cluster_url_is_parsed_and_needs_a_separate_broker() -> None:
    # Given a cluster URL with a password, and no broker
    s = Settings().with_overrides(redis_url="redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001")
    t = redisconn.parse_redis_url(s.redis_url or "")
    assert (t.kind, t.hosts, t.password) == ("cluster", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), "s3cret")
    # When the broker is derived, Then it is refused with a clear error that hides the password
    with pytest.raises(
        ConfigError, match="DMWORKER_BROKER_URL: required when DMWORKER_REDIS_URL is a Redis Cluster"
    ) as e:
        redisconn.broker_url(s)
    assert "s3cret" not in str(e.value)
    # and a db other than 0 is refused
    with pytest.raises(ConfigError, match="only db 0"):
        redisconn.parse_redis_url("redis+cluster://h:7000/3")
    # while a separate broker is used as given
    assert redisconn.broker_url(s.with_overrides(broker_url="amqp://guest:guest@127.0.0.1//")).startswith(
        "amqp"
    )


def test_accounts_on_all_three_primaries_batches_followups_and_the_dispatcher(
    cluster: Cluster, csettings: Settings, sandbox: object
) -> None:
    # Given one account on each primary (every key of an account on its node, checked)
    nodes = set()
    for a in ACCOUNTS:
        k = AccountKeys(csettings.key_prefix, a)
        where = {cluster.node_of(key) for key in [*k.block(), *k.tail(), k.lane("9"), k.ready, k.limiter]}
        assert len(where) == 1, (a, where)
        nodes |= where
    assert nodes == {0, 1, 2}
    rdb = redisconn.client(csettings)
    ob = Outbox(settings=csettings, client=rdb)
    for a in ACCOUNTS:
        sandbox.open_windows(a, ["41", "42"])  # type: ignore[attr-defined]
    # When one batch mixes the three accounts (now and follow-ups 1.5 s ahead), after the scripts
    # were flushed on every primary (NOSCRIPT on each node: reloaded everywhere)
    for n in cluster.nodes:
        n.client.script_flush()
    items = []
    for a in ACCOUNTS:
        items += [
            {"kind": "text", "account": a, "recipient": "41", "text": f"{a} now"},
            {"kind": "text", "account": a, "recipient": "42", "text": f"{a} later", "delay": 1.5},
        ]
    t0 = time.time()
    jobs = ob.send_many(items)
    assert [ob.status(j.id).state for j in jobs] == ["queued", "scheduled"] * 3
    # and a dispatcher tick (one cross-account pipeline) runs in this process beside a worker
    published: list[tuple[str, str]] = []
    d = Dispatcher(ob.store, lambda a, lane: published.append((a, lane)), name="t")
    for n in cluster.nodes:
        n.client.script_flush()
    d.tick()
    g = ProcessGroup(csettings)
    try:
        g.start_worker("w1", concurrency=4)
        assert wait_until(lambda: all(ob.status(j.id).state == "sent" for j in jobs), 30), g.log_tail("w1")
    finally:
        g.stop_all()
    # Then every job went out on its own account, and no follow-up before it was due
    for a in ACCOUNTS:
        sent = sandbox.sends(a)  # type: ignore[attr-defined]
        assert sorted(x["body"]["message"]["text"] for x in sent) == [f"{a} later", f"{a} now"]
        later = next(x for x in sent if x["body"]["message"]["text"].endswith("later"))
        assert later["t_ms"] >= (t0 + 1.5) * 1000 - 50
    # and the scripts are loaded on every primary again
    shas = [script.sha for script in scripts.scripts(rdb).values()]
    for n in cluster.nodes:
        assert all(n.client.script_exists(*shas)), n.name


@pytest.mark.slow
def test_worker_scenario_on_the_cluster_loses_nothing_and_keeps_order(
    csettings: Settings, sandbox: object
) -> None:
    # Given two worker processes on the cluster state, 3 accounts on 3 primaries
    # When 600 jobs are queued in batches mixing the accounts and a worker is SIGKILLed twice
    acc, doubt, _ = worker_scenario(csettings, sandbox, ACCOUNTS, recipients=20, per_recipient=10)
    print("cluster accounting:", acc, "in flight at kills:", doubt)
    # Then nothing is lost, reordered or unexpected; duplicates only from the sends in doubt
    assert acc.accepted == 600 and acc.delivered == 600, str(acc)
    assert acc.lost == 0 and acc.reordered == 0 and acc.unexpected == 0 and acc.dead == 0, str(acc)
    assert acc.duplicated <= doubt, str(acc)


def test_prefixes_and_account_ids_that_would_break_the_hash_tag_are_refused(csettings: Settings) -> None:
    # Given braces in the prefix or in a configured account id, When the settings are read,
    # Then the process does not start
    for env, var in (
        ({"DMWORKER_KEY_PREFIX": "dmw{x}"}, "DMWORKER_KEY_PREFIX"),
        ({"DMWORKER_ACCOUNT_ID": "178{1}", "DMWORKER_ACCESS_TOKEN": "t"}, "DMWORKER_ACCOUNT_ID"),
        ({"DMWORKER_REDIS_URL": "redis+cluster://:pw@h:7000"}, "DMWORKER_BROKER_URL"),
    ):
        with pytest.raises(ConfigError, match=var) as e:
            Settings.from_env(env)
        assert "pw" not in str(e.value)
    # and a send for such an account is refused at enqueue, nothing written
    ob = Outbox(settings=csettings, client=redisconn.client(csettings))
    with pytest.raises(ValidationError):
        ob.send_text("41", "hi", account="178{x}")
    # and the registry refuses to register one
    with pytest.raises(AccountError):
        Accounts(settings=csettings, client=redisconn.client(csettings)).add("178{x}", "IGAAx")
