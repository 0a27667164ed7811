"""A Kubernetes API over real HTTP for tests and local mode: kmock's emulator on an indexed store.

kmock's `KubernetesEmulator` gives us the HTTP server, discovery and Kubernetes-style errors; this
subclass routes object requests to `Store`, which keeps the semantics our operator relies on (see
store.py) and indexes objects so that the emulator is never the bottleneck. Custom resources are
registered by creating their CRDs, as on a cluster; our own kinds are validated with the
foundation's validator (schema and CEL), as the API server would with the generated CRDs.
It imitates Kubernetes for tests and local mode; it does not replace it in production.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
from kmock._internal import k8s, references, rendering

from visioninapp.cluster.store import (
    ApiError,
    Obj,
    ResourceType,
    Store,
    dig,
    is_ready,
    object_matches,
    parse_field_selector,
    parse_label_selector,
)
from visioninapp.validation import apply_defaults, validate

__all__ = ["ClusterEmulator"]

log = logging.getLogger(__name__)
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SERVER_VERSION = {
    "major": "1",
    "minor": "35",
    "gitVersion": "v1.35.0+visioninapp-emulator",
    "platform": "linux/amd64",
}
WATCH_IDLE_CHECK_SECONDS = 5.0


def _parse_path(path: str) -> tuple[str | None, str | None, str | None, str | None, str | None, str | None]:
    """`/api/v1/namespaces/ns/pods/name/status` → (group, version, namespace, plural, name, subresource)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    elif len(parts) == 2 and parts[0] == "apis":
        return parts[1], None, None, None, None, None
    else:
        return None, None, None, None, None, None
    namespace = None
    # /namespaces/X/<plural>... is namespaced; /namespaces, /namespaces/X[/status|finalize] is the Namespace.
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return group, version, namespace, plural, name, subresource


def _rbac_verb(method: str, watch: bool, named: bool) -> str:
    if watch:
        return "watch"
    if method == "GET":
        return "get" if named else "list"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def validate_ours(rtype: ResourceType, new: Obj, old: Obj | None) -> None:
    """Admission for our CRs: defaults, then the CRD's schema and CEL rules (as the API server would)."""
    if rtype.group != "visioninapp.io":
        return
    defaulted = apply_defaults(new)
    new["spec"] = defaulted.get("spec", new.get("spec"))
    errors = validate(new, old)
    if errors:
        name = (new.get("metadata") or {}).get("name", "")
        causes = [{"reason": "FieldValueInvalid", "message": e.message, "field": e.path} for e in errors]
        summary = "; ".join(f"{e.path}: {e.message}" for e in errors)
        raise ApiError(
            422,
            "Invalid",
            f'{rtype.kind}.{rtype.group} "{name}" is invalid: {summary}',
            {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes},
        )


