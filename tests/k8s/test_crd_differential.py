"""`visioninapp validate` against the real API server: the same verdict, naming the same fields.

Every document of the corpus (tests/unit/invalid, tests/unit/corpus/valid and the update pairs of
tests/unit/corpus/updates) and of manifests/examples goes through both:

* `visioninapp validate -o json` (offline: sockets cannot connect while it runs), and
* kube-apiserver 1.35 through kubectl 1.35, so kubectl's YAML to JSON conversion and its defaults
  (`--validate=strict`) are the ones used: `kubectl create --dry-run=server` for a create; for an
  update pair, `kubectl replace --dry-run=server` of NAME.yaml over NAME.old.yaml, stored first.

The CRDs are installed from the files in crds/. The stored objects of the update pairs are created
while the CRDs accept anything (their schema swapped for `x-kubernetes-preserve-unknown-fields`), as
objects stored before a schema was tightened are; the CRDs of crds/ are installed again, and in
effect, before any update is judged. Documents without a namespace go to a namespace of the test's
own; the namespaces the documents name (e.g. `helmets` of the examples) are created if missing.
All are deleted at the end.

The answer of kubectl and the API server is reduced to a verdict and a set of field paths. These
normalisations apply (the offline validator's paths are compared as they are):

* 422 Invalid: the fields of `details.causes`, without the `<nil>` cause, which only says that "some
  validation rules were not checked because the object was invalid".
* 400 BadRequest, "strict decoding error: unknown field "X", ...": the fields X.
* 404 NotFound of the object's namespace: `metadata.namespace` (an invalid name cannot exist).
* kubectl's own refusals, before it sends anything:
  "no matches for kind K in version V": `apiVersion` when the server serves kind K (in another
  version or group), else `kind`; "error validating data: kind not set" (apiVersion not set),
  "kind isn't string type" (apiVersion): `kind` (`apiVersion`, or both); "unexpected GroupVersion
  string": `apiVersion`; "cannot unmarshal ... into Go struct field ObjectMeta.metadata.X": the field
  `metadata.X`; "error converting YAML to JSON": `(document)`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.services import kube_tools
from visioninapp.cli import app
from visioninapp.local.cluster.controlplane import ControlPlane
from visioninapp.resources import RESOURCES
from visioninapp.validation import load_manifests

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tests" / "unit"
CRD_FILES = [REPO / "crds" / f"{resource.plural}.yaml" for resource in RESOURCES]
WORKERS = 4
_BODY = re.compile(r'"Response Body" body=<\n\t(\{.*?\})\n >', re.S)
_KLOG = re.compile(r"^[IWEF]\d{4} ")
_STRICT = re.compile(r'unknown field "([^"]+)"')
_NO_MATCH = re.compile(r'no matches for kind "([^"]*)" in version "([^"]*)"')
_NOT_STRING = re.compile(r"error validating data: (apiVersion|kind) isn't string type")
_GO_FIELD = re.compile(r"Go struct field \w+\.(metadata[\w.]*) of type")


@dataclass(frozen=True)
class Case:
    """One document to judge: `path` holds it alone; `old` is the stored object of an update."""

    label: str
    path: Path
    old: Path | None = None
    expect: str = "valid"  # the corpus header: `valid` or the field the API server names


@dataclass(frozen=True)
class Verdict:
    valid: bool
    fields: frozenset[str]
    detail: str = ""

    def __str__(self) -> str:
        return "valid" if self.valid else "invalid at " + ", ".join(sorted(self.fields))


# --- the cases ----------------------------------------------------------------------------------


def _documents(path: Path) -> list[str]:
    """The documents of a YAML stream as written (kubectl splits on `---` lines)."""
    parts = re.split(r"^---[ \t]*(?:#.*)?$", path.read_text(), flags=re.M)
    return [
        part
        for part in parts
        if part.strip()
        and not all(line.lstrip().startswith("#") or not line.strip() for line in part.splitlines())
    ]


def _expect(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    return first.removeprefix("# expect: ").strip() if first.startswith("# expect: ") else "valid"


def collect_cases(scratch: Path) -> list[Case]:
    files = [
        *sorted((UNIT / "invalid").glob("*.yaml")),
        *sorted((UNIT / "corpus" / "valid").glob("*.yaml")),
        *sorted((REPO / "manifests" / "examples").rglob("*.yaml")),
    ]
    cases = []
    for file in files:
        label = str(file.relative_to(REPO))
        documents = _documents(file)
        if len(documents) == 1:
            cases.append(Case(label, file, expect=_expect(file)))
            continue
        for index, text in enumerate(documents):
            part = scratch / f"{file.stem}-{index}.yaml"
            part.write_text(text)
            cases.append(Case(f"{label}#{index}", part))
    for new in sorted((UNIT / "corpus" / "updates").glob("*.yaml")):
        if not new.name.endswith(".old.yaml"):
            old = new.with_name(f"{new.stem}.old.yaml")
            cases.append(Case(str(new.relative_to(REPO)), new, old, _expect(new)))
    return cases


def _namespace_of(path: Path) -> str:
    try:
        (obj,) = load_manifests(path.read_text())
    except (ValueError, yaml.YAMLError):
        return ""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) else ""


# --- offline: `visioninapp validate` --------------------------------------------------------------


@contextmanager
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the offline validator tried to open a connection")

    with monkeypatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


def _offline_run(args: list[str]) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["validate", "-o", "json", *args])
    assert result.exit_code in (0, 1), (result.output, result.exception)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def offline_verdicts(cases: list[Case]) -> dict[str, Verdict]:
    def verdict(entry: dict[str, Any]) -> Verdict:
        errors = entry["errors"]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return Verdict(entry["result"] != "invalid", frozenset(e["field"] for e in errors), detail)

    verdicts = {}
    creates = [c for c in cases if c.old is None]
    args = [arg for c in creates for arg in ("-f", str(c.path))]
    for case, entry in zip(creates, _offline_run(args) if creates else [], strict=True):
        assert entry["source"] == str(case.path)
        verdicts[case.label] = verdict(entry)
    for case in cases:
        if case.old is not None:
            (entry,) = _offline_run(["-f", str(case.path), "--old", str(case.old)])
            verdicts[case.label] = verdict(entry)
    return verdicts


# --- the API server, through kubectl ------------------------------------------------------------


class Kubectl:
    def __init__(self, plane: ControlPlane, cache: Path) -> None:
        self.base = [
            str(kube_tools() / "kubectl"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--cache-dir",
            str(cache),
        ]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr[-2000:]}")
        return result

    def active_namespace(self, name: str) -> bool:
        """Whether the namespace exists and is not being deleted (waits for one being deleted)."""
        deadline = time.monotonic() + 120
        while True:
            result = self("get", "namespace", name, "-o", "jsonpath={.status.phase}", check=False)
            if result.returncode != 0 or result.stdout == "Active":
                return result.returncode == 0
            assert time.monotonic() < deadline, f"namespace {name} is still being deleted after 120 s"
            time.sleep(0.5)

    def create_namespace(self, name: str) -> None:
        self("create", "namespace", name)

    def served_kinds(self) -> set[str]:
        lines = self("api-resources", "--no-headers").stdout.splitlines()
        return {line.split()[-1] for line in lines if line.strip()}


def server_verdict(result: subprocess.CompletedProcess[str], served_kinds: set[str]) -> Verdict:
    """kubectl's and the API server's answer as a verdict and fields (see the module docstring)."""
    if result.returncode == 0:
        return Verdict(True, frozenset())
    statuses = [json.loads(body) for body in _BODY.findall(result.stderr)]
    failures = [s for s in statuses if s.get("kind") == "Status" and s.get("status") == "Failure"]
    if failures:
        return _status_verdict(failures[-1])
    message = "\n".join(
        line
        for line in result.stderr.splitlines()
        if not _KLOG.match(line) and not line.startswith(("\t", " >"))
    )
    return _kubectl_verdict(message, served_kinds)


def _status_verdict(status: dict[str, Any]) -> Verdict:
    """The verdict of the API server's Failure Status."""
    message = status.get("message", "")
    if status.get("reason") == "Invalid":
        causes = status.get("details", {}).get("causes", [])
        fields = {c.get("field", "") for c in causes} - {"<nil>"}
        return Verdict(False, frozenset(fields), message)
    if status.get("reason") == "BadRequest" and "strict decoding error" in message:
        return Verdict(False, frozenset(_STRICT.findall(message)), message)
    if status.get("code") == 404 and status.get("details", {}).get("kind") == "namespaces":
        return Verdict(False, frozenset({"metadata.namespace"}), message)
    return Verdict(False, frozenset({f"<unrecognised: {message}>"}), message)


