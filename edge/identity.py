"""The edge pod's own credentials: its projected token traded at the operator for its node's keys.

Nothing of the fleet's keys is in the pod's environment: the operator answers a verified pod with
the keys (and broker user) of that pod's node in that pod's namespace only
(operator/identity_exchange.py), and a revoked node gets 403. The keys are kept in memory; a refused
upload or publish fetches them again (at most every `RETRY_SECONDS`), so a node whose keys were
rotated picks the new ones up.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EdgeCredentials", "IdentityError", "NodeIdentity"]

log = logging.getLogger(__name__)
RETRY_SECONDS = 30.0


class IdentityError(RuntimeError):
    """The exchange refused this pod (revoked node, not an edge pod) or could not be reached."""


@dataclass(frozen=True)
class EdgeCredentials:
    access_key_id: str
    secret_access_key: str
    # the node's own RabbitMQ user (publish to the edge-events stream only), when the operator
    # issues broker users; the environment's broker user otherwise
    broker_user: str | None = None
    broker_password: str | None = None


class NodeIdentity:
    def __init__(
        self, url: str, token_file: Path, ca_file: Path | None = None, timeout: float = 10.0
    ) -> None:
        self.url, self.token_file, self.timeout = url, token_file, timeout
        self.context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._lock = threading.Lock()
        self._credentials: EdgeCredentials | None = None
        self._fetched = float("-inf")
        self._error: IdentityError | None = None

    def _exchange(self) -> EdgeCredentials:
        token = self.token_file.read_text().strip()  # the kubelet rotates it: read it each time
        request = urllib.request.Request(
            self.url, data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise IdentityError(f"credential exchange refused ({error.code}): {detail}") from None
        except OSError as error:
            raise IdentityError(f"credential exchange unreachable: {error}") from None
        try:
            s3, broker = body["s3"], body.get("rabbitmq") or {}
            return EdgeCredentials(
                s3["accessKeyId"], s3["secretAccessKey"], broker.get("user"), broker.get("password")
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise IdentityError(f"credential exchange answered without credentials: {error!r}") from None

    def credentials(self, refresh: bool = False) -> EdgeCredentials:
        """The node's keys; `refresh` trades the token again (not more often than every 30 s)."""
        with self._lock:
            due = time.monotonic() - self._fetched >= RETRY_SECONDS
            if (self._credentials is None or refresh) and due:
                self._fetched = time.monotonic()
                try:
                    self._credentials, self._error = self._exchange(), None
                except IdentityError as error:
                    self._credentials, self._error = None, error  # refused: the old keys are dead too
            if self._credentials is None:
                raise self._error or IdentityError("no credentials yet")
            return self._credentials
