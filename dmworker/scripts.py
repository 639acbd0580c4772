"""The Lua scripts of ``dmworker/lua/``, loaded once and registered once per Redis client.

Each script's header (in its ``.lua`` file) lists its KEYS, ARGV and return value.  Every
script starts with the ``_now.lua`` prelude: ``ARGV[1]`` is an injected clock in milliseconds
(tests), or ``''`` to use the Redis server's ``TIME`` — worker clocks never matter.  Scripts that
change a job's state also start with ``_lifecycle.lua`` (a job's life, written once: see
:mod:`dmworker.lifecycle`) and take the account block of keys and the retention arguments first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import NoScriptError

NAMES = (
    "enqueue",
    "step",
    "dispatch",
    "promote",
    "cancel",
    "inbound",
    "replay",
    "trim",
    "limit",
    "resume",
    "end_jobs",
    "claim",
    "reschedule",
    "seen",
    "observe",
)
#: The scripts built on the lifecycle prelude (account block in KEYS[1..8], retention in ARGV[2..4]).
LIFECYCLE = frozenset(
    {"enqueue", "step", "promote", "cancel", "inbound", "replay", "trim", "end_jobs", "seen", "observe"}
)

_lock = threading.Lock()
_registered: dict[int, dict[str, Script]] = {}


@cache
def source(name: str) -> str:
    """The full text of script ``name`` (prelude included)."""
    lua = Path(__file__).with_name("lua")
    parts = ["_now", "_lifecycle", name] if name in LIFECYCLE else ["_now", name]
    return "\n".join((lua / f"{part}.lua").read_text() for part in parts)


def scripts(client: redis.Redis) -> dict[str, Script]:
    """The registered scripts of ``client`` (EVALSHA, with a reload on NOSCRIPT)."""
    got = _registered.get(id(client))
    if got is None:
        with _lock:
            got = _registered.get(id(client))
            if got is None:
                got = {name: client.register_script(source(name)) for name in NAMES}
                _registered[id(client)] = got
    return got


def run(
    client: redis.Redis,
    name: str,
    keys: list[str],
    args: list[Any],
    now_ms: int | None = None,
    pipe: Any = None,
) -> Any:
    """Run script ``name`` with the clock ``now_ms`` (or Redis TIME when ``None``).

    With ``pipe`` the call is queued on that pipeline (of ``client``) instead of sent.
    """
    argv = ["" if now_ms is None else str(int(now_ms)), *args]
    script = scripts(client)[name]
    if pipe is not None:
        # a bare EVALSHA: redis-py's Script on a pipeline adds a SCRIPT EXISTS round trip per execute;
        # execute_pipeline() loads the scripts and runs the pipeline again on NOSCRIPT instead
        # (execute_command: a Redis Cluster pipeline blocks its evalsha() method; it is routed here
        # by the slot of its keys, all of one slot: left to itself, redis-py asks the server for the
        # keys of each EVALSHA in a cluster pipeline, one COMMAND GETKEYS round trip per call)
        options: dict[str, Any] = {}
        nodes = getattr(pipe, "nodes_manager", None)
        if nodes is not None and keys:
            options["target_nodes"] = nodes.get_node_from_slot(key_slot(keys[0].encode()))
        return pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *argv, **options)
    return script(keys=keys, args=argv)


def load_all(client: redis.Redis) -> None:
    """Load every script into Redis (after a restart or a SCRIPT FLUSH); on a Redis Cluster into
    every primary (``SCRIPT LOAD`` is sent to all of them)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        for name in NAMES:
            client.script_load(source(name))
        return
    pipe = client.pipeline(transaction=False)
    for name in NAMES:
        pipe.script_load(source(name))
    pipe.execute()


def execute_pipeline(
    client: redis.Redis, build: Callable[[Any], None], load: Sequence[str] = ()
) -> list[Any]:
    """Build a non-transactional pipeline with ``build(pipe)`` and run it in one round trip.

    ``load``: scripts the pipeline calls more than once where the calls' order matters (units of one
    lane): they are loaded by the pipeline's first commands (on every primary of a Redis Cluster).
    Each call of a pipeline runs on its own: with the script cache empty (Redis restarted, scripts
    flushed) and another client loading the scripts while this pipeline runs, the calls before that
    load would be refused with NOSCRIPT and the later ones would run, so the retry below would run
    the first ones after them.  With ``load``, none is refused.

    On NOSCRIPT (Redis restarted, scripts flushed) nothing of the scripts ran, unless another client
    loaded them midway (see ``load``): load them and run the pipeline once more (every dmworker
    script call is safe to repeat after a NOSCRIPT).
    """
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        skip = _queue_loads(client, pipe, load)
        build(pipe)
        try:
            return list(pipe.execute())[skip:]
        except NoScriptError:
            if attempt:
                raise
            load_all(client)
    raise AssertionError("unreachable")


def execute_each(
    client: redis.Redis, items: Sequence[Any], build_one: Callable[[Any, Any], None]
) -> list[Any]:
    """One reply per item of ``items``: ``build_one(pipe, item)`` queues exactly one script call for
    it, and all run in one non-transactional round trip.  The calls must be independent of each
    other (one per account, say): their order does not matter.

    On NOSCRIPT (an empty script cache: Redis restarted, scripts flushed) the replies of the calls
    that ran are kept and only the refused calls run again, after loading the scripts.  The calls
    that ran must not run twice: with another client loading the scripts midway through the round
    trip, the calls after that load ran, and running them again would lose what they answered (a
    ``dispatch`` call admits its lanes and answers them once: a second call answers none, and their
    Celery messages would wait two dispatch graces).  Any other error is raised (the first).

    Raises ``redis.exceptions.NoScriptError`` if calls are refused again after the load, and
    ``redis.RedisError`` for any other failure.
    """
    replies: list[Any] = [None] * len(items)
    todo = list(range(len(items)))
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        for i in todo:
            build_one(pipe, items[i])
        got = pipe.execute(raise_on_error=False)
        refused: list[int] = []
        for i, reply in zip(todo, got, strict=True):
            if isinstance(reply, NoScriptError):
                refused.append(i)
            elif isinstance(reply, Exception):
                raise reply
            else:
                replies[i] = reply
        if not refused:
            return replies
        if attempt:
            raise NoScriptError(f"{len(refused)} script calls refused after loading the scripts")
        load_all(client)
        todo = refused
    raise AssertionError("unreachable")


def _queue_loads(client: redis.Redis, pipe: Any, names: Sequence[str]) -> int:
    """Queue ``SCRIPT LOAD`` of ``names`` first on ``pipe`` (once per primary of a Redis Cluster:
    a cluster pipeline sends each node its commands in the order they were queued); how many."""
    if not names:
        return 0
    primaries = client.get_primaries() if hasattr(client, "get_primaries") else [None]
    n = 0
    for node in primaries:
        for name in names:
            if node is None:
                pipe.script_load(source(name))
            else:
                pipe.execute_command("SCRIPT LOAD", source(name), target_nodes=node)
            n += 1
    return n
