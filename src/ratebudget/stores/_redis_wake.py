"""The Redis store's listener: wake-ups and live limits from other processes.

A batch that wakes waiters publishes their ids on ``{root}:wake``, and
``write_live`` publishes on the store's live channel. One thread per store
(``listen``) relays what it hears to this process's waiters (``wake``) and
reloads the live limits. On one server (or a cluster older than Redis 7) it
subscribes the pattern ``{*}:wake``, which every node relays; on a cluster
with sharded pub/sub it ``SSUBSCRIBE``s each root a process waits on, on
that root's shard (redis-py's ``ClusterPubSub`` moves a subscription whose
slot moved), roots subscribed as they come.

Whenever a subscription (re)starts, wake-ups sent before it were lost, so
every waiter concerned looks once, and so do the live limits. Errors end
the subscription; it starts again shortly, while waiters still look on
their own.
"""

from __future__ import annotations

import json
import weakref
from typing import TYPE_CHECKING, Any

from ._redis_link import text
from ._remote import wake

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ("listen",)


def listen(ref: weakref.ref[RedisStore]) -> None:
    """Relay wake-ups to this process's waiters (a store's listener
    thread). It holds its store only while it handles a message: a store
    dropped without ``close()`` is collected, and its listener ends within
    0.2 s instead of living on with the process."""
    sharded = _sharded(ref)
    while True:
        store = ref()
        if store is None or store._closing.is_set():
            return
        errors, closing = store._failed, store._closing
        pause = min(store.timeout, 1.0)
        live = store._live_channel
        try:
            pubsub = store._redis.pubsub()
        except errors:
            del store
            closing.wait(pause)
            continue
        del store
        heard: set[str] = set()  # the roots subscribed (sharded)
        try:
            if sharded:
                pubsub.ssubscribe(live)
            else:
                pubsub.psubscribe("{*}:wake")
            while True:
                store = ref()
                if store is None or closing.is_set():
                    return
                if sharded:
                    with store._wake_lock:
                        new = store._names - heard
                    if new:
                        pubsub.ssubscribe(*("{" + name + "}:wake" for name in new))
                        heard |= new
                del store
                message = (
                    pubsub.get_sharded_message(timeout=0.2)
                    if sharded
                    else pubsub.get_message(timeout=0.2)
                )
                store = ref()
                if store is None or closing.is_set():
                    return
                if message is not None:
                    _heard(store, message)
                del store
        except errors:
            closing.wait(pause)  # waiters still look on their own
        finally:
            try:
                pubsub.close()
            except errors:
                pass


def _sharded(ref: weakref.ref[RedisStore]) -> bool:
    """Whether the store's servers have sharded pub/sub (a cluster of Redis
    7+), asked until one answers."""
    store = ref()
    while store is not None and store.cluster and not store._closing.is_set():
        try:
            return store._shards()
        except store._failed:
            store._closing.wait(min(store.timeout, 1.0))
    return False


def _heard(store: RedisStore, message: dict[str, Any]) -> None:
    """A message of the listener's subscription."""
    kind = message.get("type")
    if kind == "psubscribe":
        # subscribed from now on: wake-ups sent before (while it
        # started, or reconnected) were lost, so every waiter looks once
        with store._wake_lock:
            names = list(store._names)
        for name in names:
            wake(store.url, name, None)
        store._live_changed()  # as may live limits have
        return
    channel = text(message.get("channel"))
    if kind == "ssubscribe":  # the same, for one channel (on its shard)
        if channel == store._live_channel:
            store._live_changed()
        else:
            wake(store.url, channel[1 : channel.rfind("}")], None)
        return
    if kind not in ("pmessage", "smessage"):
        return
    if channel == store._live_channel:
        store._live_changed()
        return
    # any name: a waiter may have queued (and been woken) before its
    # name was noted here; ``wake`` finds nobody for names nobody of
    # this process waits on
    name = channel[1 : channel.rfind("}")]
    wake(store.url, name, json.loads(text(message["data"])))
