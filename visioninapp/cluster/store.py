"""The object store behind the Kubernetes API emulator: indexed, versioned, watchable.

It keeps the API semantics our operator relies on and nothing more: uid, resourceVersion,
generation (bumped on spec changes only), creationTimestamp, label and field selectors over an
index, the status subresource, merge and JSON patches, finalizers, cascading delete by
ownerReferences, admission hooks (schema and CEL validation of our CRs) and a bounded watch history.
All methods run on the emulator's event loop thread; none of them awaits, so each is atomic.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Admission",
    "ApiError",
    "ResourceType",
    "Store",
    "dig",
    "is_ready",
    "json_patch",
    "merge_patch",
    "now_iso",
    "object_matches",
    "parse_field_selector",
    "parse_label_selector",
]

Obj = dict[str, Any]
ResourceKey = tuple[str, str]  # (group, plural)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An API failure rendered as a Kubernetes `Status` (reason is Kubernetes' own vocabulary)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    printer_columns: tuple[
        tuple[str, str, str, str, int], ...
    ] = ()  # name, type, jsonPath, description, priority

    @property
    def key(self) -> ResourceKey:
        return (self.group, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def describe(self, name: str) -> str:
        return f'{self.plural}{"." + self.group if self.group else ""} "{name}"'


# An admission hook sees (type, new object, stored object or None) and raises ApiError to reject.
Admission = Callable[[ResourceType, Obj, "Obj | None"], None]


# --- selectors ----------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^(?P<not>!)?(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)"
    r"(?:\s*(?P<op>==|=|!=)\s*(?P<value>[-A-Za-z0-9_.]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?$"
)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # =, !=, in, notin, exists, !exists
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return value in self.values
        if self.op in ("!=", "notin"):
            return value not in self.values
        return (value is not None) == (self.op == "exists")


FieldSelector = list[tuple[list[str], bool, str]]


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Kubernetes label selector syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h`."""
    requirements = []
    for part in _split_top_level(text or ""):
        match = _REQUIREMENT.match(part)
        if not match:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        key = match["key"]
        if match["setop"]:
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            requirements.append(Requirement(key, match["setop"], values))
        elif match["op"]:
            requirements.append(
                Requirement(key, "!=" if match["op"] == "!=" else "=", frozenset([match["value"]]))
            )
        else:
            requirements.append(Requirement(key, "!exists" if match["not"] else "exists", frozenset()))
    return requirements


def parse_field_selector(text: str | None) -> FieldSelector:
    """`involvedObject.name=x,metadata.namespace!=y` → (path, equal?, value) triples."""
    selectors = []
    for part in _split_top_level(text or ""):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not match:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
        selectors.append((match[1].split("."), match[2] != "!=", match[3]))
    return selectors


def dig(obj: Any, path: list[str]) -> Any:
    """The value at a dotted path (`metadata.name` as ["metadata", "name"]); None when absent."""
    for step in path:
        obj = obj.get(step) if isinstance(obj, dict) else None
    return obj


