"""`visioninapp-operator`: run the controllers of the configured roles against the current cluster.

Credentials come from the in-cluster service account or the kubeconfig ($KUBECONFIG, --context).
Every flag has an environment variable (`VISIONINAPP_OPERATOR_*`), so the chart sets them there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visioninapp-operator",
        description="Reconcile TrainingJobs, ModelArtifacts and EdgeDeployments (kopf operator).",
    )
    parser.add_argument(
        "--role",
        action="append",
        choices=["training", "rollout"],
        help="controllers to run (repeatable); default $VISIONINAPP_OPERATOR_ROLES or both",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="namespace to watch (repeatable, globs allowed); default: all",
    )
    parser.add_argument(
        "--context", help="kubeconfig context (default: in-cluster, else the current context)"
    )
    parser.add_argument("--peering", help="kopf peering name for leader election between replicas")
    parser.add_argument("--liveness-port", type=int, help="port of /healthz (default 8080, 0 disables)")
    parser.add_argument(
        "--metrics-port", type=int, help="port of Prometheus /metrics (default 9090, 0 disables)"
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log format (default $VISIONINAPP_LOG_FORMAT)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        "VISIONINAPP_OPERATOR_ROLES": f"{args.role!r}".replace("'", '"') if args.role else None,
        "VISIONINAPP_OPERATOR_NAMESPACES": f"{args.namespace!r}".replace("'", '"')
        if args.namespace
        else None,
        "VISIONINAPP_OPERATOR_PEERING": args.peering,
        "VISIONINAPP_OPERATOR_LIVENESS_PORT": str(args.liveness_port)
        if args.liveness_port is not None
        else None,
        "VISIONINAPP_OPERATOR_METRICS_PORT": str(args.metrics_port)
        if args.metrics_port is not None
        else None,
        "VISIONINAPP_LOG_FORMAT": args.log_format,
        "VISIONINAPP_OPERATOR_CONTEXT": args.context,
    }
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    import kopf
    from pydantic import ValidationError

    from visioninapp.operator.config import OperatorConfig
    from visioninapp.operator.handlers import register
    from visioninapp.settings import Settings

    try:
        config, settings = OperatorConfig(), Settings()
    except ValidationError as error:
        print(f"error: invalid operator settings: {error}", file=sys.stderr)
        return 2
    kopf.configure(
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
        verbose=args.verbose,
    )
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else settings.log_level)
    if not args.verbose:  # kopf logs every handler call at INFO: thousands of lines for a big batch
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, config)
    liveness = f"http://0.0.0.0:{config.liveness_port}/healthz" if config.liveness_port else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=config.peering is None,
                peering_name=config.peering,
                clusterwide=not config.namespaces,
                namespaces=config.namespaces,
                liveness_endpoint=liveness,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
