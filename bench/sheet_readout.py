"""What the image tokens say to the LLM after phase 1: each projected token's nearest sheet word, per word kind.

The synthetic world's LLM learned scenes as sheets (five words per grid cell, `synthetic/sheet.py`) and the
`expand5x_mlp2x_gelu` projector turns each cell token into five LLM-space tokens. This reads every projected token
as the word whose input embedding is nearest (cosine, among the sheet's own words) and scores it against the
image's true sheet, per kind (row, column, size, colour, shape), on test images, seen and held-out pairs apart.

Usage: .venv/bin/python bench/sheet_readout.py --model runs/demo/align --world runs/demo/world [--images 400]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

from synthetic.sheet import EMPTY_WORD, WORDS_PER_CELL, cell_words
from synthetic.world import COLOUR_NAMES, COLS, HELD_OUT, ROWS, SHAPES, SIZES, Scene
from vlm.checkpoint import load

KINDS = ("row", "column", "size", "colour", "shape")


@torch.no_grad()
def readout(model_dir: Path, world: Path, limit: int) -> dict[str, dict[str, float]]:
    model = load(model_dir, device="cpu").eval()
    tok = model.tokenizer
    words = sorted(set(ROWS) | set(COLS) | set(SIZES) | set(COLOUR_NAMES) | set(SHAPES) | {EMPTY_WORD})
    # Sheet words as the tokenizer writes them mid-sheet (one token each, with the leading space).
    ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    if any(len(i) != 1 for i in ids):
        raise SystemExit(f"{model_dir}: its tokenizer does not write every sheet word as one token")
    table = torch.nn.functional.normalize(model.llm.get_input_embeddings().weight[[i[0] for i in ids]], dim=-1)
    scenes = [Scene.from_dict(s) for s in json.loads((world / "scenes" / "test.json").read_text())][:limit]
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for scene in scenes:
        with Image.open(world / "images" / scene.image) as img:
            pixels = model.image_processor(img.convert("RGB"))
        tokens = model.encode_images(pixels.unsqueeze(0) if pixels.dim() == 3 else pixels)[0]
        if tokens.shape[0] != 9 * WORDS_PER_CELL:
            raise SystemExit(f"{model_dir}: {tokens.shape[0]} image tokens, not nine cells of {WORDS_PER_CELL}")
        nearest = (torch.nn.functional.normalize(tokens, dim=-1) @ table.T).argmax(-1).tolist()
        held = {(o.row * 3 + o.col) for o in scene.objects if o.pair in HELD_OUT}
        for cell, truth in enumerate(cell_words(scene)):
            group = "heldout" if cell in held else ("object" if truth[2] != EMPTY_WORD else "empty")
            for k, (kind, word) in enumerate(zip(KINDS, truth)):
                hits[group][kind].append(words[nearest[cell * WORDS_PER_CELL + k]] == word)
    return {g: {k: 100.0 * sum(v) / len(v) for k, v in kinds.items()} for g, kinds in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a phase-1 (or later) checkpoint directory")
    parser.add_argument("--world", required=True, type=Path)
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()
    scores = readout(args.model, args.world, args.images)
    print(f"nearest sheet word of each image token, % correct ({args.model}, {args.images} test images)\n")
    print("| cells | " + " | ".join(KINDS) + " |\n|---|" + "---|" * len(KINDS))
    for group in ("object", "heldout", "empty"):
        if group in scores:
            print(f"| {group} | " + " | ".join(f"{scores[group].get(k, float('nan')):.1f}" for k in KINDS) + " |")


if __name__ == "__main__":
    main()
