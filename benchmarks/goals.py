"""The benchmarks' goals: each printed as met or missed (by how much, and why), and the exit status
non-zero when any was missed, so that `make bench` fails naming what missed."""

from __future__ import annotations

import sys

__all__ = ["Goals"]


class Goals:
    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.missed: list[str] = []

    def at_most(
        self, label: str, value: float, limit: float, unit: str = "", why: str = "", strict: bool = False
    ) -> None:
        """`value` <= `limit` (< with `strict`)."""
        met = value < limit if strict else value <= limit
        self._line(
            label, value, limit, unit, "<" if strict else "<=", met, value - limit, value / limit - 1, why
        )

    def at_least(self, label: str, value: float, limit: float, unit: str = "", why: str = "") -> None:
        """`value` >= `limit`."""
        self._line(label, value, limit, unit, ">=", value >= limit, limit - value, 1 - value / limit, why)

    def _line(
        self,
        label: str,
        value: float,
        limit: float,
        unit: str,
        sign: str,
        met: bool,
        by: float,
        share: float,
        why: str,
    ) -> None:
        unit = f" {unit}" if unit else ""
        verdict = "met" if met else f"MISSED by {by:.2f}{unit} ({share:.0%}){': ' + why if why else ''}"
        print(f"  {label}: {value:.2f}{unit} (goal {sign} {limit:g}{unit}) — {verdict}", flush=True)
        if not met:
            self.missed.append(label)

    def finish(self) -> None:
        """Exit 1 naming the missed goals, if any."""
        if self.missed:
            print(f"{self.benchmark}: missed {', '.join(self.missed)}", file=sys.stderr)
            sys.exit(1)
