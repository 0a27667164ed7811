"""Cache for hot reads and counters for rate limits: Redis in production, in-process by default."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

__all__ = ["Cache", "MemoryCache"]


class Cache(ABC):
    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The cached value, or None when absent or expired."""

    @abstractmethod
    def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store a value that expires after `ttl_seconds`."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Invalidate every key starting with `prefix` (after a write)."""

    @abstractmethod
    def incr(self, key: str, ttl_seconds: float) -> int:
        """Increment a counter that expires `ttl_seconds` after its first increment."""


class MemoryCache(Cache):
    """A dict with expiry times; for one process (local mode)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[float, bytes]] = {}
        self._counters: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def _now(self) -> float:
        return self._clock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= self._now():
                del self._items[key]
                return None
            return item[1]

    def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        with self._lock:
            self._items[key] = (self._now() + ttl_seconds, value)

    def delete_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k.startswith(prefix)]:
                del self._items[key]

    def incr(self, key: str, ttl_seconds: float) -> int:
        with self._lock:
            expires, count = self._counters.get(key, (0.0, 0))
            if expires <= self._now():
                expires, count = self._now() + ttl_seconds, 0
            self._counters[key] = (expires, count + 1)
            return count + 1
