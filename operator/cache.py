"""The operator's object cache: the newest copy of every object it plans from, one store per kind.

Watches and the answers to our own writes both fill it, so a plan never works from a copy older than
what we wrote; an event that shows exactly what our last write returned is recognised as our own
(`is_own_write`) and needs no new plan. `Turns` serialises the plans of each object.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from visioninapp.k8s import Obj
from visioninapp.operator.context import Key

__all__ = ["DELETED_UIDS_KEPT", "KeyedLocks", "ObjectCache", "Store", "Turns", "newer"]

DELETED_UIDS_KEPT = 100_000  # deletions remembered; a late write's answer comes within seconds


def newer(a: Obj | None, b: Obj | None) -> Obj | None:
    """The fresher of two copies of one object (our own write's response vs. the watch's)."""
    if a is None or b is None:
        return a or b
    rv_a, rv_b = a["metadata"].get("resourceVersion", ""), b["metadata"].get("resourceVersion", "")
    if rv_a.isdigit() and rv_b.isdigit():
        return a if int(rv_a) >= int(rv_b) else b
    return b


def _key_of(meta: Mapping[str, Any]) -> Key:
    return meta.get("namespace", ""), meta["name"]


class Deletions:
    """Uids of objects seen deleted, oldest first and bounded: a write's answer can arrive after the
    watch reported the object gone, and must not bring it back."""

    def __init__(self) -> None:
        self._uids: dict[str, None] = {}

    def add(self, uid: str) -> None:
        self._uids[uid] = None
        while len(self._uids) > DELETED_UIDS_KEPT:
            del self._uids[next(iter(self._uids))]  # the oldest

    def __contains__(self, uid: object) -> bool:
        return uid in self._uids


class Store(dict[Key, Obj]):
    """The newest copy of each object of one kind, by (namespace, name)."""

    def __init__(self, deletions: Deletions) -> None:
        super().__init__()
        self._deletions = deletions

    def remember(self, body: Obj) -> Obj:
        """Keep the newer of `body` and the cached copy; never an object whose deletion was seen."""
        if body["metadata"].get("uid") in self._deletions:
            return body
        key = _key_of(body["metadata"])
        newest = newer(body, self.get(key))
        assert newest is not None
        self[key] = newest
        return newest

    def forget(self, meta: Mapping[str, Any]) -> Obj | None:
        """The watch saw `meta`'s object deleted: drop it, and remember that it is gone. A newer object
        of the same name stays (kopf handles each object on its own, so a deleted object's event may
        come after its successor's creation)."""
        uid, key = meta.get("uid"), _key_of(meta)
        if uid:
            self._deletions.add(uid)
            cached_uid = (self.get(key) or {}).get("metadata", {}).get("uid")
            if cached_uid is not None and cached_uid != uid:
                return None
        return self.pop(key, None)

    def is_own_write(self, body: Mapping[str, Any]) -> bool:
        """The event shows exactly what our last write returned: it was planned on already."""
        known = self.get(_key_of(body["metadata"]))
        return known is not None and known["metadata"].get("resourceVersion") == body["metadata"].get(
            "resourceVersion"
        )


class ObjectCache:
    """Every kind the operator plans from, each in a store of its own."""

    def __init__(self) -> None:
        deletions = Deletions()
        self.training_jobs = Store(deletions)
        self.jobs = Store(deletions)  # trainer Jobs
        self.artifacts = Store(deletions)
        self.deployments = Store(deletions)
        self.daemonsets = Store(deletions)
        self.configmaps = Store(deletions)  # the cameras' ConfigMaps, from our writes (no watch)
        self.nodes: dict[str, Obj] = {}
        self.trainer_pods: defaultdict[Key, dict[str, Obj]] = defaultdict(dict)  # by (ns, Job)
        self.edge_pods: defaultdict[Key, dict[str, Obj]] = defaultdict(dict)  # by (ns, EdgeDeployment)


class KeyedLocks:
    """A lock per key, dropped once nobody holds or waits for it (keys come and go with objects)."""

    def __init__(self) -> None:
        self._locks: dict[Key, asyncio.Lock] = {}
        self._users: dict[Key, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


class Turns:
    """One plan at a time per object of a kind. With `coalesce`, events that arrive while a plan
    waits for its turn collapse into that plan (it reads the cache when it runs); `min_interval`
    spaces the plans of one object (a fleet sends events in bursts)."""

    def __init__(self, coalesce: bool = True, min_interval: float = 0.0) -> None:
        self.coalesce, self.min_interval = coalesce, min_interval
        self._locks = KeyedLocks()
        self._pending: set[Key] = set()
        self._next_at: dict[Key, float] = {}

    async def run(self, key: Key, plan: Callable[[], Awaitable[None]]) -> None:
        if self.coalesce and key in self._pending:
            return  # a plan is already queued: it will see this event's state too
        self._pending.add(key)
        waiting = True
        try:
            async with self._locks.hold(key):
                if self.min_interval:
                    loop = asyncio.get_running_loop()
                    delay = self._next_at.get(key, 0.0) - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._next_at[key] = loop.time() + self.min_interval
                self._pending.discard(key)
                waiting = False
                await plan()
        finally:
            if waiting:  # cancelled before its turn: later events must not count on this plan
                self._pending.discard(key)

    def queued(self, key: Key) -> bool:
        return key in self._pending

    def forget(self, key: Key) -> None:
        """The object is gone: its spacing goes too (its lock went with its last plan)."""
        self._next_at.pop(key, None)
