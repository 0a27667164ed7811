"""The baseline of operator_scale.py: the least a kopf operator can do — create the Job, nothing else.

kopf run --standalone -A benchmarks/baselines/minimal_operator.py   (with $KUBECONFIG set)

It logs in as kopf does (the kubeconfig's client certificate or token) and POSTs each Job over one
aiohttp session with that identity: no status, no Events, no caches, no watch of Jobs or pods.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml

SESSION: dict[str, aiohttp.ClientSession] = {}


def _session(kubeconfig: Path) -> aiohttp.ClientSession:
    """An HTTP session to the current context's API server, as its user."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    tls = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
    if "certificate-authority-data" in cluster:
        tls.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    if "client-certificate-data" in user or "client-certificate" in user:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert"), Path(tmp, "key")
            cert.write_bytes(
                base64.b64decode(user["client-certificate-data"])
                if "client-certificate-data" in user
                else Path(user["client-certificate"]).read_bytes()
            )
            key.write_bytes(
                base64.b64decode(user["client-key-data"])
                if "client-key-data" in user
                else Path(user["client-key"]).read_bytes()
            )
            tls.load_cert_chain(str(cert), str(key))
    headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
    return aiohttp.ClientSession(
        base_url=cluster["server"].rstrip("/") + "/",
        headers={**headers, "User-Agent": "minimal-kopf-operator"},
        connector=aiohttp.TCPConnector(ssl=tls),
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = 40
    SESSION["api"] = _session(Path(os.environ["KUBECONFIG"]))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await SESSION["api"].close()


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
