"""Redis as the `Cache` backend: shared by every API replica."""

from __future__ import annotations

import redis

from visioninapp.backends.cache import Cache

__all__ = ["RedisCache"]

_SCAN_BATCH = 500


class RedisCache(Cache):
    def __init__(self, url: str, key_prefix: str = "visioninapp:") -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._prefix = key_prefix

    def get(self, key: str) -> bytes | None:
        value = self._redis.get(self._prefix + key)
        return bytes(value) if value is not None else None  # type: ignore[arg-type]

    def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._redis.set(self._prefix + key, value, px=max(1, int(ttl_seconds * 1000)))

    def delete_prefix(self, prefix: str) -> None:
        # SCAN, not KEYS: never blocks the server on a large keyspace.
        batch: list[bytes] = []
        for key in self._redis.scan_iter(match=_glob_escape(self._prefix + prefix) + "*", count=_SCAN_BATCH):
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                self._redis.unlink(*batch)
                batch.clear()
        if batch:
            self._redis.unlink(*batch)

    def incr(self, key: str, ttl_seconds: float) -> int:
        full = self._prefix + key
        pipe = self._redis.pipeline()
        pipe.incr(full)
        pipe.pexpire(full, max(1, int(ttl_seconds * 1000)), nx=True)
        count, _ = pipe.execute()
        return int(count)

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def close(self) -> None:
        self._redis.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
