"""What the benchmarks on the real control plane share: identities, request counts and CPU time.

- `identity(plane, name)`: a client certificate of its own (group `system:masters`) and a
  kubeconfig for it, so that every request of one process carries its user name in the audit log.
- `AuditLog`: the API server's audit log (`ControlPlane(audit=True)`) read as it grows; each answered
  request is one `ResponseComplete` record with the user, verb, resource, status code and
  microsecond timestamps (`requestReceivedTimestamp`, `stageTimestamp`).
- `request_metrics(plane)`: `apiserver_request_total` summed by (verb, resource): the API server's own
  count of everything it served, the total that the audit attribution is checked against.
- `cpu_seconds(pid)`: user + system CPU time of a process from /proc (all its threads).
- kwok-stages.yaml: the kwok stages of rollout_scale.py (nodes Ready with Leases, pods Ready, the
  broken model's pods crash-looping, deleted pods gone at once).

Watches are never counted as requests: they are long-lived streams, one per resource and process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from visioninapp.local.cluster.controlplane import ControlPlane
from visioninapp.local.cluster.pki import CertificateAuthority
from visioninapp.local.processes import die_with_parent

__all__ = [
    "AuditLog",
    "Counts",
    "cpu_seconds",
    "describe_counts",
    "identity",
    "log_problems",
    "metric_delta",
    "progress",
    "request_metrics",
    "start_process",
    "stop_process",
    "timestamp",
    "writes",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Counts = Counter[tuple[str, str]]  # (verb, resource[/subresource]) → requests
# The API server's metric verbs → the audit log's (Kubernetes') verbs.
METRIC_VERBS = {
    "POST": "create",
    "GET": "get",
    "LIST": "list",
    "PUT": "update",
    "PATCH": "patch",
    "APPLY": "patch",
    "DELETE": "delete",
    "DELETECOLLECTION": "deletecollection",
    "WATCH": "watch",
    "WATCHLIST": "watch",
    "CONNECT": "connect",
}
_METRIC_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (every thread of it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def identity(plane: ControlPlane, name: str) -> Path:
    """A kubeconfig for user `name` (a client certificate of the plane's CA, group system:masters)."""
    pair = CertificateAuthority(plane.pki).issue(
        f"bench-{name}", common_name=name, organizations=("system:masters",), client=True
    )
    path = plane.work_dir / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(plane.kubeconfig_dict(user=pair)))
    return path


def timestamp(text: str) -> float:
    """An audit timestamp (RFC 3339 with microseconds) as seconds since the epoch."""
    return datetime.fromisoformat(text).timestamp()


def _resource(ref: dict[str, Any]) -> str:
    return ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")


class AuditLog:
    """The audit log from a given point on: `read()` returns the answered requests since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def skip(self) -> None:
        """Start from the end: what was logged so far is not read."""
        self.offset = self.path.stat().st_size if self.path.is_file() else 0

    def read(self, keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """The ResponseComplete records written since the last read (complete lines only); watches
        show up when they start (ResponseStarted), so `watch_started` can see them."""
        if not self.path.is_file():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            record = json.loads(line)
            if record.get("stage") in ("ResponseComplete", "ResponseStarted") and (
                keep is None or keep(record)
            ):
                records.append(record)
        return records

    @staticmethod
    def requests(records: Iterable[dict[str, Any]], user: str | None = None) -> Counts:
        """Answered requests by (verb, resource), watches excluded, of one user or of everyone."""
        counts: Counts = Counter()
        for record in records:
            if record.get("stage") != "ResponseComplete" or record.get("verb") == "watch":
                continue
            if user is not None and record.get("user", {}).get("username") != user:
                continue
            ref = record.get("objectRef")
            if ref is None:
                continue  # a non-resource URL (/metrics, /readyz, discovery)
            counts[(record["verb"], _resource(ref))] += 1
        return counts

    @staticmethod
    def by_user(records: Iterable[dict[str, Any]], verb: str, resource: str) -> Counter[str]:
        """Who made the answered `verb` requests on `resource` (e.g. "delete", "pods")."""
        return Counter(
            r.get("user", {}).get("username", "")
            for r in records
            if r.get("stage") == "ResponseComplete"
            and r.get("verb") == verb
            and _resource(r.get("objectRef") or {}) == resource
        )

    @staticmethod
    def watching(records: Iterable[dict[str, Any]], user: str) -> set[str]:
        """The resources `user` has started to watch."""
        return {
            _resource(r.get("objectRef") or {})
            for r in records
            if r.get("verb") == "watch" and r.get("user", {}).get("username") == user
        }


def request_metrics(plane: ControlPlane) -> Counts:
    """`apiserver_request_total` by (verb, resource[/subresource]), summed over codes and versions;
    non-resource requests (/metrics, /readyz, discovery) left out."""
    counts: Counts = Counter()
    for found in _METRIC_LINE.finditer(plane.metrics()):
        labels = dict(_LABEL.findall(found["labels"]))
        if not labels.get("resource"):
            continue
        verb = METRIC_VERBS.get(labels.get("verb", ""), labels.get("verb", "").lower())
        resource = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        counts[(verb, resource)] += int(float(found["value"]))
    return counts


def metric_delta(before: Counts, after: Counts) -> Counts:
    """What was served between two `request_metrics` readings, watches excluded."""
    delta: Counts = Counter()
    for key, value in after.items():
        if key[0] != "watch" and value - before.get(key, 0) > 0:
            delta[key] = value - before.get(key, 0)
    return delta


def writes(served: Counts, kinds: dict[str, str]) -> dict[str, int]:
    """Writes by everyone on each kind (`{"pods": "pods", ...}`: label → plural), subresources
    included: each one is one watch event to whoever watches that kind (a no-op patch aside)."""
    return {
        label: sum(
            n
            for (verb, resource), n in served.items()
            if resource.split("/")[0] == plural and verb in ("create", "update", "patch", "delete")
        )
        for label, plural in kinds.items()
    }


def describe_counts(counts: Counts, per: int, limit: int = 8) -> str:
    """`create jobs 1.00, patch trainingjobs/status 1.00, ...` per unit of `per`, largest first."""
    shown = [f"{verb} {resource} {n / per:.2f}" for (verb, resource), n in counts.most_common(limit)]
    rest = sum(n for _, n in counts.most_common()[limit:])
    if rest:
        shown.append(f"other {rest / per:.2f}")
    return ", ".join(shown) or "none"


def start_process(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child process with its output in `log_path`, in a session of its own, that gets SIGTERM when
    the benchmark dies (even by SIGKILL)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def stop_process(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_problems(path: Path) -> int:
    """Lines of a process's log that report an error (a sound run has none)."""
    if not path.is_file():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "Traceback" in line or "ERROR" in line)


def progress(message: str) -> None:
    """A progress line with the time of day (long runs show where they are)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
