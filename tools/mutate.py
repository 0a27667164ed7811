#!/usr/bin/env python3
"""Mutation testing of the decision modules with mutmut, one module at a time (`make mutate`).

Run by hand, not in CI: on 2 cores the whole set takes several minutes. Each module is mutated
in its own staging copy under --workdir (default /tmp/visioninapp-mutate/NAME), never in this
checkout, and is tested with its own fast unit-test selection.

Why a staging copy: pyproject's package-dir maps visioninapp.api -> api/, visioninapp.operator ->
operator/ and so on, and the venv's editable install points at this checkout. mutmut names a
mutant after its file path and copies the sources into mutants/, so in this layout the tests would
import the unmutated checkout and every mutant would "survive". The staging copy is laid out like
the wheel (visioninapp/api/, visioninapp/operator/, ...), so `visioninapp.api.security` is
mutants/visioninapp/api/security.py, which mutmut puts first on sys.path. Two checks guard this:
mutmut's own forced-fail run (every trampoline raises; a test must fail), and tests/conftest.py's
session start, which refuses a visioninapp imported from outside the copy.

Only the decision functions listed per module are run (mutmut's fnmatch filter on mutant names),
so that every survivor can be killed or explained; docs/mutation.md keeps the explained list.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where each top-level folder of the checkout goes in the wheel-like staging layout.
LAYOUT = {
    "visioninapp": "visioninapp",
    "api": "visioninapp/api",
    "edge": "visioninapp/edge",
    "operator": "visioninapp/operator",
    "trainer": "visioninapp/trainer",
}
# Data the selected tests read through the `repo` fixture.
ALSO_COPY = ["manifests", "crds"]

KILLED = {1, 3}
SURVIVED = {0}
TIMEOUT = {36, 24, -24, 152, 255}
NO_TESTS = {5, 33}


@dataclass(frozen=True)
class Module:
    name: str
    source: str  # path in this checkout
    tests: list[str]
    functions: list[str] = field(default_factory=list)  # mutmut mangled names; empty: whole file

    @property
    def staged(self) -> str:
        top, _, rest = self.source.partition("/")
        return f"{LAYOUT[top]}/{rest}"

    @property
    def dotted(self) -> str:
        return self.staged[: -len(".py")].replace("/", ".")

    def patterns(self) -> list[str]:
        return [f"{self.dotted}.{f}__mutmut_*" for f in self.functions]


MODULES = [
    Module(
        "training",
        "operator/training.py",
        ["tests/unit/test_operator_training.py"],
        ["x_plan_training", "x__true", "x__terminated", "x__newest"],
    ),
    Module(
        "security",
        "api/security.py",
        ["tests/unit/test_security_units.py"],
        [
            "x_highest",
            "xǁAccessǁcan",
            "x_role_cache_prefix",
            "x_role_in",
            "x__role_from_db",
            "x_member_roles",
            "x__rate_limit",
            "x_current_user",
            "x__access",
        ],
    ),
    Module(
        "inference",
        "edge/inference.py",
        ["tests/unit/test_edge_units.py", "tests/unit/test_mutation_edge.py"],
        ["x_nms", "x_letterbox", "x_choose_providers", "x__parse_names"],
    ),
    Module(
        "models",
        "edge/models.py",
        [
            "tests/unit/test_edge_units.py",
            "tests/unit/test_mutation_edge.py",
            "tests/unit/test_edge_models_units.py",
        ],
        [
            "xǁModelManagerǁset_desired",
            "xǁModelManagerǁready",
            "xǁModelManagerǁnot_ready_reason",
            "xǁModelManagerǁload_last_good",
            "x__self_test",
        ],
    ),
    Module(
        "validation",
        "visioninapp/validation.py",
        ["tests/unit/test_validation.py", "tests/unit/test_validation_units.py"],
        [
            "x__same",
            "x__ratcheted",
            "x_format_path",
            "x__qualified_name_problem",
            "x__subdomain_ok",
            "x_is_ours",
        ],
    ),
    Module(
        "ingest",
        "api/ingest.py",
        ["tests/unit/test_ingest_units.py"],
        ["x__wanted", "x__check_member", "x_expansion_limit"],
    ),
    Module(
        "datasets",
        "visioninapp/datasets.py",
        ["tests/unit/test_ingest_units.py"],
        ["x_contained", "x_label_of", "x__label_problems", "x__class_name", "x__class_names"],
    ),
    Module(
        "rollout",
        "operator/rollout_step.py",
        ["tests/unit/test_operator_rollout.py"],
        ["x_next_rollout_step", "x__gate_failures"],
    ),
]
BY_NAME = {m.name: m for m in MODULES}
# This interpreter's mutmut: `make mutate` runs without the virtualenv on PATH.
MUTMUT = str(Path(sys.executable).parent / "mutmut")


def stage(module: Module, workdir: Path) -> None:
    """A fresh wheel-like copy of the checkout with a setup.cfg for this module."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "mutants")
    for top, target in LAYOUT.items():
        shutil.copytree(REPO / top, workdir / target, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(REPO / "tests", workdir / "tests", ignore=ignore)
    for extra in ALSO_COPY:
        if (REPO / extra).is_dir():
            shutil.copytree(REPO / extra, workdir / extra, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", workdir / "pyproject.toml")
    lines = [
        "[mutmut]",
        "source_paths = visioninapp",
        f"only_mutate = {module.staged}",
        "pytest_add_cli_args_test_selection =",
        *(f"    {t}" for t in module.tests),
        "pytest_add_cli_args =",
        "    -p",
        "    no:cacheprovider",
        "    -q",
        "also_copy =",
        *(f"    {e}" for e in ALSO_COPY),
        "use_git_change_detection = false",
        "",
    ]
    (workdir / "setup.cfg").write_text("\n".join(lines))


def results(workdir: Path, module: Module) -> dict[str, int | None]:
    meta = workdir / "mutants" / (module.staged + ".meta")
    data = json.loads(meta.read_text())
    codes: dict[str, int | None] = data["exit_code_by_key"]
    if module.functions:
        import fnmatch

        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in module.patterns())}
    return codes


