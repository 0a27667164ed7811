"""The real Kubernetes control plane, built from source through the Go module proxy, once per machine.

`ensure_binaries()` returns the folder holding kube-apiserver, kube-controller-manager,
kube-scheduler (Kubernetes `KUBERNETES_VERSION`), etcd (`ETCD_VERSION`) and kwok (`KWOK_VERSION`),
building what is missing into `~/.cache/visioninapp/kubernetes-<version>/bin` (override the cache
root with `VISIONINAPP_CACHE_DIR`). Every clone, test run, benchmark and local mode on the machine
reuses it; a lock makes concurrent callers wait for one build.

Each tool is built in a wrapper module of its own, as Kubernetes' consumers (k3s) build it:
`k8s.io/kubernetes` requires its staging modules (`k8s.io/api`, ...) at v0.0.0 and replaces them
with folders of its repository, which `go` ignores in a dependency, so the wrapper replaces each one
with the matching published `v0.x.y` release. etcd's server module has the same problem with its
sibling modules, and kwok must not share a build list with Kubernetes (it needs newer k8s.io modules).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BINARIES",
    "ETCD_VERSION",
    "KUBERNETES_VERSION",
    "KWOK_VERSION",
    "BuildError",
    "binaries_dir",
    "cache_root",
    "ensure_binaries",
]

KUBERNETES_VERSION = "1.35.4"  # the minor of the kubectl the tests use (PyPI kubectl layer 1.35)
ETCD_VERSION = "3.6.16"  # kubeadm's etcd line for Kubernetes 1.35
KWOK_VERSION = "0.8.0"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kwok")
MIN_GO = (1, 25)  # Kubernetes 1.35's go.mod

# Kubernetes' staging modules (its go.mod replaces each with ./staging/src/k8s.io/<name>).
_STAGING_REPLACE = re.compile(r"^\s+(k8s\.io/[a-z0-9-]+) => \./staging/", re.MULTILINE)


class BuildError(RuntimeError):
    """The control plane could not be built; the message says which step failed and why."""


def cache_root() -> Path:
    return Path(os.environ.get("VISIONINAPP_CACHE_DIR") or Path.home() / ".cache" / "visioninapp")


def binaries_dir() -> Path:
    return cache_root() / f"kubernetes-v{KUBERNETES_VERSION}" / "bin"


@dataclass(frozen=True)
class _Module:
    """One wrapper module: what it requires, the packages it builds and how to stamp versions."""

    name: str
    require: str
    packages: tuple[str, ...]
    ldflags: str = "-s -w"
    tags: str = ""


def _modules() -> list[_Module]:
    stamp = "k8s.io/component-base/version"
    k8s_ldflags = (
        f"-s -w -X {stamp}.gitVersion=v{KUBERNETES_VERSION} -X {stamp}.gitMajor=1"
        f" -X {stamp}.gitMinor={KUBERNETES_VERSION.split('.')[1]} -X {stamp}.gitTreeState=clean"
        f" -X {stamp}.buildDate={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    )
    return [
        _Module(
            "kubernetes",
            f"k8s.io/kubernetes v{KUBERNETES_VERSION}",
            tuple(f"k8s.io/kubernetes/cmd/{b}" for b in BINARIES[:3]),
            k8s_ldflags,
            "selinux,notest",  # upstream's tags for these static binaries (hack/lib/golang.sh)
        ),
        _Module(
            "etcd",
            f"go.etcd.io/etcd/server/v3 v{ETCD_VERSION}",
            ("go.etcd.io/etcd/server/v3",),
            f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v{ETCD_VERSION}",
        ),
        _Module("kwok", f"sigs.k8s.io/kwok v{KWOK_VERSION}", ("sigs.k8s.io/kwok/cmd/kwok",)),
    ]


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the Kubernetes control plane is built from source and needs Go "
            f"{MIN_GO[0]}.{MIN_GO[1]} or newer on PATH (https://go.dev/doc/install); none was found"
        )
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    found = re.match(r"go(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_GO:
        raise BuildError(
            f"Go {MIN_GO[0]}.{MIN_GO[1]} or newer is needed to build Kubernetes; found {version}"
        )
    return go


def _env() -> dict[str, str]:
    # GOTOOLCHAIN=local: never download another toolchain; CGO off: static binaries, as upstream.
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}


def _run(command: list[str], cwd: Path, what: str, log: Path) -> str:
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BuildError(f"{what} failed (exit {result.returncode}; full log: {log}):\n{tail}")
    return result.stdout


def _write_module(module: _Module, src: Path, go: str, log: Path) -> None:
    """go.mod (+ the staging replaces for Kubernetes) and a tools.go importing the mains."""
    src.mkdir(parents=True, exist_ok=True)
    lines = ["module local/visioninapp-" + module.name, "", "go 1.25.0", "", f"require {module.require}", ""]
    if module.name == "kubernetes":
        described = _run(
            [go, "mod", "download", "-json", f"k8s.io/kubernetes@v{KUBERNETES_VERSION}"],
            src,
            "downloading k8s.io/kubernetes",
            log,
        )
        upstream = Path(json.loads(described)["GoMod"]).read_text()
        staging = sorted(set(_STAGING_REPLACE.findall(upstream)))
        if not staging:
            raise BuildError("k8s.io/kubernetes's go.mod lists no staging modules to replace")
        minor_release = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
        lines += ["replace (", *(f"\t{m} => {m} {minor_release}" for m in staging), ")", ""]
    (src / "go.mod").write_text("\n".join(lines))
    imports = "\n".join(f'\t_ "{p}"' for p in module.packages)
    (src / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")


def _build_module(
    module: _Module, src: Path, out: Path, go: str, log: Path, progress: Callable[[str], None]
) -> None:
    _write_module(module, src, go, log)
    progress(f"{module.name}: resolving modules (go mod tidy)")
    _run([go, "mod", "tidy"], src, f"go mod tidy for {module.name}", log)
    tags = [f"-tags={module.tags}"] if module.tags else []
    listed = _run([go, "list", "-deps", *tags, *module.packages], src, f"go list for {module.name}", log)
    total = len(listed.split())
    command = [
        go,
        "build",
        "-v",
        "-p",
        str(os.cpu_count() or 2),
        "-trimpath",
        *tags,
        f"-ldflags={module.ldflags}",
        "-o",
        str(out) + "/",
        *module.packages,
    ]
    if len(module.packages) == 1:  # `-o dir/` names a single main after its folder, e.g. `v3`
        name = "etcd" if module.name == "etcd" else module.packages[0].rsplit("/", 1)[1]
        command[command.index(str(out) + "/")] = str(out / name)
    process = subprocess.Popen(command, cwd=src, env=_env(), stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    built, last, errors = 0, 0.0, []
    with log.open("a") as out_log:
        out_log.write(f"$ {' '.join(command)}\n")
        for line in process.stderr:
            out_log.write(line)
            if line.startswith(("#", " ")) or ":" in line:  # compiler messages, not package names
                errors.append(line.rstrip())
                continue
            built += 1
            if time.monotonic() - last > 15:
                last = time.monotonic()
                progress(f"{module.name}: compiled {min(built, total)}/{total} packages")
    if process.wait() != 0:
        raise BuildError(f"go build of {module.name} failed (full log: {log}):\n" + "\n".join(errors[-15:]))


def ensure_binaries(progress: Callable[[str], None] | None = None) -> Path:
    """The folder with every binary of `BINARIES`, built now if this machine has none yet."""
    bin_dir = binaries_dir()
    if all((bin_dir / b).is_file() for b in BINARIES):
        return bin_dir
    say = progress or (lambda text: print(f"[kubernetes] {text}", file=sys.stderr, flush=True))
    home = bin_dir.parent
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".build.lock").open("w") as lock:
        waited = False
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another process is building the control plane; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
            waited = True
        if all((bin_dir / b).is_file() for b in BINARIES):
            return bin_dir
        if waited:
            say("the other build did not finish; building here")
        _build_all(home, bin_dir, say)
    return bin_dir


def _build_all(home: Path, bin_dir: Path, say: Callable[[str], None]) -> None:
    go = _go()
    started = time.monotonic()
    say(
        f"building Kubernetes v{KUBERNETES_VERSION} (kube-apiserver, kube-controller-manager, "
        f"kube-scheduler), etcd v{ETCD_VERSION} and kwok v{KWOK_VERSION} from source with "
        f"{subprocess.run([go, 'version'], capture_output=True, text=True).stdout.strip()}: once per "
        f"machine, about 5 minutes on 2 cores (log: {home / 'build.log'})"
    )
    staging = home / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    log = home / "build.log"
    log.write_text("")
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(stop, started, say), daemon=True)
    ticker.start()
    try:
        for module in _modules():
            _build_module(module, home / "src" / module.name, staging, go, log, say)
    finally:
        stop.set()
    missing = [b for b in BINARIES if not (staging / b).is_file()]
    if missing:
        raise BuildError(f"the build finished without {', '.join(missing)} (log: {log})")
    shutil.rmtree(bin_dir, ignore_errors=True)
    staging.rename(bin_dir)
    seconds = time.monotonic() - started
    (home / "build-info.json").write_text(
        json.dumps(
            {
                "kubernetes": KUBERNETES_VERSION,
                "etcd": ETCD_VERSION,
                "kwok": KWOK_VERSION,
                "seconds": round(seconds),
                "go": subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip(),
            }
        )
    )
    say(f"built the control plane in {seconds / 60:.1f} min into {bin_dir}")


def _tick(stop: threading.Event, started: float, say: Callable[[str], None]) -> None:
    """A heartbeat while `go mod tidy` downloads: long silent steps look like hangs."""
    while not stop.wait(60):
        say(f"still building ({(time.monotonic() - started) / 60:.0f} min so far)")


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        print(ensure_binaries())


if __name__ == "__main__":
    main()
