"""Prometheus metrics of the operator: reconciliations, their latency and errors, API requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from visioninapp.kubeclient import Kube

__all__ = ["Metrics"]


class _ApiRequests(Collector):
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "visioninapp_operator_api_requests",
            "Kubernetes API requests made by the operator (not kopf's watches).",
            labels=["verb"],
        )
        for verb, count in sorted(self.kube.requests.items()):
            family.add_metric([verb], count)
        yield family


class Metrics:
    def __init__(self, kube: Kube) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "visioninapp_operator_reconciles",
            "Reconciliations by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "visioninapp_operator_reconcile_seconds",
            "Time of one reconciliation.",
            ["kind"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry,
        )
        self.registry.register(_ApiRequests(kube))

    def reconciled(self, kind: str, seconds: float) -> None:
        self.reconciles.labels(kind, "ok").inc()
        self.latency.labels(kind).observe(seconds)

    def failed(self, kind: str) -> None:
        self.reconciles.labels(kind, "error").inc()

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
