"""What a stage-0 ViT's patch tokens say about their grid cell: linear-probe accuracy and variance share per attribute.

Usage: .venv/bin/python bench/vit_tokens.py --world runs/demo/world [--vit WORLD/backbones/vit] [--layer -2] [--scenes 2000]

Needs one patch per grid cell (the default stage-0 ViT). For each attribute (shape, colour, size, cell) it prints
  - the accuracy of a linear probe (standardized features, 80/20 split of object cells): is it decodable at all;
  - the share of token variance the attribute explains (between-class / total): is it *salient*. Gradient
    training of the projector and LLM picks up large directions first; an attribute that is decodable but holds
    a few percent of the variance is learned slowly (the measurement that led to the per-cell caption objective).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import CLIPVisionModel

from synthetic.world import COLOUR_NAMES, SHAPES, SIZES
from synthetic.stage0.vit import load_split, normalize


def cell_tokens(world: Path, vit: Path, layer: int, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Tokens of the cells holding an object, and each attribute's class index per token."""
    model = CLIPVisionModel.from_pretrained(str(vit)).eval()
    images, scenes = load_split(world, "train")
    scenes = scenes[:n]
    with torch.no_grad():
        hidden = torch.cat([model(pixel_values=normalize(images[i: i + 250]), output_hidden_states=True)
                            .hidden_states[layer] for i in range(0, len(scenes), 250)])
    if hidden.shape[1] != 10:
        raise SystemExit(f"{vit}: {hidden.shape[1] - 1} patch tokens; this bench needs one per grid cell (9)")
    tokens, labels = [], {"shape": [], "colour": [], "size": [], "cell": []}
    for scene, h in zip(scenes, hidden):
        for obj in scene.objects:
            cell = obj.row * 3 + obj.col
            tokens.append(h[1 + cell])
            labels["shape"].append(SHAPES.index(obj.shape))
            labels["colour"].append(COLOUR_NAMES.index(obj.colour))
            labels["size"].append(SIZES.index(obj.size))
            labels["cell"].append(cell)
    return torch.stack(tokens), {k: torch.tensor(v) for k, v in labels.items()}


def variance_share(x: torch.Tensor, y: torch.Tensor) -> float:
    centred = x - x.mean(0)
    between = sum(int((y == c).sum()) * float((centred[y == c].mean(0) ** 2).sum()) for c in y.unique().tolist())
    return between / len(y) / float((centred ** 2).sum(1).mean())


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> float:
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n = int(len(x) * 0.8)
    probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    optim = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        optim.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[:n]), y[:n]).backward()
        optim.step()
    with torch.no_grad():
        return float((probe(x[n:]).argmax(1) == y[n:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--vit", type=Path, default=None, help="default WORLD/backbones/vit")
    parser.add_argument("--layer", type=int, default=-2, help="hidden state read (the VLM configs use -2)")
    parser.add_argument("--scenes", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokens, labels = cell_tokens(args.world, args.vit or args.world / "backbones" / "vit", args.layer, args.scenes)
    print(f"{len(tokens)} object cells, hidden state {args.layer}, mean token norm {tokens.norm(dim=1).mean():.1f}")
    print(f"{'attribute':<10} {'classes':>7} {'probe acc':>10} {'variance share':>15}")
    for name, y in labels.items():
        print(f"{name:<10} {int(y.max()) + 1:>7} {probe_accuracy(tokens, y):>10.3f} {variance_share(tokens, y):>15.3f}")


if __name__ == "__main__":
    main()
