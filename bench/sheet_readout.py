"""What the image tokens say to the LLM after phase 1: per word kind, the word each projected token is nearest to.

The synthetic world's LLM learned scenes as sheets (`synthetic/sheet.py`): nine cell tokens, each the mean input
embedding of its cell's five words, where the `mlp2x_gelu` projector puts the ViT's nine cell tokens. This reads,
for every projected token and each kind of word (row, column, size, colour, shape), the word of that kind whose
input embedding is nearest (cosine) and scores it against the image's true sheet, on test images, cells with a
seen pair, a held-out pair and empty cells apart.

Usage: .venv/bin/python bench/sheet_readout.py --model runs/demo/align --world runs/demo/world [--images 400]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

from synthetic.sheet import EMPTY_WORD, NUM_CELLS, cell_words, word_id
from synthetic.world import COLOUR_NAMES, COLS, HELD_OUT, ROWS, SHAPES, SIZES, Scene
from vlm.model import VisionLanguageModel

KINDS = ("row", "column", "size", "colour", "shape")


@torch.no_grad()
def readout(model_dir: Path, world: Path, limit: int) -> dict[str, dict[str, float]]:
    model = VisionLanguageModel.load(model_dir, device="cpu").eval()
    tok = model.tokenizer
    # Per kind, the words a cell may hold there (`empty` for the three object words of an empty cell).
    vocab = {"row": list(ROWS), "column": list(COLS), "size": [*SIZES, EMPTY_WORD],
             "colour": [*COLOUR_NAMES, EMPTY_WORD], "shape": [*SHAPES, EMPTY_WORD]}
    weights = model.llm.get_input_embeddings().weight
    tables = {kind: torch.nn.functional.normalize(weights[[word_id(tok, w) for w in words]], dim=-1)
              for kind, words in vocab.items()}
    scenes = [Scene.from_dict(s) for s in json.loads((world / "scenes" / "test.json").read_text())][:limit]
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for scene in scenes:
        with Image.open(world / "images" / scene.image) as img:
            pixels = model.image_processor(img.convert("RGB"))
        tokens = model.encode_images(pixels.unsqueeze(0) if pixels.dim() == 3 else pixels)[0]
        if tokens.shape[0] != NUM_CELLS:
            raise SystemExit(f"{model_dir}: {tokens.shape[0]} image tokens, not one per grid cell ({NUM_CELLS})")
        unit = torch.nn.functional.normalize(tokens, dim=-1)
        nearest = {kind: (unit @ table.T).argmax(-1).tolist() for kind, table in tables.items()}
        held = {(o.row * 3 + o.col) for o in scene.objects if o.pair in HELD_OUT}
        for cell, truth in enumerate(cell_words(scene)):
            group = "heldout" if cell in held else ("object" if truth[2] != EMPTY_WORD else "empty")
            for kind, word in zip(KINDS, truth):
                hits[group][kind].append(vocab[kind][nearest[kind][cell]] == word)
    return {g: {k: 100.0 * sum(v) / len(v) for k, v in kinds.items()} for g, kinds in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a phase-1 (or later) checkpoint directory")
    parser.add_argument("--world", required=True, type=Path)
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()
    scores = readout(args.model, args.world, args.images)
    print(f"nearest word of each kind to each image token, % correct ({args.model}, {args.images} test images)\n")
    print("| cells | " + " | ".join(KINDS) + " |\n|---|" + "---|" * len(KINDS))
    for group in ("object", "heldout", "empty"):
        if group in scores:
            print(f"| {group} | " + " | ".join(f"{scores[group].get(k, float('nan')):.1f}" for k in KINDS) + " |")


if __name__ == "__main__":
    main()
