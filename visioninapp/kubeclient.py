"""A small async Kubernetes client: the operator's writes (kopf does its watching) and the node agent.

It takes a `Connection` (from the in-cluster service account or a kubeconfig; kopf's
`ConnectionInfo` has the same fields, so the operator's one login serves kopf and this client) and
counts its requests for metrics.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from visioninapp.k8s import Obj

__all__ = ["Connection", "ConnectionInfo", "Kube", "KubeError", "load_connection"]

log = logging.getLogger(__name__)
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
# Unknown or duplicate fields in what we write are errors, not silently dropped: a status field
# missing from the CRD's schema would otherwise vanish without a trace.
STRICT = {"fieldValidation": "Strict"}
RETRIES_ON_429 = 10
WATCH_RETRY_SECONDS = (1.0, 30.0)  # a failed watch is tried again after 1 s, doubling up to 30 s


class ConnectionInfo(Protocol):
    """Where the API server is and how to log in: `Connection`, or kopf's `ConnectionInfo`."""

    @property
    def server(self) -> str: ...
    @property
    def ca_path(self) -> str | None: ...
    @property
    def ca_data(self) -> bytes | None: ...
    @property
    def insecure(self) -> bool | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def scheme(self) -> str | None: ...
    @property
    def token(self) -> str | None: ...
    @property
    def certificate_path(self) -> str | None: ...
    @property
    def certificate_data(self) -> bytes | None: ...
    @property
    def private_key_path(self) -> str | None: ...
    @property
    def private_key_data(self) -> bytes | None: ...


