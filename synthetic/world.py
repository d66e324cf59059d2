"""The world's vocabulary (shapes, colours, sizes, grid positions), held-out combinations and scene sampling."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
SHAPE_PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
# Saturated, mutually distant colours; backgrounds are light and nearly grey, so never confusable with these.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "green": (25, 160, 45),
    "blue": (30, 60, 225),
    "yellow": (240, 205, 15),
    "purple": (140, 40, 180),
    "cyan": (20, 195, 210),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "striped", "checkered", "dotted")
MAX_OBJECTS = 4

# One held-out pair per colour and per shape (a Latin transversal), so every colour and every shape is still
# seen with five partners in training; these six pairs appear only in the test split.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "star"), ("green", "circle"), ("blue", "triangle"),
     ("yellow", "cross"), ("purple", "square"), ("cyan", "diamond")}
)
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in HELD_OUT
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: attributes plus its grid cell."""

    shape: str
    colour: str
    size: str
    row: int  # 0 top, 1 middle, 2 bottom
    col: int  # 0 left, 1 center, 2 right

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        return position_phrase(self.row, self.col)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image; objects are stored in reading order (row, then column)."""

    id: int
    split: str
    background: str
    background_tint: tuple[int, int, int]
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    @property
    def file_name(self) -> str:
        return f"{self.id:06d}.png"

    @property
    def image(self) -> str:
        """Path relative to the world's `images/` folder (the LLaVA `image` field)."""
        return f"{self.split}/{self.file_name}"

    def to_dict(self) -> dict:
        return {"id": self.id, "split": self.split, "image": self.image, "background": self.background,
                "background_tint": list(self.background_tint),
                "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, raw: dict) -> "Scene":
        objects = tuple(SceneObject(**o) for o in raw["objects"])
        return cls(id=raw["id"], split=raw["split"], background=raw["background"],
                   background_tint=tuple(raw["background_tint"]), objects=objects)


def position_phrase(row: int, col: int) -> str:
    """`top left`, `middle right`, ...; the central cell is just `center`."""
    if row == 1 and col == 1:
        return "center"
    return f"{ROWS[row]} {COLS[col]}"


def scene_rng(seed: int, split: str, index: int, purpose: str) -> random.Random:
    """An independent RNG per (seed, split, item, purpose): results never depend on worker order."""
    return random.Random(f"{seed}/{split}/{index}/{purpose}")


def sample_scene(seed: int, split: str, index: int, held_out_share: float = 0.5) -> Scene:
    """Sample one scene. Train scenes never contain a held-out pair; about `held_out_share` of test scenes do."""
    rng = scene_rng(seed, split, index, "scene")
    n = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(9), n)
    force_held_out = split != "train" and rng.random() < held_out_share
    pairs: list[tuple[str, str]] = []
    if force_held_out:
        pairs.append(rng.choice(sorted(HELD_OUT)))
    allowed = SEEN_PAIRS if split == "train" else ALL_PAIRS
    while len(pairs) < n:
        pair = rng.choice(allowed)
        if pair not in pairs:
            pairs.append(pair)
    rng.shuffle(pairs)
    objects = [SceneObject(shape=s, colour=c, size=rng.choice(SIZES), row=cell // 3, col=cell % 3)
               for (c, s), cell in zip(pairs, cells)]
    objects.sort(key=lambda o: (o.row, o.col))
    base = rng.randint(200, 235)
    tint = tuple(base + d for d in _tint_offsets(rng))
    return Scene(id=index, split=split, background=rng.choice(BACKGROUNDS),
                 background_tint=tint, objects=tuple(objects))


def _tint_offsets(rng: random.Random) -> tuple[int, int, int]:
    # Low saturation (channels within +-8 of each other) keeps backgrounds far from every object colour.
    base = [rng.randint(-8, 8) for _ in range(3)]
    return (base[0], base[1], base[2])
