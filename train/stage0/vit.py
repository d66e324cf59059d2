"""Stage 0b: pretrain a tiny CLIP (ViT + text tower) contrastively on the world's images and full-attribute captions."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig,
                          PreTrainedTokenizerBase, get_cosine_schedule_with_warmup)

from instruct_data.synthetic.text import clip_caption
from instruct_data.synthetic.world import Scene

from .steps import log_progress, optimizer_step
from .config import ViTPretrainConfig, cache_key, cached_metrics, write_cache

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_split(world: Path, split: str) -> tuple[torch.Tensor, list[str]]:
    """uint8 images `[n, 3, S, S]` and their captions, in scene order."""
    scenes_file = world / "scenes" / f"{split}.json"
    if not scenes_file.is_file():
        raise FileNotFoundError(f"{scenes_file} not found: is {world} a synthetic world?")
    scenes = [Scene.from_dict(raw) for raw in json.loads(scenes_file.read_text())]
    images_root = (world / "images").resolve()
    arrays = []
    for scene in scenes:
        path = (images_root / scene.image).resolve()
        if images_root not in path.parents:
            raise ValueError(f"{scenes_file}: scene {scene.id} image {scene.image!r} escapes {images_root}")
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, [clip_caption(s) for s in scenes]


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


def build_clip(cfg: ViTPretrainConfig, tokenizer: PreTrainedTokenizerBase, image_size: int) -> CLIPModel:
    pad = tokenizer.pad_token_id
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size,
                          intermediate_size=cfg.text_hidden_size * 4, num_hidden_layers=cfg.text_layers,
                          num_attention_heads=4, max_position_embeddings=cfg.max_caption_tokens,
                          projection_dim=cfg.projection_dim, eos_token_id=pad, pad_token_id=pad,
                          bos_token_id=tokenizer.bos_token_id)
    vision = CLIPVisionConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                              image_size=image_size, patch_size=cfg.patch_size, projection_dim=cfg.projection_dim)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.projection_dim)
    return CLIPModel(config)


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
    train_images, train_captions = load_split(world, "train")
    test_images, test_captions = load_split(world, "test")
    train_ids = encode_captions(train_captions, tokenizer, cfg.max_caption_tokens)
    test_ids = encode_captions(test_captions, tokenizer, cfg.max_caption_tokens)
    model = build_clip(cfg, tokenizer, int(train_images.shape[-1]))
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
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
        loss = model(input_ids=train_ids[idx], pixel_values=normalize(train_images[idx]), return_loss=True).loss
        losses.append(optimizer_step(loss, model, optim, sched, "ViT (contrastive)", step))
        log_progress("vit", step, cfg.steps, losses, log_every)
    wall = time.perf_counter() - start
    window = max(1, min(10, cfg.steps // 5))
    final = retrieval_accuracy(model, test_images, test_captions, test_ids)
    metrics = {
        "params_vision": sum(p.numel() for p in model.vision_model.parameters()),
        "params_total": sum(p.numel() for p in model.parameters()), "batch_size": batch_size,
        "first_train_loss": sum(losses[:window]) / window, "final_train_loss": sum(losses[-window:]) / window,
        "initial_retrieval": initial, "retrieval": final, "train_seconds": wall,
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
