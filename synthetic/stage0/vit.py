"""Stage 0b: pretrain a tiny CLIP (ViT + text tower) contrastively on whole-image captions and per-cell captions."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import (AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig,
                          PreTrainedTokenizerBase, get_cosine_schedule_with_warmup)

from synthetic.text import cell_caption, clip_caption
from synthetic.world import Scene

from synthetic.stage0.steps import log_progress, optimizer_step
from synthetic.stage0.config import ViTPretrainConfig, cache_key, cached_metrics, write_cache

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_scenes(world: Path, split: str) -> list[Scene]:
    scenes_file = world / "scenes" / f"{split}.json"
    if not scenes_file.is_file():
        raise FileNotFoundError(f"{scenes_file} not found: is {world} a synthetic world?")
    return [Scene.from_dict(raw) for raw in json.loads(scenes_file.read_text())]


def load_split(world: Path, split: str) -> tuple[torch.Tensor, list[Scene]]:
    """uint8 images `[n, 3, S, S]` and their scenes, in scene order."""
    scenes = load_scenes(world, split)
    images_root = (world / "images").resolve()
    arrays = []
    for scene in scenes:
        path = (images_root / scene.image).resolve()
        if images_root not in path.parents:
            raise ValueError(f"{world / 'scenes' / split}.json: scene {scene.id} image {scene.image!r} escapes {images_root}")
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, scenes


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def encode_captions(captions: list[str], tokenizer: PreTrainedTokenizerBase, max_len: int) -> torch.Tensor:
    """Caption ids followed by at least one `<pad>`: the text tower pools at the first `<pad>` (its eos id).

    CLIP's text tower treats eos_token_id == 2 (ours is `</s>` = 2) as a legacy checkpoint and pools at the
    arg-max token id instead, so the tower is configured with the pad id as its end marker.
    """
    pad = tokenizer.pad_token_id
    out = torch.full((len(captions), max_len), pad, dtype=torch.long)
    for i, ids in enumerate(tokenizer(captions, add_special_tokens=True)["input_ids"]):
        if len(ids) >= max_len:
            raise ValueError(f"caption {i} has {len(ids)} tokens; raise max_caption_tokens above {max_len - 1}")
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class CellCaptions:
    """The per-cell captions of the dense objective: every distinct caption once, and each patch's caption index.

    Patch (r, c) of a G x G patch grid lies in grid cell (3r // G, 3c // G); with G = 3 (patch = cell, the default)
    every patch token is contrasted with the caption of exactly its cell, e.g. `small red circle top left`.
    """

    def __init__(self, scenes_by_split: dict[str, list[Scene]], grid: int, tokenizer: PreTrainedTokenizerBase,
                 max_len: int) -> None:
        texts: dict[str, int] = {}
        self.targets: dict[str, torch.Tensor] = {}
        cell_of_patch = [(3 * (i // grid) // grid) * 3 + 3 * (i % grid) // grid for i in range(grid * grid)]
        for split, scenes in scenes_by_split.items():
            rows = []
            for scene in scenes:
                by_cell = {o.row * 3 + o.col: o for o in scene.objects}
                captions = [cell_caption(by_cell.get(cell), cell // 3, cell % 3) for cell in range(9)]
                rows.append([texts.setdefault(captions[cell], len(texts)) for cell in cell_of_patch])
            self.targets[split] = torch.tensor(rows, dtype=torch.long)
        self.texts = list(texts)
        self.ids = encode_captions(self.texts, tokenizer, max_len)


class DenseHead(nn.Module):
    """Scores patch tokens against cell captions: the text tower's pooled output mapped into the ViT's width.

    transformers' CLIP loss covers whole images only; this token-level term (as in region/dense CLIP variants)
    makes each patch token state its own cell's shape, colour, size and position. The comparison is made in
    the raw hidden space the VLM's projector reads (no learned image-side projection that could magnify a
    faint direction), so those attributes take up the token's large directions instead of hiding in small ones.
    Only used during stage 0; the saved ViT is a plain CLIP vision tower.
    """

    def __init__(self, text_width: int, vision_width: int) -> None:
        super().__init__()
        self.text_to_vision = nn.Linear(text_width, vision_width, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def logits(self, model: CLIPModel, hidden: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """`[B, P, C]` scaled cosine similarities of the B x P patch tokens of `hidden` to the C captions."""
        text = model.text_model(input_ids=caption_ids).pooler_output
        text = nn.functional.normalize(self.text_to_vision(text), dim=-1)
        tokens = nn.functional.normalize(hidden[:, 1:], dim=-1)
        return self.logit_scale.clamp(max=math.log(100.0)).exp() * tokens @ text.T

    def loss(self, model: CLIPModel, hidden: torch.Tensor, caption_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Image->text cross-entropy over the batch's distinct cell captions (twins share one column)."""
        present, column = torch.unique(targets, return_inverse=True)
        logits = self.logits(model, hidden, caption_ids[present])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), column.reshape(-1))


