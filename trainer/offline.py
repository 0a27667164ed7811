"""Make ultralytics work with no network: settings, fonts and the CUDA AMP check.

Called before ultralytics is imported. Nothing here downloads: hub, telemetry and update checks
are off, the plotting font is a TTF that matplotlib ships, and the AMP check that would download
`yolo26n.pt` is replaced by the same comparison run on the model being trained.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["prepare_offline_ultralytics"]


def _install_font(config_dir: Path) -> None:
    from matplotlib import font_manager

    user_dir = config_dir / "Ultralytics"
    user_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = user_dir / name
        if not target.exists():
            shutil.copyfile(font_manager.findfont("DejaVu Sans"), target)


def _amp_check_on_training_model(model: Any) -> bool:
    """ultralytics' AMP check (FP32 vs autocast outputs close), on our own model, offline."""
    import copy

    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    probe = copy.deepcopy(model).eval()
    image = torch.rand(1, 3, 320, 320, device=device)
    with torch.no_grad():
        reference = probe(image)
        with torch.autocast("cuda"):
            mixed = probe(image)
    a = reference[0] if isinstance(reference, (list, tuple)) else reference
    b = mixed[0] if isinstance(mixed, (list, tuple)) else mixed
    ok = a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=0.5))
    log.info("AMP check on the training model: %s", "passed, mixed precision on" if ok else "failed, FP32")
    return ok


def prepare_offline_ultralytics(config_dir: Path) -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("MPLBACKEND", "Agg")
    _install_font(config_dir)

    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    trainer_module.check_amp = _amp_check_on_training_model
