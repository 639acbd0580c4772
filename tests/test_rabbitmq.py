"""RabbitMQ as the Celery broker (Redis keeps dmworker's state): the same delivery guarantees."""

from __future__ import annotations

import contextlib
import socket

import pytest
from conftest import ACCOUNT
from kombu import Connection

from dmworker.outbox import Outbox
from dmworker.testing import Accounting, ProcessGroup, wait_until

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbit_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _rabbit_up(), reason="no RabbitMQ at 127.0.0.1:5672")


def _amqp_publisher(queue: str):
    from celery import Celery

    app = Celery("dmworker-test-amqp", set_as_current=False)
    app.conf.update(broker_url=AMQP_URL, task_serializer="json", accept_content=["json"])
    return lambda account, recipient: app.send_task(
        "dmworker.process_lane", (account, recipient), queue=queue
    )


@pytest.mark.slow
def test_rabbitmq_broker_delivers_in_order_through_a_worker_kill(settings, sandbox, rdb):
    # Given 2 workers consuming from RabbitMQ, state in Redis
    s = settings.with_overrides(broker_url=AMQP_URL)
    queue = f"{s.key_prefix}.lanes"
    g = ProcessGroup(s)
    try:
        g.start_worker("r1", concurrency=8)
        g.start_worker("r2", concurrency=8)
        recipients = [str(610000 + i) for i in range(20)]
        sandbox.open_windows(ACCOUNT, recipients)
        ob = Outbox(settings=s, client=rdb, publish=_amqp_publisher(queue))
        # When 300 jobs are queued and one worker is killed mid-run
        items = [{"kind": "text", "recipient": r, "text": f"{r}#{n}"} for n in range(15) for r in recipients]
        ob.send_many(items[:150])
        assert wait_until(lambda: len(sandbox.sends(ACCOUNT)) >= 30, 30), g.log_tail("r1")
        g.kill("r2")
        in_flight = sum(1 for v in rdb.hvals(f"{s.key_prefix}:{{{ACCOUNT}}}:st") if '"state":"sending"' in v)
        ob.send_many(items[150:])
        g.start_worker("r2", concurrency=8)
        assert wait_until(lambda: len(sandbox.sends(ACCOUNT)) >= 300, 60), g.log_tail("r1")
        # Then nothing is lost or reordered
        expected = {r: [f"{r}#{n}" for n in range(15)] for r in recipients}
        acc = Accounting(
            expected, [(x["recipient"], x["body"]["message"]["text"]) for x in sandbox.sends(ACCOUNT)]
        )
        print("rabbitmq accounting:", acc)
        assert acc.lost == acc.reordered == acc.unexpected == 0 and acc.duplicated <= in_flight, str(acc)
    finally:
        g.stop_all()
        with Connection(AMQP_URL) as conn, contextlib.suppress(Exception):  # already gone
            conn.channel().queue_delete(queue)
