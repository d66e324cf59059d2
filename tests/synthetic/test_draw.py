"""Rendering: deterministic PNG bytes, each object's colour really at its grid cell, backgrounds never object-coloured."""
import io

import numpy as np
from PIL import Image

from synthetic.draw import png_bytes, render_scene
from synthetic.world import COLOURS, Scene, SceneObject, sample_scene

PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
NAMES = list(COLOURS)


def _nearest(rgb: np.ndarray) -> tuple[str, float]:
    dist = np.linalg.norm(PALETTE - rgb[None, :], axis=1)
    return NAMES[int(dist.argmin())], float(dist.min())


def test_render_is_deterministic_and_seed_dependent() -> None:
    scene = sample_scene(0, "train", 3)
    a = png_bytes(render_scene(scene, 64, seed=0))
    assert a == png_bytes(render_scene(scene, 64, seed=0))
    assert a != png_bytes(render_scene(scene, 64, seed=1))  # same scene, different noise/jitter
    img = Image.open(io.BytesIO(a))
    assert img.size == (64, 64) and img.mode == "RGB"


def test_object_colours_sit_in_their_cells_and_empty_cells_are_background() -> None:
    size, cell = 64, 64 / 3
    for i in range(40):
        scene = sample_scene(1, "test", i)
        pixels = np.asarray(render_scene(scene, size, seed=1), dtype=np.float32)
        occupied = {(o.row, o.col): o for o in scene.objects}
        for row in range(3):
            for col in range(3):
                y, x = int((row + 0.5) * cell), int((col + 0.5) * cell)
                centre = np.median(pixels[y - 1: y + 2, x - 1: x + 2].reshape(-1, 3), axis=0)
                name, dist = _nearest(centre)
                if (row, col) in occupied:
                    assert name == occupied[(row, col)].colour and dist < 40, (scene.id, row, col, centre)
                else:
                    assert dist > 80, (scene.id, row, col, centre)  # light grey never reads as an object colour


def _coloured_pixels(img: Image.Image, colour: str) -> int:
    pixels = np.asarray(img, dtype=np.float32)
    return int((np.linalg.norm(pixels - np.array(COLOURS[colour], np.float32), axis=-1) < 60).sum())


def test_wide_render_has_its_size_and_is_deterministic() -> None:
    scene = sample_scene(0, "train", 3)
    a = png_bytes(render_scene(scene, 72, seed=0, width=216))
    assert a == png_bytes(render_scene(scene, 72, seed=0, width=216))
    img = Image.open(io.BytesIO(a))
    assert img.size == (216, 72) and img.mode == "RGB"
    assert png_bytes(render_scene(scene, 72, seed=0, width=72)) == png_bytes(render_scene(scene, 72, seed=0))


def test_wide_objects_keep_the_square_pixel_size() -> None:
    for shape, colour, size, row, col in [("circle", "red", "large", 1, 1), ("star", "blue", "small", 0, 2),
                                          ("square", "green", "large", 2, 0)]:
        obj = SceneObject(shape=shape, colour=colour, size=size, row=row, col=col)
        scene = Scene(id=0, split="train", background="plain", background_tint=(220, 220, 220), objects=(obj,))
        square = _coloured_pixels(render_scene(scene, 72, seed=0), colour)
        wide_img = render_scene(scene, 72, seed=0, width=216)
        wide = _coloured_pixels(wide_img, colour)
        assert square > 20 and abs(wide - square) <= 0.06 * square, (shape, square, wide)
        # and the object sits in its (72-pixel-wide) cell
        cell = np.asarray(wide_img, dtype=np.float32)[row * 24:(row + 1) * 24, col * 72:(col + 1) * 72]
        assert _coloured_pixels(Image.fromarray(cell.astype(np.uint8)), colour) == wide