def _kubectl_verdict(message: str, served_kinds: set[str]) -> Verdict:
    """The verdict of kubectl's own refusal (the object never reached the API server)."""
    if match := _NO_MATCH.search(message):
        field = "apiVersion" if match.group(1) in served_kinds else "kind"
        return Verdict(False, frozenset({field}), message)
    if "unexpected GroupVersion string" in message:
        return Verdict(False, frozenset({"apiVersion"}), message)
    if match := _NOT_STRING.search(message):
        return Verdict(False, frozenset({match.group(1)}), message)
    if "error validating data:" in message and " not set" in message:
        unset = {field for field in ("apiVersion", "kind") if f"{field} not set" in message}
        return Verdict(False, frozenset(unset), message)
    if match := _GO_FIELD.search(message):
        return Verdict(False, frozenset({match.group(1)}), message)
    if "error converting YAML to JSON" in message:
        return Verdict(False, frozenset({"(document)"}), message)
    return Verdict(False, frozenset({f"<unrecognised: {message.strip()[:300]}>"}), message)


def _probe(scratch: Path, kind: str) -> Path:
    path = scratch / f"probe-{kind.lower()}.json"
    path.write_text(
        json.dumps({"apiVersion": "visioninapp.io/v1alpha1", "kind": kind, "metadata": {"name": "probe"}})
    )
    return path