@attrs.define(kw_only=True)
class ClusterEmulator(k8s.KubernetesEmulator):
    """The emulated API server. Use `Harness` (harness.py) to serve it with its controllers."""

    store: Store = attrs.field(factory=Store)
    request_limit: int = 1000  # how many requests are kept for assertions (kmock keeps all)
    request_counts: collections.Counter[str] = attrs.field(factory=collections.Counter)
    log_reader: Callable[[str, str], str | None] | None = None  # (namespace, pod) → its output
    # (bearer token, RBAC verb, API group, resource[/subresource]) of every request: what each client
    # needs, for the test that holds the chart's RBAC to it
    access: set[tuple[str, str, str, str]] = attrs.field(factory=set)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._requests = collections.deque(maxlen=self.request_limit)  # type: ignore[assignment]
        self.resources.load_bundled()
        for resource in list(self.resources):
            info = self.resources[resource]
            assert isinstance(resource, references.resource)
            if resource.group in (None, "metrics.k8s.io") or not resource.plural or not resource.version:
                continue
            self.store.register(
                ResourceType(
                    resource.group,
                    resource.version,
                    resource.plural,
                    info.kind or resource.plural,
                    bool(info.namespaced),
                    "status" in info.subresources,
                    info.singular or "",
                    tuple(sorted(info.shortnames)),
                    tuple(sorted(info.categories)),
                    tuple(sorted(s for s in info.subresources if s in ("status", "log", "scale"))),
                )
            )
        self.store.admission.append(validate_ours)
        self.store.admission.append(self._admit_crd)
        namespaces = self.store.types[("", "namespaces")]
        for name in DEFAULT_NAMESPACES:
            self.store.create(namespaces, None, {"metadata": {"name": name}})

    # CRDs register their resources, as on a cluster

    def _admit_crd(self, rtype: ResourceType, new: Obj, old: Obj | None) -> None:
        if rtype.key != ("apiextensions.k8s.io", "customresourcedefinitions"):
            return
        spec, names = new.get("spec", {}), new.get("spec", {}).get("names", {})
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            subresources = set((version.get("subresources") or {}).keys())
            self.store.register(
                ResourceType(
                    spec["group"],
                    version["name"],
                    names["plural"],
                    names["kind"],
                    spec.get("scope", "Namespaced") == "Namespaced",
                    "status" in subresources,
                    names.get("singular", names["kind"].lower()),
                    tuple(names.get("shortNames", [])),
                    tuple(names.get("categories", [])),
                    tuple(sorted(subresources)),
                    tuple(
                        (
                            c["name"],
                            c["type"],
                            c["jsonPath"],
                            c.get("description", ""),
                            int(c.get("priority", 0)),
                        )
                        for c in version.get("additionalPrinterColumns") or []
                    ),
                )
            )

    # HTTP

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        if body and "json" not in raw.headers.get("Content-Type", "application/json"):
            # kubectl's typed clients send protobuf for built-in kinds (`kubectl create namespace`):
            # say clearly that only JSON is read (apply -f sends JSON and works)
            return self._error(
                ApiError(415, "UnsupportedMediaType", f"the emulator reads JSON only, not {raw.content_type}")
            )
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return self._error(ApiError(400, "BadRequest", "the request body is not valid JSON"))
        if raw.path.startswith("/openapi/v3"):
            try:
                return aiohttp.web.json_response(self._openapi_v3(raw.path))
            except ApiError as error:
                return self._error(error)
        group, version, namespace, plural, name, subresource = _parse_path(raw.path)
        resource = references.resource(group, version, plural) if group is not None and version else None
        request = rendering.Request(
            id=self.request_counts.total(),
            method=raw.method,
            url=raw.url,
            params=dict(raw.query),
            headers=dict(raw.headers),
            body=body,
            data=data,
            resource=resource,
            namespace=namespace,
            name=name,
            subresource=subresource,
            raw_request=raw,
        )
        self._requests.append(request)
        watch = raw.query.get("watch") in ("true", "1")
        self.request_counts[f"{'WATCH' if watch else raw.method} {plural or raw.path}"] += 1
        if plural is not None:
            self.access.add(
                (
                    raw.headers.get("Authorization", "").removeprefix("Bearer "),
                    _rbac_verb(raw.method, watch, name is not None),
                    group or "",
                    f"{plural}/{subresource}" if subresource else plural,
                )
            )
        try:
            if group is None or plural is None:
                return aiohttp.web.json_response(self._discovery(raw.path, group, version))
            rtype = self.store.type_for(group, plural)
            if watch:
                return await self._watch(raw, rtype, namespace)
            if raw.method == "GET" and subresource == "log" and name is not None:
                return aiohttp.web.Response(text=self._pod_log(namespace or "", name))
            if raw.method == "GET" and "as=Table" in raw.headers.get("Accept", ""):
                result = self._serve(raw, rtype, namespace, name, subresource, data)
                items = result["items"] if name is None else [result]
                return aiohttp.web.json_response(
                    table(rtype, items, raw.query.get("includeObject") == "Object")
                )
            status = 201 if raw.method == "POST" else 200
            return aiohttp.web.json_response(
                self._serve(raw, rtype, namespace, name, subresource, data), status=status
            )
        except ApiError as error:
            return self._error(error)
        except Exception as error:  # a bug here must reach the client as a 500, not a hang
            log.exception("emulator failed on %s %s", raw.method, raw.path_qs)
            return self._error(ApiError(500, "InternalError", f"{type(error).__name__}: {error}"))

    @staticmethod
    def _error(error: ApiError) -> aiohttp.web.Response:
        return aiohttp.web.json_response(error.status(), status=error.code)

    def _discovery(self, path: str, group: str | None, version: str | None) -> Obj:
        """Discovery documents from the registered types (built-ins and CRDs alike)."""
        path = path.rstrip("/")
        types = list(self.store.types.values())
        if path == "/version":
            return dict(SERVER_VERSION)
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        groups: dict[str, list[str]] = {}
        for rtype in types:
            if rtype.group and rtype.version not in groups.setdefault(rtype.group, []):
                groups[rtype.group].append(rtype.version)

        def describe(name: str) -> Obj:
            versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
            return {"name": name, "versions": versions, "preferredVersion": versions[0]}

        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [describe(g) for g in sorted(groups)],
            }
        if path in ("", "/"):
            paths = ["/api", "/api/v1", "/apis", "/version"]
            paths += [f"/apis/{g}/{v}" for g in sorted(groups) for v in groups[g]]
            return {"paths": paths}
        if group and version is None and group in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **describe(group)}
        served = [t for t in types if t.group == group and t.version == version]
        if group is None or not served:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        resources = []
        for rtype in sorted(served, key=lambda t: t.plural):
            resources.append(
                {
                    "name": rtype.plural,
                    "singularName": rtype.singular or rtype.kind.lower(),
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": list(VERBS),
                    "shortNames": list(rtype.short_names),
                    "categories": list(rtype.categories),
                }
            )
            for sub in rtype.subresources:
                resources.append(
                    {
                        "name": f"{rtype.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rtype.namespaced,
                        "kind": rtype.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else str(version),
            "resources": resources,
        }

    def _group_versions(self) -> dict[str, list[ResourceType]]:
        """`api/v1` and `apis/<group>/<version>` with their resource types."""
        found: dict[str, list[ResourceType]] = {}
        for rtype in self.store.types.values():
            key = f"apis/{rtype.group}/{rtype.version}" if rtype.group else f"api/{rtype.version}"
            found.setdefault(key, []).append(rtype)
        return found

    def _openapi_v3(self, path: str) -> Obj:
        """OpenAPI v3 as kubectl reads it: every PATCH path takes `fieldValidation` (so kubectl leaves
        validation to this server, which checks our kinds against their CRDs), and our kinds' schemas
        come from their CRDs (`kubectl explain`)."""
        group_versions = self._group_versions()
        key = path.removeprefix("/openapi/v3").strip("/")
        if not key:
            return {
                "paths": {
                    gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={self.store.resource_version}"}
                    for gv in sorted(group_versions)
                }
            }
        if key not in group_versions:
            raise ApiError(404, "NotFound", f"no OpenAPI document for {key}")
        crds = {
            (crd["spec"]["group"], crd["spec"]["names"]["plural"]): crd
            for crd in self.store.select(
                self.store.types[("apiextensions.k8s.io", "customresourcedefinitions")]
            )
        }
        field_validation = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
        paths: Obj = {}
        schemas: Obj = {}
        for rtype in sorted(group_versions[key], key=lambda t: t.plural):
            gvk = [{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]
            scope = "namespaces/{namespace}/" if rtype.namespaced else ""
            paths[f"/{key}/{scope}{rtype.plural}/{{name}}"] = {
                "patch": {
                    "operationId": f"patch{rtype.kind}",
                    "parameters": [field_validation],
                    "x-kubernetes-group-version-kind": gvk[0],
                    "x-kubernetes-action": "patch",
                    "responses": {"200": {"description": "OK"}},
                }
            }
            crd = crds.get(rtype.key)
            if crd is None:
                continue  # built-in kinds: kubectl uses its compiled-in types
            version = next(v for v in crd["spec"]["versions"] if v["name"] == rtype.version)
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {}).update(
                apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
            )
            reverse_group = ".".join(reversed(rtype.group.split(".")))
            schemas[f"{reverse_group}.{rtype.version}.{rtype.kind}"] = {
                **schema,
                "x-kubernetes-group-version-kind": gvk,
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths,
            "components": {"schemas": schemas},
        }

    def _serve(
        self,
        raw: aiohttp.web.BaseRequest,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
        data: Any,
    ) -> Obj:
        store, query = self.store, raw.query
        if name is None:
            if raw.method == "GET":
                items = list(
                    store.select(rtype, namespace, query.get("labelSelector"), query.get("fieldSelector"))
                )
                return {
                    "kind": f"{rtype.kind}List",
                    "apiVersion": rtype.api_version,
                    "metadata": {"resourceVersion": str(store.resource_version)},
                    "items": items,
                }
            if raw.method == "POST":
                if not isinstance(data, dict):
                    raise ApiError(400, "BadRequest", "the body must be a JSON object")
                if query.get("dryRun"):
                    return data
                return store.create(rtype, namespace, data)
            raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported on a collection here")
        ns = namespace or ""
        if raw.method == "GET":
            return store.get(rtype, ns, name)
        if raw.method == "PUT":
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            return store.update(rtype, ns, name, data, subresource=subresource)
        if raw.method == "PATCH":
            content_type = raw.headers.get("Content-Type", "application/merge-patch+json")
            return store.patch(rtype, ns, name, data, content_type, subresource=subresource)
        if raw.method == "DELETE":
            propagation = query.get("propagationPolicy") or (data or {}).get("propagationPolicy")
            if propagation is None and (data or {}).get("orphanDependents") is True:
                propagation = "Orphan"
            return store.delete(rtype, ns, name, propagation)
        raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported here")

    def _pod_log(self, namespace: str, name: str) -> str:
        self.store.get(self.store.types[("", "pods")], namespace, name)  # 404 for an unknown pod
        text = self.log_reader(namespace, name) if self.log_reader else None
        if text is None:
            raise ApiError(400, "BadRequest", f'pod "{name}" has no logs (it has not run a process here)')
        return text

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, namespace: str | None
    ) -> aiohttp.web.StreamResponse:
        query = raw.query
        label_selector, field_selector = query.get("labelSelector"), query.get("fieldSelector")
        requirements, fields = parse_label_selector(label_selector), parse_field_selector(field_selector)

        def wanted(event: Obj) -> bool:
            obj = event["object"]
            if namespace is not None and obj["metadata"].get("namespace") != namespace:
                return False
            return object_matches(obj, requirements, fields)

        queue = self.store.subscribe(rtype)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            since = query.get("resourceVersion")
            try:
                if since in (None, "", "0"):
                    backlog = [
                        {"type": "ADDED", "object": obj}
                        for obj in self.store.select(rtype, namespace, label_selector, field_selector)
                    ]
                else:
                    backlog = [e for e in self.store.events_since(rtype, int(since)) if wanted(e)]
            except ApiError as error:
                backlog = [{"type": "ERROR", "object": error.status()}]
            await response.prepare(raw)
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            if backlog and backlog[-1]["type"] == "ERROR":
                return response
            deadline = asyncio.get_running_loop().time() + float(query.get("timeoutSeconds") or 1e9)
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), min(remaining, WATCH_IDLE_CHECK_SECONDS))
                except TimeoutError:
                    if raw.transport is None or raw.transport.is_closing():
                        break  # the client left
                    continue
                if not event:
                    break  # the server is stopping
                if wanted(event):
                    await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unsubscribe(rtype, queue)
        return response