def patch_size(cfg: ViTPretrainConfig, image_size: int) -> int:
    """The configured patch size, or one patch per grid cell; the image side must be a multiple of it."""
    patch = cfg.patch_size or image_size // 3
    if patch < 1 or image_size % patch:
        raise ValueError(f"the world's {image_size}-pixel images do not split into {cfg.patch_size or 'grid-cell'} "
                         f"patches: set patch_size to a divisor of {image_size}, or generate the world with an "
                         "image size that is a multiple of 3")
    return patch


def build_clip(cfg: ViTPretrainConfig, tokenizer: PreTrainedTokenizerBase, image_size: int, patch: int) -> CLIPModel:
    pad = tokenizer.pad_token_id
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size,
                          intermediate_size=cfg.text_hidden_size * 4, num_hidden_layers=cfg.text_layers,
                          num_attention_heads=4, max_position_embeddings=cfg.max_caption_tokens,
                          projection_dim=cfg.projection_dim, eos_token_id=pad, pad_token_id=pad,
                          bos_token_id=tokenizer.bos_token_id)
    vision = CLIPVisionConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                              image_size=image_size, patch_size=patch, projection_dim=cfg.projection_dim)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.projection_dim)
    model = CLIPModel(config)
    # CLIP initialises the position table at std 0.02, ~40x below a patch embedding here; with so few patches
    # the tokens then barely say where they are, and the VLM's questions ask "where" and "left of".
    with torch.no_grad():
        model.vision_model.embeddings.position_embedding.weight.normal_(0.0, cfg.position_init_std)
    return model


def param_groups(model: CLIPModel, dense: DenseHead | None, weight_decay: float) -> list[dict]:
    """Decay matrices only: embeddings (the position table above all), norms, biases and scales are not decayed."""
    named = list(model.named_parameters()) + (list(dense.named_parameters(prefix="dense")) if dense else [])
    decays = {n: p.ndim == 2 and "embedding" not in n for n, p in named}
    decay = [p for n, p in named if decays[n]]
    rest = [p for n, p in named if not decays[n]]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def retrieval_accuracy(model: CLIPModel, images: torch.Tensor, captions: list[str], ids: torch.Tensor,
                       batch_size: int = 256) -> dict[str, float]:
    """Zero-shot image->caption and caption->image top-1 accuracy among the N pairs (chance 1/N).

    A hit is counted when the retrieved caption's text equals the true one (identical scenes are interchangeable).
    """
    model.eval()
    img = torch.cat([_pooled(model.get_image_features(pixel_values=normalize(images[i: i + batch_size])))
                     for i in range(0, len(images), batch_size)])
    txt = torch.cat([_pooled(model.get_text_features(input_ids=ids[i: i + batch_size]))
                     for i in range(0, len(ids), batch_size)])
    model.train()
    sims = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    i2t = sims.argmax(dim=1).tolist()
    t2i = sims.argmax(dim=0).tolist()
    n = len(captions)
    return {"image_to_text_top1": sum(captions[j] == captions[i] for i, j in enumerate(i2t)) / n,
            "text_to_image_top1": sum(captions[j] == captions[i] for i, j in enumerate(t2i)) / n,
            "num_candidates": n, "chance": 1.0 / n}


