"""The read cache of hot lists (those that ask the Kubernetes API), and its invalidation on writes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from visioninapp.api.container import ApiContainer

__all__ = ["cached_json", "invalidate", "list_cache_prefix"]


def list_cache_prefix(project: str, kind: str) -> str:
    return f"list:{project}:{kind}:"


def invalidate(container: ApiContainer, project: str, *kinds: str) -> None:
    for kind in kinds:
        container.cache.delete_prefix(list_cache_prefix(project, kind))


_filling: dict[str, threading.Lock] = {}
_filling_guard = threading.Lock()


def cached_json(container: ApiContainer, key: str, produce: Callable[[], Any]) -> bytes:
    """The cached JSON of `key`; on a miss, `produce()` serialised, stored and returned.

    Concurrent misses of one key in this process wait for a single computation instead of each
    listing from the Kubernetes API (no thundering herd when an entry expires under load).
    """
    hit = container.cache.get(key)
    if hit is None:
        with _filling_guard:
            lock = _filling.setdefault(key, threading.Lock())
        with lock:
            hit = container.cache.get(key)
            if hit is None:
                hit = json.dumps(produce(), default=str, separators=(",", ":")).encode()
                container.cache.set(key, hit, container.settings.api_cache_ttl_seconds)
        with _filling_guard:
            _filling.pop(key, None)
    return hit