def show(workdir: Path, name: str) -> str:
    out = subprocess.run([MUTMUT, "show", name], cwd=workdir, capture_output=True, text=True)
    return out.stdout.strip()


def run_module(module: Module, workdir: Path, children: int, verbose: bool) -> dict[str, object]:
    missing = [t for t in module.tests if not (REPO / t).is_file()]
    if missing:
        raise SystemExit(f"{module.name}: missing test files {missing}")
    print(f"== {module.name}: {module.source} with {' '.join(module.tests)}", flush=True)
    print(f"   staging in {workdir}", flush=True)
    stage(module, workdir)
    started = time.monotonic()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", CI="")
    cmd = [MUTMUT, "run", f"--max-children={children}", *module.patterns()]
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    elapsed = time.monotonic() - started
    log = workdir / "mutmut.log"
    log.write_text(proc.stdout)
    if verbose:
        print(proc.stdout)
    else:
        # mutmut redraws one progress line with \r; show its last state.
        tail = proc.stdout.replace("\r", "\n").strip().splitlines()
        for line in tail[-3:]:
            print(f"   {line.strip()}", flush=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        raise SystemExit(f"{module.name}: mutmut failed with exit code {proc.returncode} (log: {log})")
    codes = results(workdir, module)
    killed = sorted(k for k, v in codes.items() if v in KILLED)
    survived = sorted(k for k, v in codes.items() if v in SURVIVED)
    timeout = sorted(k for k, v in codes.items() if v in TIMEOUT)
    other = sorted(k for k, v in codes.items() if k not in set(killed + survived + timeout))
    row = {
        "module": module.name,
        "source": module.source,
        "mutants": len(codes),
        "killed": len(killed),
        "survived": len(survived),
        "timeout": len(timeout),
        "other": len(other),
        "seconds": elapsed,
        "survivors": survived,
        "others": {k: codes[k] for k in other},
    }
    for name in survived:
        print(f"   survived: {name}")
        print("      " + show(workdir, name).replace("\n", "\n      "))
    for name in other:
        print(f"   {name}: exit code {codes[name]} (no tests / suspicious / not checked)")
    (workdir / "result.json").write_text(json.dumps(row, indent=2))
    return row


def table(rows: list[dict[str, object]]) -> str:
    head = f"| {'module':<11} | {'source':<26} | mutants | killed | survived | timeout | other | time |"
    sep = "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"
    out = [head, sep]
    for r in rows:
        out.append(
            f"| {r['module']:<11} | {r['source']:<26} | {r['mutants']:>7} | {r['killed']:>6} | "
            f"{r['survived']:>8} | {r['timeout']:>7} | {r['other']:>5} | {r['seconds']:>3.0f} s |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Mutation testing (mutmut) of the decision modules, each with its own fast tests. "
        "Prints, per module, mutants, killed, survived (with their diffs) and time; "
        "docs/mutation.md explains every survivor.",
    )
    parser.add_argument(
        "--module",
        action="append",
        choices=sorted(BY_NAME),
        help="run only this module (repeatable); default: all, in order",
    )
    parser.add_argument("--list", action="store_true", help="list the modules and their tests, then exit")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/visioninapp-mutate"),
        help="staging folder; each module gets WORKDIR/NAME (default: %(default)s)",
    )
    parser.add_argument("--children", type=int, default=2, help="parallel mutants (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="print mutmut's whole output")
    args = parser.parse_args(argv)
    if args.list:
        for m in MODULES:
            functions = " ".join(m.functions) or "(whole file)"
            print(f"{m.name:<11} {m.source:<26} {' '.join(m.tests)}  {functions}")
        return 0
    if not Path(MUTMUT).is_file():
        print("mutmut is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    chosen = [BY_NAME[n] for n in args.module] if args.module else MODULES
    rows = [run_module(m, args.workdir / m.name, args.children, args.verbose) for m in chosen]
    print()
    print(table(rows))
    survived = sum(int(r["survived"]) for r in rows)  # type: ignore[call-overload]
    print(f"\n{survived} survivor(s): each must be killed by a test or explained in docs/mutation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
