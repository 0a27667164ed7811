"""The API's view of the clusters: our custom resources through the official `kubernetes` client.

One client per cluster role (training, rollout; the same cluster when one context serves both).
Objects are validated with the foundation's validator (schema + CEL) before they are sent, so a
bad request is answered with the field and the fix, not an opaque apiserver error.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException

from visioninapp.k8s import Obj
from visioninapp.resources import GROUP, VERSION, resource_for_kind
from visioninapp.settings import Settings
from visioninapp.validation import validate
from visioninapp.web.errors import ApiError, ErrorDetail

__all__ = ["Clusters", "KubeCluster"]

PROJECT_LABEL = "visioninapp.io/project"

# The client's configuration loaders are untyped; these are their signatures as the API calls them.
_load_incluster_config: Callable[..., None] = config.load_incluster_config
_load_kube_config: Callable[..., None] = config.load_kube_config


def _api_client(settings: Settings, context: str | None) -> client.ApiClient:
    in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ and context is None and settings.kubeconfig is None
    configuration = client.Configuration()
    if in_cluster:
        _load_incluster_config(client_configuration=configuration)
    else:
        try:
            _load_kube_config(
                config_file=str(settings.kubeconfig) if settings.kubeconfig else None,
                context=context,
                client_configuration=configuration,
            )
        except config.ConfigException as error:
            raise RuntimeError(
                f"no usable Kubernetes configuration ({error}): set VISIONINAPP_KUBECONFIG (and "
                "VISIONINAPP_KUBE_CONTEXT_TRAINING/_ROLLOUT), or run the API in a cluster"
            ) from None
    return client.ApiClient(configuration)


def _message(error: ApiException) -> tuple[str, list[ErrorDetail]]:
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        return str(error.reason), []
    causes = (body.get("details") or {}).get("causes") or []
    details = [ErrorDetail(field=c.get("field"), message=c.get("message", "")) for c in causes]
    return body.get("message") or str(error.reason), details


def translate(error: ApiException, what: str) -> ApiError:
    """An apiserver error as our error body, keeping its message and field causes."""
    message, details = _message(error)
    status = error.status if error.status in (400, 403, 404, 409, 422) else 502
    if status == 403:
        message = f"the API's service account may not do this: {message}"
    elif status == 502:
        message = f"Kubernetes API failed on {what}: {message}"
    return ApiError(status, message, details)


def _plural(kind: str) -> str:
    resource = resource_for_kind(kind)
    if resource is None:
        raise ValueError(f"{kind} is not one of our resources")
    return resource.plural


def _obj(value: object) -> Obj:
    """An object as the custom objects API returns it (typed `object` by the client)."""
    if not isinstance(value, dict):
        raise ApiError(502, f"Kubernetes API answered with a {type(value).__name__}, not an object")
    return value


@dataclass
class KubeCluster:
    """Custom objects and namespaces of one cluster."""

    api: client.ApiClient

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def list(self, kind: str, namespace: str) -> list[Obj]:
        plural = _plural(kind)
        try:
            found = _obj(self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural))
        except ApiException as error:
            raise translate(error, f"listing {plural}") from None
        return list(found.get("items", []))

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        plural = _plural(kind)
        try:
            return _obj(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))
        except ApiException as error:
            if error.status == 404:
                raise ApiError(404, f"{kind} {namespace}/{name} not found") from None
            raise translate(error, f"reading {kind} {name}") from None

    def find(self, kind: str, namespace: str, name: str) -> Obj | None:
        """`get`, or None when there is no such object."""
        try:
            return self.get(kind, namespace, name)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def create(self, obj: Obj) -> Obj:
        check(obj)
        kind = obj["kind"]
        namespace = obj["metadata"]["namespace"]
        plural = _plural(kind)
        try:
            return _obj(self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, obj))
        except ApiException as error:
            if error.status == 409:
                raise ApiError(
                    409, f"{kind} {namespace}/{obj['metadata']['name']} already exists; choose another name"
                ) from None
            raise translate(error, f"creating {kind}") from None

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        """A JSON merge patch, checked against the stored object (transition rules included)."""
        current = self.get(kind, namespace, name)
        check(_merge(current, patch), old=current)
        plural = _plural(kind)
        try:
            return _obj(
                self.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    patch,
                    _content_type="application/merge-patch+json",
                )
            )
        except ApiException as error:
            raise translate(error, f"updating {kind} {name}") from None

    def patch_status(
        self, kind: str, namespace: str, name: str, status: Obj, resource_version: str | None = None
    ) -> Obj:
        """A merge patch of `.status` (the status subresource: spec untouched, no admission rules);
        with `resource_version`, only if the object is still that version (else a 409)."""
        body: Obj = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return _obj(
                self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    _plural(kind),
                    name,
                    body,
                    _content_type="application/merge-patch+json",
                )
            )
        except ApiException as error:
            if error.status == 409:
                raise ApiError(409, f"{kind} {namespace}/{name} changed meanwhile") from None
            raise translate(error, f"updating the status of {kind} {name}") from None

    def delete(self, kind: str, namespace: str, name: str) -> None:
        plural = _plural(kind)
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, propagation_policy="Background"
            )
        except ApiException as error:
            if error.status == 404:
                raise ApiError(404, f"{kind} {namespace}/{name} not found") from None
            raise translate(error, f"deleting {kind} {name}") from None

    def events(self, namespace: str, kind: str, name: str) -> builtins.list[Obj]:
        """The Kubernetes Events about one object (core/v1, as `kubectl describe` shows them)."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        try:
            found = self.core.list_namespaced_event(namespace, field_selector=selector, limit=200)
        except ApiException as error:
            raise translate(error, f"listing the Events of {kind} {name}") from None
        return [_obj(self._plain(item)) for item in found.items or []]

    def nodes(self) -> builtins.list[Obj]:
        """The cluster's nodes (capacity, labels, taints)."""
        try:
            found = self.core.list_node(limit=500)
        except ApiException as error:
            raise translate(error, "listing nodes") from None
        return [_obj(self._plain(item)) for item in found.items or []]

    def _plain(self, model: object) -> object:
        """A client model as JSON-ready dicts (camelCase keys, ISO times), like the custom objects."""
        sanitize: Callable[[object], object] = self.api.sanitize_for_serialization  # untyped in the client
        return sanitize(model)

    def close(self) -> None:
        close: Callable[[], None] = self.api.close  # untyped in the client
        close()

    def ensure_namespace(self, name: str) -> None:
        body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={PROJECT_LABEL: "true"}))
        try:
            self.core.create_namespace(body)
        except ApiException as error:
            if error.status != 409:
                raise translate(error, f"creating namespace {name}") from None


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check(obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    errors = validate(obj, old)
    if errors:
        details = [ErrorDetail(field=e.path, message=e.message) for e in errors]
        summary = "; ".join(f"{e.path}: {e.message}" for e in errors[:3])
        raise ApiError(422, f"{obj.get('kind')} is invalid: {summary}", details)


class Clusters:
    """One `KubeCluster` per role: TrainingJobs and ModelArtifacts live in the training (GPU) cluster,
    EdgeDeployments in the edge cluster, where the operator's rollout controller and the edge nodes
    run; one cluster serves both unless a second context is configured."""

    def __init__(self, settings: Settings) -> None:
        self.training = KubeCluster(_api_client(settings, settings.kube_context_training))
        if settings.kube_context_rollout and settings.kube_context_rollout != settings.kube_context_training:
            self.rollout = KubeCluster(_api_client(settings, settings.kube_context_rollout))
        else:
            self.rollout = self.training

    def close(self) -> None:
        self.training.close()
        if self.rollout is not self.training:
            self.rollout.close()