@torch.no_grad()
def cell_caption_accuracy(model: CLIPModel, dense: DenseHead, images: torch.Tensor, cells: CellCaptions, layer: int,
                          batch_size: int = 256) -> float:
    """Share of test patch tokens whose nearest caption among all distinct cell captions is their own cell's."""
    model.eval()
    hits = 0
    for i in range(0, len(images), batch_size):
        hidden = model.vision_model(pixel_values=normalize(images[i: i + batch_size]),
                                    output_hidden_states=True).hidden_states[layer]
        nearest = dense.logits(model, hidden, cells.ids).argmax(dim=-1)
        hits += int((nearest == cells.targets["test"][i: i + batch_size]).sum())
    model.train()
    return hits / cells.targets["test"].numel()


def _pooled(features: object) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output holds the projected features; 4.x a tensor.
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def pretrain_vit(world: Path, out: Path, cfg: ViTPretrainConfig, force: bool = False, log_every: int = 50) -> dict:
    """Train (or reuse a cached run) and save a full CLIP dir whose vision half `CLIPVisionModel` loads."""
    key = cache_key(cfg, world)
    if not force and (metrics := cached_metrics(out, key)) is not None:
        return {**metrics, "cached": True}
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    train_images, train_scenes = load_split(world, "train")
    test_images, test_scenes = load_split(world, "test")
    train_captions, test_captions = ([clip_caption(s) for s in scenes] for scenes in (train_scenes, test_scenes))
    train_ids = encode_captions(train_captions, tokenizer, cfg.max_caption_tokens)
    test_ids = encode_captions(test_captions, tokenizer, cfg.max_caption_tokens)
    if train_images.shape[-1] != train_images.shape[-2]:
        raise ValueError(f"{world}: images are {train_images.shape[-1]}x{train_images.shape[-2]} (a wide world); the "
                         "stage-0 ViT trains on square images: pretrain on the square world of the same height and "
                         "use its backbones")
    image_size = int(train_images.shape[-1])
    patch = patch_size(cfg, image_size)
    cells = CellCaptions({"train": train_scenes, "test": test_scenes}, image_size // patch,
                         tokenizer, cfg.max_caption_tokens)
    model = build_clip(cfg, tokenizer, image_size, patch)
    dense = DenseHead(cfg.text_hidden_size, cfg.hidden_size)
    optim = torch.optim.AdamW(param_groups(model, dense if cfg.dense_weight > 0 else None, cfg.weight_decay),
                              lr=cfg.lr, betas=(0.9, 0.98))
    sched = get_cosine_schedule_with_warmup(optim, cfg.warmup_steps, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(cfg.batch_size, len(train_images))
    initial = retrieval_accuracy(model, test_images, test_captions, test_ids)
    start, losses = time.perf_counter(), []
    order, cursor = torch.randperm(len(train_images), generator=gen), 0
    for step in range(cfg.steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(train_images), generator=gen), 0
        idx = order[cursor: cursor + batch_size]
        cursor += batch_size
        result = model(input_ids=train_ids[idx], pixel_values=normalize(train_images[idx]), return_loss=True,
                    output_hidden_states=cfg.dense_weight > 0)
        loss = result.loss
        if cfg.dense_weight > 0:
            hidden = result.vision_model_output.hidden_states[cfg.dense_layer]
            loss = loss + cfg.dense_weight * dense.loss(model, hidden, cells.ids, cells.targets["train"][idx])
        losses.append(optimizer_step(loss, model, optim, sched, "ViT (contrastive)", step))
        log_progress("vit", step, cfg.steps, losses, log_every)
    wall = time.perf_counter() - start
    window = max(1, min(10, cfg.steps // 5))
    final = retrieval_accuracy(model, test_images, test_captions, test_ids)
    cell_accuracy = cell_caption_accuracy(model, dense, test_images, cells, cfg.dense_layer) if cfg.dense_weight > 0 else None
    metrics = {
        "params_vision": sum(p.numel() for p in model.vision_model.parameters()),
        "params_total": sum(p.numel() for p in model.parameters()), "batch_size": batch_size,
        "first_train_loss": sum(losses[:window]) / window, "final_train_loss": sum(losses[-window:]) / window,
        "initial_retrieval": initial, "retrieval": final, "cell_caption_top1": cell_accuracy,
        "cell_caption_chance": 1.0 / len(cells.texts), "train_seconds": wall,
        "images_per_second": cfg.steps * batch_size / wall, "torch_threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    size = int(train_images.shape[-1])
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_cache(out, key, cfg, metrics)
    return {**metrics, "cached": False}
