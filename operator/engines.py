"""Engines built on the devices (`format: tensorrt`): one builder per engine key, and its engine
recorded only once the operator has checked it.

Nodes report their engine in their EdgeEvents (`engine: {keyHash, state, sha256, uploaded}`). For
each engine key of a deployment the operator designates one builder: the node that reported the
key first (the smallest name among nodes first heard in the same pass; another one if it leaves
the deployment before the engine is recorded). Only that node's credentials may write the key's
prefix of the shared engine cache (`edge_policy(..., engine_writes)`, operator/edge_identity.py),
and only its report counts: when it says it uploaded an engine with a sha256, the operator hashes
the uploaded object itself, and only if both agree writes the manifest (`<prefix>/<key hash>/
manifest.json`, which no node may write) and records the sha256 in `status.engines`. Other nodes
of that key download the engine and check it against the manifest's sha256; a node whose report
disagrees, or that is not the builder, changes nothing.

`plan_engines` is pure; `publish_engine` is the one blocking step (run in a thread).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from visioninapp.backends.storage import ArtifactStore, ObjectNotFound, join_uri
from visioninapp.k8s import Obj
from visioninapp.operator.rollout_step import NodeHealth

__all__ = ["ENGINES_DIR", "Claim", "engine_prefix", "engine_writes", "plan_engines", "publish_engine"]

ENGINES_DIR = ".engines"  # under <artifacts uri>/<namespace>/: readable by the project's nodes
ENGINE_FILE, CLAIM_FILE, MANIFEST_FILE = "engine.onnx", "engine.json", "manifest.json"
MAX_RECORDS = 64


def engine_prefix(artifacts_uri: str, namespace: str) -> str:
    """The shared engine cache of a namespace (the edge's default `edge_engine_cache_uri`)."""
    return join_uri(artifacts_uri, namespace, ENGINES_DIR)


@dataclass(frozen=True)
class Claim:
    """The designated builder says it uploaded the engine of `key_hash` with this sha256."""

    key_hash: str
    builder: str
    sha256: str
    key: Mapping[str, str]


def plan_engines(
    records: Iterable[Obj], health: Mapping[str, NodeHealth], nodes: Iterable[str]
) -> tuple[list[Obj], list[Claim]]:
    """`status.engines` after these reports, and the builders' claims the operator must check."""
    covered = set(nodes)
    by_key = {str(r["keyHash"]): dict(r) for r in records}
    claims: list[Claim] = []
    reporters: dict[str, list[str]] = {}
    for node in sorted(health):
        report = health[node].engine
        if report is not None and node in covered:
            reporters.setdefault(report.key_hash, []).append(node)
    for key_hash, names in sorted(reporters.items()):
        record = by_key.get(key_hash)
        if record is None or (record.get("phase") == "Building" and record.get("builder") not in covered):
            if record is None and len(by_key) >= MAX_RECORDS:
                continue  # status is bounded: a key beyond it builds on every node, uploads nothing
            report = health[names[0]].engine
            assert report is not None
            record = {"keyHash": key_hash, "builder": names[0], "phase": "Building"}
            record.update({k: report.key[k] for k in ("device", "precision") if report.key.get(k)})
            by_key[key_hash] = record
        builder = str(record["builder"])
        heard = health.get(builder)
        report = heard.engine if heard is not None else None
        if (
            record.get("phase") == "Building"
            and report is not None
            and report.key_hash == key_hash
            and report.state == "ready"
            and report.uploaded
            and report.sha256
        ):
            claims.append(Claim(key_hash, builder, report.sha256, dict(report.key)))
    return sorted(by_key.values(), key=lambda r: str(r["keyHash"])), claims


def engine_writes(deployments: Iterable[Obj], node: str) -> list[str]:
    """Key hashes whose prefix `node` may write: those it is the designated builder of and whose
    engine is not recorded yet (once recorded, nobody writes it again)."""
    return sorted(
        {
            str(record["keyHash"])
            for body in deployments
            for record in (body.get("status") or {}).get("engines") or []
            if record.get("builder") == node and record.get("phase") == "Building"
        }
    )


def publish_engine(store: ArtifactStore, prefix: str, record: Obj, claim: Claim) -> Obj:
    """Check the builder's upload against its claim; write the manifest and return the record
    `Available`, or `Failed` with the reason. Blocking."""
    canonical = json.dumps(dict(claim.key), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if hashlib.sha256(canonical.encode()).hexdigest() != claim.key_hash:
        return {
            **record,
            "phase": "Failed",
            "message": f"{claim.builder} reported a key that is not {claim.key_hash}",
        }
    engine_uri = join_uri(prefix, claim.key_hash, ENGINE_FILE)
    try:
        actual = store.checksum(engine_uri)
    except ObjectNotFound:
        return record  # the upload has not landed yet: look again at the next report
    if actual != claim.sha256:
        message = (
            f"the uploaded engine hashes to {actual}, its builder {claim.builder} reported {claim.sha256}"
        )
        return {**record, "phase": "Failed", "message": message}
    manifest = {"key": dict(claim.key), "sha256": actual, "builder": claim.builder}
    store.put_bytes(
        json.dumps(manifest, sort_keys=True).encode(), join_uri(prefix, claim.key_hash, MANIFEST_FILE)
    )
    return {**record, "phase": "Available", "sha256": actual}