def install_crds(kubectl: Kubectl, scratch: Path, namespace: str, permissive: bool) -> None:
    """Install the CRDs of crds/ (or, `permissive`, the same CRDs with a schema that accepts anything)
    and wait until the API server applies them: an object without `spec` is refused, or accepted."""
    kinds = []
    for file in CRD_FILES:
        crd = yaml.safe_load(file.read_text())
        kinds.append(crd["spec"]["names"]["kind"])
        path = file
        if permissive:
            for version in crd["spec"]["versions"]:
                version["schema"]["openAPIV3Schema"] = {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                }
            path = scratch / f"permissive-{file.name}"
            path.write_text(yaml.safe_dump(crd))
        exists = kubectl("get", "crd", crd["metadata"]["name"], check=False).returncode == 0
        kubectl("replace" if exists else "create", "-f", str(path))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")
    for kind in kinds:
        deadline = time.monotonic() + 60
        probe = ["create", "--dry-run=server", "-n", namespace, "-f", str(_probe(scratch, kind))]
        while (kubectl(*probe, check=False).returncode == 0) != permissive:
            assert time.monotonic() < deadline, f"the API server did not apply the {kind} CRD in 60 s"
            time.sleep(0.2)


def server_verdicts(kubectl: Kubectl, cases: list[Case], scratch: Path, namespace: str) -> dict[str, Verdict]:
    served = kubectl.served_kinds()

    def judge(case: Case) -> Verdict:
        verb = "create" if case.old is None else "replace"
        args = [verb, "--dry-run=server", "-f", str(case.path), "-o", "name", "-v=9"]
        if not _namespace_of(case.path):
            args += ["-n", namespace]
        return server_verdict(kubectl(*args, check=False), served)

    updates = [c for c in cases if c.old is not None]
    if updates:
        try:
            install_crds(kubectl, scratch, namespace, permissive=True)
            for case in updates:
                assert case.old is not None
                kubectl("create", "-n", namespace, "-f", str(case.old))
        finally:
            install_crds(kubectl, scratch, namespace, permissive=False)
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip([c.label for c in cases], pool.map(judge, cases), strict=True))


# --- the test -----------------------------------------------------------------------------------


def _header_holds(expect: str, verdict: Verdict) -> bool:
    return verdict.valid if expect == "valid" else not verdict.valid and expect in verdict.fields


def test_validate_agrees_with_the_api_server(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = collect_cases(tmp_path)
    assert len(cases) >= 100, len(cases)

    with no_network(monkeypatch):
        offline = offline_verdicts(cases)

    kubectl = Kubectl(control_plane, tmp_path / "kubectl-cache")
    namespace = f"crd-differential-{uuid.uuid4().hex[:6]}"
    named = {_namespace_of(c.path) for c in cases} - {""}
    missing = {n for n in named if re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63}
    missing = {n for n in missing if not kubectl.active_namespace(n)}
    for name in [namespace, *sorted(missing)]:
        kubectl.create_namespace(name)
    try:
        install_crds(kubectl, tmp_path, namespace, permissive=False)
        server = server_verdicts(kubectl, cases, tmp_path, namespace)
    finally:
        for name in [namespace, *sorted(missing)]:
            kubectl("delete", "namespace", name, "--wait=false", check=False)

    disagreements = [
        f"{case.label}: offline {offline[case.label]} [{offline[case.label].detail}]\n"
        f"    API server {server[case.label]} [{server[case.label].detail[:400]}]"
        for case in cases
        if (offline[case.label].valid, offline[case.label].fields)
        != (server[case.label].valid, server[case.label].fields)
    ]
    # The corpus headers are claims about the API server too: check them against it.
    wrong_headers = [
        f"{case.label}: the header expects {case.expect}, the API server says {server[case.label]}"
        for case in cases
        if not _header_holds(case.expect, server[case.label])
    ]
    rejected = sum(not v.valid for v in server.values())
    assert not disagreements and not wrong_headers, (
        f"{len(disagreements)} of {len(cases)} documents judged differently by `visioninapp validate` and "
        f"the API server (which rejected {rejected}), {len(wrong_headers)} corpus headers wrong:\n"
        + "\n".join([*disagreements, *wrong_headers])
    )
