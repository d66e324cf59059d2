"""Stage 0a: pretrain a tiny Llama on the world's text corpus and save it the way a Vicuna checkpoint is laid out."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from synthetic.corpus import CORPUS_FILE, read_corpus
from synthetic.sheet import record_ids

from synthetic.stage0.steps import log_progress, optimizer_step
from synthetic.stage0.config import LLMPretrainConfig, cache_key, cached_metrics, write_cache
from synthetic.stage0.text_gate import text_gate


def token_blocks(corpus: Path, tokenizer: PreTrainedTokenizerBase, seq_len: int,
                 replies_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus records, tokenized as the VLM tokenizes them (`record_ids`), in one stream cut into `[n, seq_len]`
    blocks: (input ids, labels). Labels keep the template's supervision (replies and captions) with `replies_only`,
    or are the ids themselves (plain language modelling)."""
    entries = read_corpus(corpus)
    if not entries:
        raise ValueError(f"{corpus}: no text to pretrain on")
    stream: list[int] = []
    targets: list[int] = []
    for entry in entries:
        ids, labels = record_ids(entry, tokenizer, entry["template"], entry.get("sheet"))
        stream.extend(ids)
        targets.extend(labels if replies_only else ids)
    n = len(stream) // seq_len
    if n < 2:
        raise ValueError(f"{corpus}: {len(stream)} tokens is too little for blocks of {seq_len}")
    return (torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len),
            torch.tensor(targets[: n * seq_len], dtype=torch.long).view(n, seq_len))


def build_llm(cfg: LLMPretrainConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def evaluate_loss(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [model(input_ids=ids[i: i + batch_size], labels=labels[i: i + batch_size]).loss.item()
              for i in range(0, len(ids), batch_size)]
    model.train()
    return float(sum(losses) / len(losses))


def pretrain_llm(world: Path, out: Path, cfg: LLMPretrainConfig, force: bool = False, log_every: int = 50) -> dict:
    """Train (or reuse a cached run with the same config and world) and return the metrics."""
    key = cache_key(cfg, world)
    if not force and (metrics := cached_metrics(out, key)) is not None:
        return {**metrics, "cached": True}
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    ids, labels = token_blocks(world / CORPUS_FILE, tokenizer, cfg.seq_len, replies_only=cfg.replies_only)
    gen = torch.Generator().manual_seed(cfg.seed)
    # Validation blocks drawn from the whole stream (the corpus is ordered: scenes first, then facts).
    order = torch.randperm(len(ids), generator=gen)
    n_val = max(1, int(len(ids) * cfg.val_fraction))
    val, train = order[:n_val][:64], order[n_val:]
    model = build_llm(cfg, tokenizer)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(optim, cfg.warmup_steps, cfg.steps)
    initial_val = evaluate_loss(model, ids[val], labels[val], cfg.batch_size)
    start, train_losses = time.perf_counter(), []
    shuffled, cursor = train[torch.randperm(len(train), generator=gen)], 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(shuffled):
            shuffled, cursor = train[torch.randperm(len(train), generator=gen)], 0
        rows = shuffled[cursor: cursor + cfg.batch_size]
        cursor += cfg.batch_size
        loss = model(input_ids=ids[rows], labels=labels[rows]).loss
        train_losses.append(optimizer_step(loss, model, optim, sched, "LLM", step))
        log_progress("llm", step, cfg.steps, train_losses, log_every)
    wall = time.perf_counter() - start
    window = max(1, min(10, cfg.steps // 5))
    metrics = {
        "params": sum(p.numel() for p in model.parameters()), "train_blocks": len(train),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len, "initial_val_loss": initial_val,
        "final_val_loss": evaluate_loss(model, ids[val], labels[val], cfg.batch_size),
        "first_train_loss": sum(train_losses[:window]) / window, "final_train_loss": sum(train_losses[-window:]) / window,
        "train_seconds": wall, "tokens_per_second": cfg.steps * cfg.batch_size * cfg.seq_len / wall,
        "torch_threads": torch.get_num_threads(),
    }
    if cfg.gate_scenes:
        metrics["text_gate"] = text_gate(model, tokenizer, seed=cfg.seed + 1, num_scenes=cfg.gate_scenes)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_cache(out, key, cfg, metrics)
    return {**metrics, "cached": False}