class KubeError(Exception):
    """A failed API call, with the API server's status code, reason and message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


@dataclass(frozen=True)
class Connection:
    server: str
    ca_path: str | None = None
    ca_data: bytes | None = None
    insecure: bool | None = None
    username: str | None = None
    password: str | None = None
    scheme: str | None = None
    token: str | None = None
    certificate_path: str | None = None
    certificate_data: bytes | None = None
    private_key_path: str | None = None
    private_key_data: bytes | None = None


def load_connection(kubeconfig: str | Path | None = None, context: str | None = None) -> Connection:
    """Credentials from the in-cluster service account, or from a kubeconfig (and context)."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and context is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None,
            context=context,
            client_configuration=configuration,
        )
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
    return Connection(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or ("Bearer" if token else None),
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def _ssl_context(info: ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    context = ssl.create_default_context(cafile=str(info.ca_path) if info.ca_path else None)
    if info.ca_data:
        context.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
    elif info.certificate_data and info.private_key_data:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert"), Path(tmp, "key")
            cert.write_bytes(base64.b64decode(info.certificate_data))
            key.write_bytes(base64.b64decode(info.private_key_data))
            context.load_cert_chain(str(cert), str(key))
    return context


async def _json_or_text(response: aiohttp.ClientResponse) -> Any:
    """The answer's JSON; a plain-text answer (`404 page not found` for a group not served yet) as
    `{"message": text}`, so that it becomes a KubeError like any other."""
    body = await response.read()
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except ValueError:
        return {"message": body.decode(errors="replace").strip()}


class Kube:
    """`await kube.create("batch/v1", "jobs", ns, body)` and friends, over one HTTP session."""

    def __init__(
        self, info: ConnectionInfo, concurrency: int = 64, user_agent: str = "visioninapp-operator"
    ) -> None:
        self.info, self.concurrency, self.user_agent = info, concurrency, user_agent
        self.requests: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json", "User-Agent": self.user_agent}
            if self.info.token:
                headers["Authorization"] = f"{self.info.scheme or 'Bearer'} {self.info.token}"
            auth = (
                aiohttp.BasicAuth(self.info.username, self.info.password or "")
                if self.info.username
                else None
            )
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self.info), limit=self.concurrency)
            self._session = aiohttp.ClientSession(
                base_url=self.info.server.rstrip("/") + "/",
                headers=headers,
                auth=auth,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=60),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def path(
        api_version: str, plural: str, namespace: str | None, name: str | None = None, sub: str | None = None
    ) -> str:
        base = f"api/{api_version}" if "/" not in api_version else f"apis/{api_version}"
        parts = [base, *(["namespaces", namespace] if namespace else []), plural, name, sub]
        return "/".join(p for p in parts if p)

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", **params: str
    ) -> Obj:
        """One API call; 429 (the server's flow control, or a resource whose storage is still
        starting) is retried after the server's Retry-After, up to `RETRIES_ON_429` times."""
        session = await self._client()
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in range(RETRIES_ON_429 + 1):
            self.requests[method] += 1
            async with session.request(
                method, path, json=body, params=params or None, headers=headers
            ) as response:
                payload = await _json_or_text(response)
                if response.status == 429 and attempt < RETRIES_ON_429:
                    retry_after = float(response.headers.get("Retry-After") or 1)
                    await asyncio.sleep(min(retry_after, 10.0))
                    continue
                if response.status >= 400:
                    payload = payload if isinstance(payload, dict) else {}
                    raise KubeError(
                        response.status, payload.get("reason", ""), payload.get("message", str(payload))
                    )
                return payload if isinstance(payload, dict) else {}
        raise AssertionError("unreachable")

    async def text(self, path: str, **params: str) -> str:
        """A GET whose answer is text, not JSON (pod logs)."""
        session = await self._client()
        self.requests["GET"] += 1
        async with session.get(path, params=params or None) as response:
            body = await response.text()
            if response.status >= 400:
                raise KubeError(response.status, "", body)
            return body

    async def watch(
        self, api_version: str, plural: str, label_selector: str, on_reset: Any, on_event: Any
    ) -> None:
        """List then watch `plural` cluster-wide forever, resuming from the last resourceVersion.

        `on_reset(items)` gets every full listing (start, and after 410 Gone or a broken stream);
        `on_event(type, object)` each change. A lean alternative to kopf's per-event machinery for
        the high-volume pod events of large fleets.
        """
        path = self.path(api_version, plural, None)
        delay = WATCH_RETRY_SECONDS[0]
        while True:
            try:
                listing = await self.request("GET", path, labelSelector=label_selector)
                on_reset(listing.get("items", []))
                version = listing["metadata"]["resourceVersion"]
                while version is not None:
                    version = await self._watch_once(path, label_selector, version, on_event)
                    delay = WATCH_RETRY_SECONDS[0]  # a watch ran: the next failure starts afresh
            except (aiohttp.ClientError, KubeError, TimeoutError) as error:
                # A refused watch (RBAC) is a misconfiguration to fix, not a reason to poll hard.
                level = (
                    logging.ERROR if isinstance(error, KubeError) and error.code == 403 else logging.WARNING
                )
                log.log(level, "watch of %s failed (%s); listing again in %.0f s", plural, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_RETRY_SECONDS[1])

    async def _watch_once(self, path: str, label_selector: str, version: str, on_event: Any) -> str | None:
        """One watch request; the version to resume from, or None when a fresh listing is needed."""
        session = await self._client()
        params = {"watch": "true", "resourceVersion": version, "labelSelector": label_selector}
        params |= {"allowWatchBookmarks": "true", "timeoutSeconds": "300"}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with session.get(path, params=params, timeout=timeout) as response:
            if response.status >= 400:
                raise KubeError(response.status, "WatchFailed", await response.text())
            async for line in response.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)  # pods are large; ~4x faster than json's
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    return None  # 410 Gone (history expired) or another error: list again
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if event.get("type") != "BOOKMARK":
                    on_event(event["type"], obj)
        return version

    async def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self.request("GET", self.path(api_version, plural, namespace, name))
        except KubeError as error:
            if error.code == 404:
                return None
            raise

    async def list(
        self, api_version: str, plural: str, namespace: str | None, label_selector: str = ""
    ) -> list[Obj]:
        params = {"labelSelector": label_selector} if label_selector else {}
        result = await self.request("GET", self.path(api_version, plural, namespace), **params)
        return list(result.get("items", []))

    async def create(self, api_version: str, plural: str, namespace: str | None, body: Obj) -> Obj | None:
        """Create; None when it already exists (every name we create is deterministic)."""
        try:
            return await self.request("POST", self.path(api_version, plural, namespace), body, **STRICT)
        except KubeError as error:
            if error.code == 409 and error.reason == "AlreadyExists":
                return None
            raise

    async def patch(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: Obj,
        sub: str | None = None,
    ) -> Obj:
        return await self.request(
            "PATCH", self.path(api_version, plural, namespace, name, sub), patch, MERGE, **STRICT
        )

    async def delete(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
        grace_seconds: int | None = None,
    ) -> bool:
        """Delete (dependents too, in the background); False when it was already gone."""
        options: Obj = {"propagationPolicy": propagation}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            await self.request("DELETE", self.path(api_version, plural, namespace, name), options)
            return True
        except KubeError as error:
            if error.code == 404:
                return False
            raise
