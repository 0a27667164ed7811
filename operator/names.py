"""Names of the objects the operator derives from its custom resources (deterministic, idempotent)."""

from __future__ import annotations

from visioninapp.resources.base import to_dns_label

__all__ = ["DEPLOYMENT_LABEL", "job_name"]

DEPLOYMENT_LABEL = "visioninapp.io/edge-deployment"  # on the objects made for an EdgeDeployment


def job_name(training_job: str, attempt: int) -> str:
    """The batch/v1 Job of one attempt: `<trainingjob>-<attempt>`, cut to fit 63 characters."""
    suffix = f"-{attempt}"
    return to_dns_label(training_job, 63 - len(suffix)) + suffix