def _age(timestamp: str | None) -> str:
    """How kubectl shows an age: 45s, 5m30s, 17m, 5h, 3d."""
    if not timestamp:
        return "<unknown>"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(timestamp)).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _pod_status(pod: Obj) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason", "Waiting"))
    return str((pod.get("status") or {}).get("phase", "Pending"))


def _job_status(job: Obj) -> str:
    conditions = (job.get("status") or {}).get("conditions") or []
    for type_, shown in (("Complete", "Complete"), ("Failed", "Failed"), ("Suspended", "Suspended")):
        if any(c.get("type") == type_ and c.get("status") == "True" for c in conditions):
            return shown
    return "Running"


Cell = Callable[[Obj], Any]
# kubectl's columns for the built-in kinds local-mode users look at (name, type, cell, priority)
BUILTIN_COLUMNS: dict[tuple[str, str], list[tuple[str, str, Cell, int]]] = {
    ("", "pods"): [
        (
            "Ready",
            "string",
            lambda p: (
                f"{sum(1 for c in (p.get('status') or {}).get('containerStatuses') or [] if c.get('ready'))}"
                f"/{len(p['spec'].get('containers', []))}"
            ),
            0,
        ),
        ("Status", "string", _pod_status, 0),
        (
            "Restarts",
            "integer",
            lambda p: sum(
                c.get("restartCount", 0) for c in (p.get("status") or {}).get("containerStatuses") or []
            ),
            0,
        ),
        ("Age", "date", lambda p: _age(p["metadata"].get("creationTimestamp")), 0),
        ("IP", "string", lambda p: (p.get("status") or {}).get("podIP", "<none>"), 1),
        ("Node", "string", lambda p: p["spec"].get("nodeName", "<none>"), 1),
    ],
    ("", "nodes"): [
        ("Status", "string", lambda n: "Ready" if is_ready(n) else "NotReady", 0),
        (
            "Roles",
            "string",
            lambda n: (
                ",".join(
                    k.removeprefix("node-role.kubernetes.io/")
                    for k in n["metadata"].get("labels", {})
                    if k.startswith("node-role.kubernetes.io/")
                )
                or "<none>"
            ),
            0,
        ),
        ("Age", "date", lambda n: _age(n["metadata"].get("creationTimestamp")), 0),
        ("Version", "string", lambda n: SERVER_VERSION["gitVersion"], 0),
    ],
    ("batch", "jobs"): [
        ("Status", "string", _job_status, 0),
        (
            "Completions",
            "string",
            lambda j: f"{(j.get('status') or {}).get('succeeded', 0)}/{j['spec'].get('completions', 1)}",
            0,
        ),
        ("Age", "date", lambda j: _age(j["metadata"].get("creationTimestamp")), 0),
    ],
    ("apps", "daemonsets"): [
        *(
            (title, "integer", lambda d, key=key: (d.get("status") or {}).get(key, 0), 0)
            for title, key in (
                ("Desired", "desiredNumberScheduled"),
                ("Current", "currentNumberScheduled"),
                ("Ready", "numberReady"),
                ("Up-to-date", "updatedNumberScheduled"),
            )
        ),
        ("Age", "date", lambda d: _age(d["metadata"].get("creationTimestamp")), 0),
    ],
}


