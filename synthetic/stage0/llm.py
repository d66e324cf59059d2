"""Stage 0a: pretrain a tiny Llama on the world's text corpus and save it the way a Vicuna checkpoint is laid out."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from synthetic.corpus import DOC_SEPARATOR

from synthetic.stage0.steps import log_progress, optimizer_step
from synthetic.stage0.config import LLMPretrainConfig, cache_key, cached_metrics, write_cache


def token_blocks(corpus: Path, tokenizer: PreTrainedTokenizerBase, seq_len: int) -> torch.Tensor:
    """The corpus as one stream (`<s>` doc `</s>` ...), cut into `[n, seq_len]` blocks."""
    docs = [d for d in corpus.read_text(encoding="utf-8").split(DOC_SEPARATOR) if d.strip()]
    if not docs:
        raise ValueError(f"{corpus}: no text to pretrain on")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    # The Rust tokenizer's batch encode directly: the Python BatchEncoding wrapper costs more than the encoding.
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=True):
        ids = enc.ids
        stream.extend(ids)
        if ids[-1] != eos:
            stream.append(eos)
    n = len(stream) // seq_len
    if n < 2:
        raise ValueError(f"{corpus}: {len(stream)} tokens is too little for blocks of {seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def build_llm(cfg: LLMPretrainConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def evaluate_loss(model: LlamaForCausalLM, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [model(input_ids=blocks[i: i + batch_size], labels=blocks[i: i + batch_size]).loss.item()
              for i in range(0, len(blocks), batch_size)]
    model.train()
    return float(sum(losses) / len(losses))


def pretrain_llm(world: Path, out: Path, cfg: LLMPretrainConfig, force: bool = False, log_every: int = 50) -> dict:
    """Train (or reuse a cached run with the same config and world) and return the metrics."""
    key = cache_key(cfg, world)
    if not force and (metrics := cached_metrics(out, key)) is not None:
        return {**metrics, "cached": True}
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    blocks = token_blocks(world / "text_corpus.txt", tokenizer, cfg.seq_len)
    gen = torch.Generator().manual_seed(cfg.seed)
    # Validation blocks drawn from the whole stream (the corpus is ordered: scenes first, then facts).
    shuffled = blocks[torch.randperm(len(blocks), generator=gen)]
    n_val = max(1, int(len(blocks) * cfg.val_fraction))
    train_blocks, val_blocks = shuffled[n_val:], shuffled[:n_val][:64]
    model = build_llm(cfg, tokenizer)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(optim, cfg.warmup_steps, cfg.steps)
    initial_val = evaluate_loss(model, val_blocks, cfg.batch_size)
    start, train_losses = time.perf_counter(), []
    order = torch.randperm(len(train_blocks), generator=gen)
    cursor = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(train_blocks), generator=gen), 0
        batch = train_blocks[order[cursor: cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        loss = model(input_ids=batch, labels=batch).loss
        train_losses.append(optimizer_step(loss, model, optim, sched, "LLM", step))
        log_progress("llm", step, cfg.steps, train_losses, log_every)
    wall = time.perf_counter() - start
    window = max(1, min(10, cfg.steps // 5))
    metrics = {
        "params": sum(p.numel() for p in model.parameters()), "train_blocks": len(train_blocks),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len, "initial_val_loss": initial_val,
        "final_val_loss": evaluate_loss(model, val_blocks, cfg.batch_size),
        "first_train_loss": sum(train_losses[:window]) / window, "final_train_loss": sum(train_losses[-window:]) / window,
        "train_seconds": wall, "tokens_per_second": cfg.steps * cfg.batch_size * cfg.seq_len / wall,
        "torch_threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_cache(out, key, cfg, metrics)
    return {**metrics, "cached": False}
