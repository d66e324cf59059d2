"""Render a Scene to an RGB PIL image: light textured background, antialiased shapes, light pixel noise."""
from __future__ import annotations

import hashlib
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from synthetic.world import COLOURS, Scene, SceneObject, scene_rng

SUPERSAMPLE = 2  # draw at 2x then downsample: cheap antialiasing, so small stars still look like stars
NOISE_STD = 4.0
SIZE_RADIUS = {"small": 0.27, "large": 0.43}  # radius as a fraction of the grid cell


def render_scene(scene: Scene, image_size: int = 72, seed: int = 0, width: int | None = None) -> Image.Image:
    """Draw `scene` at `width` x `image_size` (square when `width` is None); deterministic for (scene, seed).

    The 3x3 grid's cells are `width / 3` wide and `image_size / 3` tall; objects keep the size (and jitter) they
    have in the square world of the same height, centred in their wider cell.
    """
    width = image_size if width is None else width
    big_h, big_w = image_size * SUPERSAMPLE, width * SUPERSAMPLE
    rng = scene_rng(seed, scene.split, scene.id, "draw")
    canvas = Image.fromarray(_background(scene, big_h, big_w, rng.randint(0, 2**31 - 1)), "RGB")
    draw = ImageDraw.Draw(canvas)
    cell_w, cell_h = big_w / 3, big_h / 3
    for obj in scene.objects:
        jx, jy = (rng.uniform(-0.08, 0.08) * cell_h for _ in range(2))
        cx, cy = (obj.col + 0.5) * cell_w + jx, (obj.row + 0.5) * cell_h + jy
        _draw_shape(draw, obj, cx, cy, SIZE_RADIUS[obj.size] * cell_h, rng.uniform(-0.15, 0.15))
    small = canvas.resize((width, image_size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32)
    noise_rng = np.random.default_rng(_int_seed(seed, scene.split, scene.id))
    pixels = pixels + noise_rng.normal(0.0, NOISE_STD, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    """PNG-encode without timestamps or other metadata, so equal pixels give byte-identical files."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _int_seed(seed: int, split: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{index}/noise".encode()).digest()[:8], "little")


def _background(scene: Scene, height: int, width: int, seed: int) -> np.ndarray:
    tint = np.array(scene.background_tint, dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    period = int(rng.integers(6, 14)) * 2
    if scene.background == "plain":
        shade = np.zeros((height, width), np.float32)
    elif scene.background == "gradient":
        axis, extent = (xx, width) if rng.random() < 0.5 else (yy, height)
        shade = axis / extent * 30.0
    elif scene.background == "striped":
        axis = xx if rng.random() < 0.5 else yy
        shade = ((axis // (period // 2)) % 2) * 14.0
    elif scene.background == "checkered":
        shade = (((xx // period) + (yy // period)) % 2) * 12.0
    elif scene.background == "dotted":
        dx, dy = xx % period - period / 2, yy % period - period / 2
        shade = ((dx * dx + dy * dy) < (period / 5) ** 2) * 22.0
    else:
        raise ValueError(f"scene {scene.id}: unknown background {scene.background!r}")
    rgb = tint[None, None, :] - shade[:, :, None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, cx: float, cy: float, r: float, tilt: float) -> None:
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        h = r * 0.82
        draw.polygon(_rotate([(-h, -h), (h, -h), (h, h), (-h, h)], cx, cy, tilt * 0.5), fill=fill)
    elif obj.shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(_rotate(pts, cx, cy + r * 0.15, tilt), fill=fill)
    elif obj.shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        draw.polygon(_rotate(pts, cx, cy, tilt), fill=fill)
    elif obj.shape == "cross":
        w = r * 0.36
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        draw.polygon(_rotate(pts, cx, cy, tilt * 0.5), fill=fill)
    elif obj.shape == "diamond":
        pts = [(0, -r), (r * 0.75, 0), (0, r), (-r * 0.75, 0)]
        draw.polygon(_rotate(pts, cx, cy, tilt * 0.3), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]
