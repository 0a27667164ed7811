"""The baseline of operator_scale.py: the least a kopf operator can do — create the Job, nothing else.

kopf run --standalone -A benchmarks/baselines/minimal_operator.py   (with $KUBECONFIG set)
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import kopf
import yaml

SESSION: dict[str, aiohttp.ClientSession] = {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = 40
    with open(os.environ["KUBECONFIG"]) as file:
        server = yaml.safe_load(file)["clusters"][0]["cluster"]["server"]
    SESSION["api"] = aiohttp.ClientSession(base_url=server + "/")


@kopf.on.event("visioninapp.io", "v1alpha1", "trainingjobs")
async def create_job(type: str | None, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        return
    meta = body["metadata"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{meta['name']}-1",
            "ownerReferences": [
                {
                    "apiVersion": "visioninapp.io/v1alpha1",
                    "kind": "TrainingJob",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "trainer", "image": "trainer", "command": ["visioninapp-trainer"]}
                    ],
                }
            }
        },
    }
    async with SESSION["api"].post(
        f"apis/batch/v1/namespaces/{meta['namespace']}/jobs", json=job
    ) as response:
        if response.status not in (201, 409):
            raise kopf.TemporaryError(await response.text())
