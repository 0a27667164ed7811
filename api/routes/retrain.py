"""Retrain policies: RetrainPolicy CRs (create here, or kubectl and GitOps), and a pass on request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from visioninapp.api.domain import retrain
from visioninapp.api.routes.common import ObjectName
from visioninapp.api.schemas import RetrainPolicyIn, RetrainPolicyOut
from visioninapp.api.security import Container, ProjectReader, ProjectWriter
from visioninapp.k8s import Obj
from visioninapp.resources import API_VERSION

router = APIRouter(tags=["retrain"])


def policy_out(obj: Obj) -> dict[str, Any]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return RetrainPolicyOut(
        name=meta["name"],
        project=meta["namespace"],
        line=spec.get("line", ""),
        phase=status.get("phase") or "Waiting",
        message=status.get("message"),
        spec=spec,
        status=status,
    ).model_dump(mode="json", by_alias=True)


@router.get(
    "/projects/{project}/retrain-policies", response_model=list[RetrainPolicyOut], summary="Retrain policies"
)
def list_policies(access: ProjectReader, container: Container) -> Any:
    found = container.clusters.training.list(retrain.KIND, access.project)
    return [policy_out(p) for p in sorted(found, key=lambda p: p["metadata"]["name"])]


@router.post(
    "/projects/{project}/retrain-policies",
    response_model=RetrainPolicyOut,
    status_code=201,
    summary="Declare when and how a model line is fine-tuned (creates a RetrainPolicy)",
)
def create_policy(body: RetrainPolicyIn, access: ProjectWriter, container: Container) -> Any:
    retrain.check_references(container, body.spec, access)
    obj = {
        "apiVersion": API_VERSION,
        "kind": retrain.KIND,
        "metadata": {
            "name": body.name,
            "namespace": access.project,
            "annotations": {"visioninapp.io/created-by": access.user.label},
        },
        "spec": body.spec.wire(),
    }
    return policy_out(container.clusters.training.create(obj))


@router.get(
    "/projects/{project}/retrain-policies/{name}",
    response_model=RetrainPolicyOut,
    summary="One retrain policy",
)
def get_policy(name: ObjectName, access: ProjectReader, container: Container) -> Any:
    return policy_out(container.clusters.training.get(retrain.KIND, access.project, name))


@router.post(
    "/projects/{project}/retrain-policies/{name}/evaluate",
    response_model=RetrainPolicyOut,
    summary="Evaluate the policy now (the cluster sync also does, every pass)",
)
def evaluate_policy(name: ObjectName, access: ProjectWriter, container: Container) -> Any:
    return policy_out(retrain.evaluate_policy(container, access.project, name))
