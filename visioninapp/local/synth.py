"""A synthetic YOLO-format detection dataset of drawn shapes.

Nothing can be downloaded at run time, so tests and the local demo train on this: several classes
of shapes in random sizes, positions, colours and rotations on noisy, graded backgrounds, partly
occluding each other. Labels are the visible part of each shape; a shape mostly hidden by later
ones is dropped from the labels, as an annotator would. The same seed gives the same dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "generate_dataset", "generate_image", "moving_shapes"]

CLASS_NAMES = ("circle", "square", "triangle", "cross")
MIN_VISIBLE_FRACTION = 0.5


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners: list[tuple[float, float]]
    if kind == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = r / math.sqrt(2) * 1.2
    elif kind == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        scale = r
    else:  # cross: a plus sign of two bars
        w = 0.33
        corners = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
        scale = r
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in corners]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    fill: int | tuple[int, int, int],
) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    image = start * (1 - t) + end * t
    image = image + rng.normal(0, rng.uniform(2, 18), (size, size, 3))
    return np.clip(np.broadcast_to(image, (size, size, 3)), 0, 255).astype(np.uint8)


def generate_image(
    rng: np.random.Generator,
    size: int,
    max_objects: int = 4,
    radius: tuple[float, float] = (0.08, 0.22),
    min_contrast: float = 0.0,
    rotate: bool = True,
) -> tuple[Image.Image, list[str]]:
    """One image and its YOLO label lines (`class cx cy w h`, normalised). `min_contrast`: least mean
    difference per channel between a shape's colour and the background under its centre."""
    background = _background(rng, size)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    owner = np.full((size, size), -1, dtype=np.int16)  # which shape is visible at each pixel
    drawn_area: list[int] = []
    classes: list[int] = []
    for index in range(int(rng.integers(1, max_objects + 1))):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        r = float(rng.uniform(*radius) * size)
        cx, cy = (float(v) for v in rng.uniform(r * 0.6, size - r * 0.6, 2))
        angle = float(rng.uniform(0, 2 * math.pi))
        if not rotate:
            angle = 0.0  # drawn upright (the draw above keeps the random stream the same)
        under = background[min(int(cy), size - 1), min(int(cx), size - 1)].astype(float)
        colour_array = rng.integers(0, 256, 3)
        for _ in range(20):
            if np.abs(colour_array - under).mean() >= min_contrast:
                break
            colour_array = rng.integers(0, 256, 3)
        colour = tuple(int(c) for c in colour_array)
        mask_image = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask_image), CLASS_NAMES[class_id], cx, cy, r, angle, 255)
        mask = np.asarray(mask_image) > 0
        if not mask.any():
            continue
        _draw_shape(draw, CLASS_NAMES[class_id], cx, cy, r, angle, colour)  # type: ignore[arg-type]
        owner[mask] = index
        drawn_area.append(int(mask.sum()))
        classes.append(class_id)
    labels = []
    for index, class_id in enumerate(classes):
        visible = owner == index
        if visible.sum() < MIN_VISIBLE_FRACTION * drawn_area[index]:
            continue  # mostly occluded: not labelled
        ys, xs = np.nonzero(visible)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append(
            f"{class_id} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
            f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
        )
    return image, labels


def generate_dataset(
    out: Path,
    train: int = 64,
    val: int = 16,
    imgsz: int = 128,
    seed: int = 0,
    on_image: Callable[[], None] | None = None,
    max_objects: int = 4,
    radius: tuple[float, float] = (0.08, 0.22),
    min_contrast: float = 0.0,
    rotate: bool = True,
) -> Path:
    """Write `images/{train,val}`, `labels/{train,val}` and `data.yaml` under `out`; returns data.yaml."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = generate_image(rng, imgsz, max_objects, radius, min_contrast, rotate)
            stem = f"{split}_{i:05d}"
            image.save(out / "images" / split / f"{stem}.jpg", quality=92)
            (out / "labels" / split / f"{stem}.txt").write_text("\n".join(labels) + ("\n" if labels else ""))
            if on_image:
                on_image()
    data_yaml = out / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {
                "train": "images/train",
                "val": "images/val",
                "nc": len(CLASS_NAMES),
                "names": dict(enumerate(CLASS_NAMES)),
            },
            sort_keys=False,
        )
    )
    return data_yaml


@dataclass
class _Glider:
    class_id: int
    r: float
    cx: float
    cy: float
    vx: float
    angle: float
    colour: tuple[int, int, int]


def moving_shapes(
    seed: int,
    size: int,
    frames: int,
    objects: int = 3,
    radius: tuple[float, float] = (0.09, 0.14),
    min_contrast: float = 0.0,
    rotate: bool = True,
) -> tuple[list[np.ndarray], list[list[tuple[int, float, float, float, float]]]]:
    """A video of shapes gliding over one background, bouncing off its edges, for camera tests: the
    frames (BGR, as a camera gives them) and each frame's ground truth `(class, x0, y0, x1, y1)` in
    pixels. Each shape keeps to its own horizontal lane, so none hides another; `radius`,
    `min_contrast` and `rotate` as in `generate_image` (pass a model's training style)."""
    rng = np.random.default_rng(seed)
    background = _background(rng, size)
    gliders = []
    for index in range(objects):
        r = float(rng.uniform(*radius) * size)
        cy = (index + 0.5) / objects * size
        lane = background[int(cy), :: max(1, size // 8)].astype(float)  # what the shape glides over
        colour = rng.integers(0, 256, 3)
        for _ in range(200):
            if np.abs(colour - lane).mean(axis=1).min() >= min_contrast:
                break
            colour = rng.integers(0, 256, 3)
        gliders.append(
            _Glider(
                class_id=int(rng.integers(0, len(CLASS_NAMES))),
                r=r,
                cx=float(rng.uniform(r, size - r)),
                cy=cy,
                vx=float(rng.choice([-1, 1]) * rng.uniform(0.01, 0.025) * size),
                angle=float(rng.uniform(0, 2 * math.pi)) if rotate else 0.0,
                colour=(int(colour[0]), int(colour[1]), int(colour[2])),
            )
        )
    images, truths = [], []
    for _ in range(frames):
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        truth = []
        for g in gliders:
            kind = CLASS_NAMES[g.class_id]
            mask_image = Image.new("L", (size, size), 0)
            _draw_shape(ImageDraw.Draw(mask_image), kind, g.cx, g.cy, g.r, g.angle, 255)
            ys, xs = np.nonzero(np.asarray(mask_image))
            _draw_shape(draw, kind, g.cx, g.cy, g.r, g.angle, g.colour)
            truth.append(
                (g.class_id, float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            )
            g.cx += g.vx
            if not g.r <= g.cx <= size - g.r:  # bounce off the edge
                g.vx, g.cx = -g.vx, min(max(g.cx, g.r), size - g.r)
        images.append(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
        truths.append(truth)
    return images, truths