def is_ready(obj: Obj) -> bool:
    """A pod's or a node's Ready condition is True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _field(obj: Any, path: list[str]) -> str:
    value = dig(obj, path)
    return "" if value is None else str(value)


def object_matches(obj: Obj, requirements: list[Requirement], fields: FieldSelector) -> bool:
    labels = obj["metadata"].get("labels") or {}
    if not all(r.matches(labels) for r in requirements):
        return False
    return all((_field(obj, path) == value) == equal for path, equal, value in fields)


# --- patches ------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise ApiError(422, "Invalid", f"JSON patch path {path!r} does not exist")
    return doc


def json_patch(doc: Obj, operations: list[Obj]) -> Obj:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        parts = _pointer(path)
        if not parts:
            raise ApiError(422, "Invalid", "JSON patch on the whole document is not supported")
        if op == "test":
            if _resolve(doc, parts, path) != operation.get("value"):
                raise ApiError(422, "Invalid", f"JSON patch test failed at {path!r}")
            continue
        if op in ("move", "copy"):
            value = copy.deepcopy(_resolve(doc, _pointer(operation["from"]), operation["from"]))
            if op == "move":
                json_patch_remove(doc, _pointer(operation["from"]), operation["from"])
        elif op in ("add", "replace"):
            value = copy.deepcopy(operation.get("value"))
        elif op == "remove":
            json_patch_remove(doc, parts, path)
            continue
        else:
            raise ApiError(422, "Invalid", f"unknown JSON patch operation {op!r}")
        parent = _resolve(doc, parts[:-1], path)
        last = parts[-1]
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            elif op == "replace":
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        elif isinstance(parent, dict):
            if op == "replace" and last not in parent:
                raise ApiError(422, "Invalid", f"JSON patch replace: {path!r} does not exist")
            parent[last] = value
        else:
            raise ApiError(422, "Invalid", f"JSON patch path {path!r} has no container")
    return doc


def json_patch_remove(doc: Any, parts: list[str], path: str) -> None:
    parent = _resolve(doc, parts[:-1], path)
    try:
        del parent[int(parts[-1]) if isinstance(parent, list) else parts[-1]]
    except (KeyError, IndexError, ValueError):
        raise ApiError(422, "Invalid", f"JSON patch remove: {path!r} does not exist") from None


# --- the store ----------------------------------------------------------------------------------


def _content(obj: Obj) -> Obj:
    """What `generation` tracks: everything except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Store:
    """Objects by resource → namespace → name, with label and owner indexes and watch queues."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.types: dict[ResourceKey, ResourceType] = {}
        self.admission: list[Admission] = []
        self.resource_version = 0
        self._objects: dict[ResourceKey, dict[str, dict[str, Obj]]] = defaultdict(lambda: defaultdict(dict))
        self._labels: dict[tuple[ResourceKey, str, str], set[tuple[str, str]]] = defaultdict(set)
        self._dependents: dict[str, set[tuple[ResourceKey, str, str]]] = defaultdict(set)
        self._history: dict[ResourceKey, deque[tuple[int, Obj]]] = defaultdict(
            lambda: deque(maxlen=history_limit)
        )
        self._watchers: dict[ResourceKey, set[asyncio.Queue[Obj]]] = defaultdict(set)
        self._uids: set[str] = set()
        self._listeners: list[Callable[[ResourceType, str, Obj], None]] = []

    # registration and lookup

    def register(self, rtype: ResourceType) -> None:
        self.types[rtype.key] = rtype

    def type_for(self, group: str, plural: str) -> ResourceType:
        try:
            return self.types[(group, plural)]
        except KeyError:
            name = f"{plural}.{group}" if group else plural
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({name})"
            ) from None

    def kind(self, kind: str, group: str | None = None) -> ResourceType:
        for rtype in self.types.values():
            if rtype.kind == kind and (group is None or rtype.group == group):
                return rtype
        raise KeyError(kind)

    def _find(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._objects[rtype.key][namespace if rtype.namespaced else ""].get(name)
        if obj is None:
            raise ApiError(
                404, "NotFound", f"{rtype.describe(name)} not found", {"name": name, "kind": rtype.plural}
            )
        return obj

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        return copy.deepcopy(self._find(rtype, namespace, name))

    def peek(self, rtype: ResourceType, namespace: str, name: str) -> Obj | None:
        """The stored object itself (read-only) or None."""
        return self._objects[rtype.key][namespace if rtype.namespaced else ""].get(name)

    def select(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Iterator[Obj]:
        """Stored objects (read-only) matching; equality label requirements go through the index."""
        requirements = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector)
        buckets = self._objects[rtype.key]
        candidates: Iterable[Obj]
        equal = [r for r in requirements if r.op == "=" and len(r.values) == 1]
        if equal:
            keys = set.intersection(*(self._labels[(rtype.key, r.key, next(iter(r.values)))] for r in equal))
            candidates = (buckets[ns][name] for ns, name in sorted(keys) if name in buckets[ns])
        elif namespace is not None:
            candidates = list(buckets[namespace].values())
        else:
            candidates = [obj for bucket in list(buckets.values()) for obj in bucket.values()]
        for obj in candidates:
            meta = obj["metadata"]
            if namespace is not None and rtype.namespaced and meta.get("namespace") != namespace:
                continue
            if object_matches(obj, requirements, fields):
                yield obj

    def list_objects(
        self, rtype: ResourceType, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        return [copy.deepcopy(o) for o in self.select(rtype, namespace, label_selector)]

    # writes

    def create(
        self, rtype: ResourceType, namespace: str | None, body: Obj, *, keep_status: bool = False
    ) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
            namespaces = self.types[("", "namespaces")]
            if self.peek(namespaces, "", namespace) is None:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
            namespace = ""
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta["name"]
        if self.peek(rtype, namespace, name) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f"{rtype.describe(name)} already exists",
                {"name": name, "kind": rtype.plural},
            )
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if rtype.has_status and not keep_status:
            obj.pop("status", None)
        for hook in self.admission:
            hook(rtype, obj, None)
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now_iso())
        for key in ("resourceVersion", "deletionTimestamp", "selfLink"):
            meta.pop(key, None)
        self._put(rtype, obj, None)
        return copy.deepcopy(obj)

    def restore(self, rtype: ResourceType, obj: Obj) -> None:
        """Put back an object saved from an earlier run as it was (uid, status, finalizers)."""
        meta = obj["metadata"]
        if self.peek(rtype, meta.get("namespace", ""), meta["name"]) is None:
            self._put(rtype, copy.deepcopy(obj), None)

    def update(
        self, rtype: ResourceType, namespace: str, name: str, body: Obj, *, subresource: str | None = None
    ) -> Obj:
        """A PUT: the whole object (or its status); `metadata.resourceVersion`, if given, must match."""
        old = self._find(rtype, namespace, name)
        given_rv = (body.get("metadata") or {}).get("resourceVersion")
        if given_rv and given_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {rtype.describe(name)}: the object has been modified; "
                "please apply your changes to the latest version and try again",
            )
        new = copy.deepcopy(body)
        if subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
        elif subresource:
            raise ApiError(405, "MethodNotAllowed", f"subresource {subresource!r} cannot be written here")
        else:
            if rtype.has_status:
                new["status"] = copy.deepcopy(old.get("status"))
            meta = new.setdefault("metadata", {})
            for key in ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
                else:
                    meta.pop(key, None)
            if old["metadata"].get("deletionTimestamp") and set(meta.get("finalizers") or []) - set(
                old["metadata"].get("finalizers") or []
            ):
                raise ApiError(
                    422, "Invalid", "no new finalizers can be added if the object is being deleted"
                )
        if new.get("status") is None:
            new.pop("status", None)
        new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
        if subresource is None and _content(new) != _content(old):
            for hook in self.admission:
                hook(rtype, new, old)
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        self._put(rtype, new, old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(rtype, new)
        return copy.deepcopy(new)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str = "application/merge-patch+json",
        *,
        subresource: str | None = None,
    ) -> Obj:
        old = self._find(rtype, namespace, name)
        if "json-patch" in content_type:
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            new = json_patch(old, patch)
        elif "merge-patch" in content_type:
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            new = merge_patch(old, patch)
            if not (patch.get("metadata") or {}).get("resourceVersion"):
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"patch type {content_type!r} is not supported by this emulator "
                "(use merge, strategic-merge or JSON patch; server-side apply is not emulated)",
            )
        return self.update(rtype, namespace, name, new, subresource=subresource)

    def delete(self, rtype: ResourceType, namespace: str, name: str, propagation: str | None = None) -> Obj:
        obj = self._find(rtype, namespace, name)
        # batch/v1 Jobs orphan their pods unless told otherwise, as in Kubernetes.
        propagation = propagation or ("Orphan" if rtype.key == ("batch", "jobs") else "Background")
        if propagation == "Orphan":
            self._orphan(obj)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                marked = copy.deepcopy(obj)
                marked["metadata"]["deletionTimestamp"] = now_iso()
                self._put(rtype, marked, obj)
                obj = marked
            return copy.deepcopy(obj)
        self._remove(rtype, obj)
        return copy.deepcopy(obj)

    # internals

    def _orphan(self, owner: Obj) -> None:
        uid = owner["metadata"]["uid"]
        for key, namespace, name in list(self._dependents.pop(uid, ())):
            rtype = self.types[key]
            child = self.peek(rtype, namespace, name)
            if child is not None:
                refs = [r for r in child["metadata"].get("ownerReferences", []) if r.get("uid") != uid]
                self.update(
                    rtype,
                    namespace,
                    name,
                    {**child, "metadata": {**child["metadata"], "ownerReferences": refs}},
                )

    def _put(self, rtype: ResourceType, obj: Obj, old: Obj | None) -> None:
        self.resource_version += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.resource_version)
        namespace, name = meta.get("namespace", ""), meta["name"]
        key = (namespace, name)
        if old is not None:
            for label, value in (old["metadata"].get("labels") or {}).items():
                self._labels[(rtype.key, label, value)].discard(key)
            for ref in old["metadata"].get("ownerReferences") or []:
                self._dependents[ref.get("uid", "")].discard((rtype.key, namespace, name))
        for label, value in (meta.get("labels") or {}).items():
            self._labels[(rtype.key, label, value)].add(key)
        for ref in meta.get("ownerReferences") or []:
            self._dependents[ref.get("uid", "")].add((rtype.key, namespace, name))
        self._objects[rtype.key][namespace][name] = obj
        self._uids.add(meta["uid"])
        self._emit(rtype, "MODIFIED" if old is not None else "ADDED", obj)

    def _remove(self, rtype: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        if self._objects[rtype.key][namespace].pop(name, None) is None:
            return
        self._uids.discard(meta["uid"])
        for label, value in (meta.get("labels") or {}).items():
            self._labels[(rtype.key, label, value)].discard((namespace, name))
        for ref in meta.get("ownerReferences") or []:
            self._dependents[ref.get("uid", "")].discard((rtype.key, namespace, name))
        self.resource_version += 1
        gone = {**obj, "metadata": {**meta, "resourceVersion": str(self.resource_version)}}
        self._emit(rtype, "DELETED", gone)
        # The garbage collector: dependents whose owners are all gone go too.
        for key, child_ns, child_name in list(self._dependents.pop(meta["uid"], ())):
            child_type = self.types[key]
            child = self.peek(child_type, child_ns, child_name)
            if child is None:
                continue
            owners = [r.get("uid") for r in child["metadata"].get("ownerReferences", [])]
            if all(uid == meta["uid"] or uid not in self._uids for uid in owners):
                self.delete(child_type, child_ns, child_name, "Background")
        if rtype.key == ("", "namespaces"):
            for key in list(self._objects):
                for child in list(self._objects[key].get(name, {}).values()):
                    self.delete(self.types[key], name, child["metadata"]["name"], "Background")

    def _emit(self, rtype: ResourceType, kind: str, obj: Obj) -> None:
        event = {"type": kind, "object": obj}
        self._history[rtype.key].append((self.resource_version, event))
        for queue in self._watchers[rtype.key]:
            queue.put_nowait(event)
        for listener in self._listeners:
            listener(rtype, kind, obj)

    # watching

    def on_change(self, listener: Callable[[ResourceType, str, Obj], None]) -> None:
        """Call `listener(type, event type, object)` synchronously on every change (controllers)."""
        self._listeners.append(listener)

    def subscribe(self, rtype: ResourceType) -> asyncio.Queue[Obj]:
        queue: asyncio.Queue[Obj] = asyncio.Queue()
        self._watchers[rtype.key].add(queue)
        return queue

    def close_watches(self) -> None:
        """End every open watch (the server is stopping): each gets an empty event."""
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait({})

    def unsubscribe(self, rtype: ResourceType, queue: asyncio.Queue[Obj]) -> None:
        self._watchers[rtype.key].discard(queue)

    def events_since(self, rtype: ResourceType, resource_version: int) -> list[Obj]:
        """Events after `resource_version`; 410 Gone when the bounded history no longer has them."""
        history = self._history[rtype.key]
        if history and len(history) == history.maxlen and history[0][0] > resource_version + 1:
            raise ApiError(410, "Expired", f"too old resource version: {resource_version} ({history[0][0]})")
        return [event for rv, event in history if rv > resource_version]