def _crd_cell(path: str, kind: str) -> Cell:
    def cell(obj: Obj) -> Any:
        value = dig(obj, path.strip().lstrip(".").split("."))  # printer columns' simple JSONPaths
        return _age(value) if kind == "date" else value

    return cell


def _printer_cells(rtype: ResourceType) -> list[tuple[str, str, Cell, int, str]]:
    """Columns as (name, type, cell, priority, description): the CRD's printer columns, kubectl's
    for a few built-in kinds, else Age."""
    if rtype.printer_columns:
        return [
            (name, kind, _crd_cell(path, kind), priority, description)
            for name, kind, path, description, priority in rtype.printer_columns
        ]
    builtin = BUILTIN_COLUMNS.get(rtype.key)
    if builtin:
        return [(name, kind, cell, priority, name) for name, kind, cell, priority in builtin]
    return [("Age", "date", lambda obj: _age(obj["metadata"].get("creationTimestamp")), 0, "Age")]


def table(rtype: ResourceType, items: list[Obj], include_object: bool) -> Obj:
    """Server-side printing (kubectl shows printer columns only from a Table)."""
    columns = _printer_cells(rtype)
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    definitions += [
        {"name": n, "type": t, "format": "", "description": d, "priority": p} for n, t, _, p, d in columns
    ]
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"], *(cell(obj) for _, _, cell, _, _ in columns)]
        partial = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }
        rows.append({"cells": cells, "object": obj if include_object else partial})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": definitions,
        "rows": rows,
    }
