"""The two credential issuers of edge nodes (operator/edge_identity.py): IAM users with access keys
(boto3) and RabbitMQ users (management HTTP API). Both block: the exchange calls them in a thread."""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from visioninapp.k8s import Obj
from visioninapp.operator.edge_identity import broker_user_prefix, identity_path

__all__ = ["BrokerIssuer", "IamIssuer"]

POLICY_NAME = "visioninapp-edge"


class IamIssuer:
    """IAM users and access keys of edge nodes."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def ensure(self, name: str, path: str, policy: Obj, tags: dict[str, str]) -> None:
        iam = self.client
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
            iam.create_user(UserName=name, Path=path, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        iam.put_user_policy(UserName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))

    def new_key(self, name: str) -> tuple[str, str]:
        """A fresh access key; the user's older keys are deleted (only the Secret's one is valid)."""
        iam = self.client
        for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def revoke_node(self, node: str) -> list[str]:
        """Delete every IAM user of `node` (all namespaces) with its keys and policies."""
        iam, removed = self.client, []
        for page in iam.get_paginator("list_users").paginate(PathPrefix=identity_path(node)):
            for user in page["Users"]:
                name = user["UserName"]
                for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
                    iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
                for policy in iam.list_user_policies(UserName=name)["PolicyNames"]:
                    iam.delete_user_policy(UserName=name, PolicyName=policy)
                iam.delete_user(UserName=name)
                removed.append(name)
        return removed


# --- RabbitMQ (management HTTP API, blocking: called in a thread) --------------------------------


class BrokerIssuer:
    """RabbitMQ users of edge nodes, made and removed through the management HTTP API."""

    def __init__(self, url: str, user: str, password: str, vhost: str = "/", timeout: float = 10.0) -> None:
        self.api = url.rstrip("/") + "/api"
        self.vhost, self.timeout = vhost, timeout
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _call(self, method: str, path: str, body: Obj | None = None, missing_ok: bool = False) -> Any:
        request = urllib.request.Request(
            self.api + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            if missing_ok and error.code == 404:
                return None
            detail = error.read().decode(errors="replace")[:300]
            raise RuntimeError(f"RabbitMQ management {method} {path}: {error.code} {detail}") from None
        return json.loads(raw) if raw else None

    def ensure(self, name: str, password: str, permissions: Mapping[str, str]) -> None:
        """Create (or re-password) `name` with `permissions` on the vhost only."""
        user = quote(name, safe="")
        self._call("PUT", f"/users/{user}", {"password": password, "tags": ""})
        self._call("PUT", f"/permissions/{quote(self.vhost, safe='')}/{user}", dict(permissions))

    def users(self, prefix: str) -> list[str]:
        return sorted(
            str(u["name"])
            for u in self._call("GET", "/users") or []
            if str(u.get("name", "")).startswith(prefix)
        )

    def close_connections(self, users: Iterable[str]) -> int:
        """Close the open connections (AMQP and stream) of `users`: deleting a user does not."""
        wanted, closed = set(users), 0
        for connection in self._call("GET", "/connections") or []:
            if connection.get("user") in wanted:
                self._call(
                    "DELETE", f"/connections/{quote(str(connection['name']), safe='')}", missing_ok=True
                )
                closed += 1
        return closed

    def revoke_node(self, node: str) -> list[str]:
        """Delete every broker user of `node` (all namespaces), then close their connections."""
        removed = self.users(broker_user_prefix(node))
        for name in removed:
            self._call("DELETE", f"/users/{quote(name, safe='')}", missing_ok=True)
        self.close_connections(removed)
        return removed
