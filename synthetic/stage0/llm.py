"""Stage 0a: pretrain a tiny Llama on the world's text corpus and save it the way a Vicuna checkpoint is laid out."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from conversation.tokenize import IGNORE_INDEX
from synthetic.corpus import CORPUS_FILE, LESSONS, lesson, read_corpus
from synthetic.sheet import NO_CELL, WORDS_PER_CELL, SheetRecord, record_ids, sheet_embeddings, word_id
from synthetic.world import COLOUR_NAMES, SHAPES
from synthetic.stage0.config import LLMPretrainConfig, cache_key, cached_metrics, write_cache
from synthetic.stage0.steps import log_progress, optimizer_step
from synthetic.stage0.text_gate import text_gate


@dataclass(frozen=True)
class SheetBatch:
    """Right-padded rows of whole records: ids, labels (IGNORE_INDEX on padding), cell-word ids, attention mask."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    cell_ids: torch.Tensor
    attention_mask: torch.Tensor


def tokenize_corpus(entries: list[dict], tokenizer: PreTrainedTokenizerBase,
                    replies_only: bool = True) -> list[SheetRecord]:
    """The corpus entries (`read_corpus`) tokenized as the VLM tokenizes them (`record_ids`). Labels keep the
    template's supervision (replies and captions) with `replies_only`, or are the ids themselves (plain language
    modelling)."""
    records = [record_ids(entry, tokenizer, entry["template"], entry.get("sheet")) for entry in entries]
    if not replies_only:
        records = [SheetRecord(r.input_ids, list(r.input_ids), r.cell_ids) for r in records]
    return records


def lookup_labels(record: SheetRecord, key_ids: set[int], stop_ids: set[int]) -> SheetRecord:
    """An inventory's labels narrowed to the looked-up words: a word right after a key word, and the words that
    continue it up to the next comma, period or eos (`top left` after `star`).

    Why (measured on inventories alone, 64 per step): with the loss on these words only, a 4-layer model learns the
    lookup in ~150 steps; with the loss also on the keys and punctuation it was still at chance after 300 — the
    other targets are easier and hold the attention on them, a plateau the lookup never leaves in the budget.
    """
    labels = [IGNORE_INDEX] * len(record.labels)
    for p in range(1, len(labels)):
        if record.labels[p] == IGNORE_INDEX:
            continue
        after_key = record.input_ids[p - 1] in key_ids and labels[p - 1] == IGNORE_INDEX
        continues = labels[p - 1] != IGNORE_INDEX and record.input_ids[p] not in stop_ids
        if after_key or continues:
            labels[p] = record.labels[p]
    return SheetRecord(record.input_ids, labels, record.cell_ids)


def answer_labels(record: SheetRecord, stop_ids: set[int]) -> SheetRecord:
    """A one-question chat's labels without the end of turn: the answer's words only (why: `lookup_labels`)."""
    labels = [IGNORE_INDEX if token in stop_ids else label for token, label in zip(record.input_ids, record.labels)]
    return SheetRecord(record.input_ids, labels, record.cell_ids)


def lesson_records(records: list[SheetRecord], entries: list[dict], lessons: tuple[str, ...],
                   tokenizer: PreTrainedTokenizerBase) -> dict[str, list[SheetRecord]]:
    """Per warm-up lesson (`synthetic.corpus.LESSONS`), its corpus records with the labels narrowed to what is
    looked up: an inventory's values, a one-question chat's answer."""
    unknown = [name for name in lessons if name not in LESSONS]
    if unknown:
        raise ValueError(f"unknown warm-up lessons {unknown}; known: {', '.join(LESSONS)}")
    key_ids = {word_id(tokenizer, w) for w in (*SHAPES, *COLOUR_NAMES)}
    stop_ids = {tokenizer.convert_tokens_to_ids(","), tokenizer.convert_tokens_to_ids("."), tokenizer.eos_token_id}
    narrow = {"values": lambda r: lookup_labels(r, key_ids, stop_ids), "answer": lambda r: answer_labels(r, stop_ids)}
    chosen: dict[str, list[SheetRecord]] = {name: [] for name in lessons}
    for record, entry in zip(records, entries):
        if (name := lesson(entry)) in chosen:
            chosen[name].append(narrow[entry["lookup"]](record))
    return chosen


def warmup_pools(by_lesson: dict[str, list[SheetRecord]], lessons: tuple[str, ...],
                 batch: int) -> list[list[SheetRecord]]:
    """The record pool of each lesson in turn: a lesson adds its records to those of the lessons before it.

    Why one skill at a time (measured, 64 records a step, loss on the looked-up words only): with the four
    inventory values mixed from the start, a 4-layer model read positions after 300 steps but sizes were still at
    chance after 1,200; taught one value at a time, each was read right 99 % of the time within 100-200 steps of
    being added, and the earlier ones stayed.
    """
    pools, pool = [], []
    for name in lessons:
        if not by_lesson[name]:
            raise ValueError(f"warm-up lesson {name!r} has no records in the corpus")
        pool = pool + by_lesson[name]
        if len(pool) < batch:
            raise ValueError(f"warm-up lesson {name!r}: {len(pool)} records, fewer than one batch of {batch}")
        pools.append(pool)
    return pools


def length_batches(lengths: list[int], batch_tokens: int, window: int = 0,
                   generator: torch.Generator | None = None) -> list[list[int]]:
    """Indices grouped by length, each group as many rows as fit `batch_tokens` once padded.

    With `window`, the records are shuffled first and sorted by length only within windows of that many: every
    batch then mixes the corpus's kinds of records. Why (measured on the shipped world's corpus): sorted over the
    whole corpus, the 4,000 short text-only chats filled 82 of 1,523 batches (~135 steps of a 2,500-step run);
    windows of 256 spread them over 919 of 2,168 batches, for 18.7 % padding instead of 0.1 % — and lifted the
    LLM's text-only answers from 19 to 28 % only (the config's comment has the rest).
    """
    order = torch.randperm(len(lengths), generator=generator).tolist() if window else list(range(len(lengths)))
    chunks = [order[i: i + window] for i in range(0, len(order), window)] if window else [order]
    batches: list[list[int]] = []
    for chunk in chunks:
        start = len(batches)
        for index in sorted(chunk, key=lambda i: lengths[i]):
            if len(batches) > start and (len(batches[-1]) + 1) * lengths[index] <= batch_tokens:
                batches[-1].append(index)
            else:
                batches.append([index])
    return batches


def collate(records: list[SheetRecord], pad_token_id: int) -> SheetBatch:
    width = max(len(r.input_ids) for r in records)
    pads = [width - len(r.input_ids) for r in records]
    return SheetBatch(
        input_ids=torch.tensor([r.input_ids + [pad_token_id] * p for r, p in zip(records, pads)]),
        labels=torch.tensor([r.labels + [IGNORE_INDEX] * p for r, p in zip(records, pads)]),
        cell_ids=torch.tensor([r.cell_ids + [[NO_CELL] * WORDS_PER_CELL] * p for r, p in zip(records, pads)]),
        attention_mask=torch.tensor([[1] * len(r.input_ids) + [0] * p for r, p in zip(records, pads)]),
    )


def sheet_loss(model: LlamaForCausalLM, batch: SheetBatch) -> torch.Tensor:
    embeds = sheet_embeddings(model.get_input_embeddings(), batch.input_ids, batch.cell_ids)
    return model(inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=batch.labels).loss


def build_llm(cfg: LLMPretrainConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def evaluate_loss(model: LlamaForCausalLM, batches: list[SheetBatch]) -> float:
    model.eval()
    losses = [sheet_loss(model, batch).item() for batch in batches]
    model.train()
    return float(sum(losses) / len(losses))


def pretrain_llm(world: Path, out: Path, cfg: LLMPretrainConfig, force: bool = False, log_every: int = 50) -> dict:
    """Train (or reuse a cached run with the same config and world) and return the metrics."""
    key = cache_key(cfg, world)
    if not force and (metrics := cached_metrics(out, key)) is not None:
        return {**metrics, "cached": True}
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    entries = read_corpus(world / CORPUS_FILE)
    if not entries:
        raise ValueError(f"{world / CORPUS_FILE}: no text to pretrain on")
    records = tokenize_corpus(entries, tokenizer, replies_only=cfg.replies_only)
    lessons = tuple(cfg.lookup_lessons) if cfg.lesson_steps else ()
    pools = warmup_pools(lesson_records(records, entries, lessons, tokenizer), lessons, cfg.lookup_batch)
    if max(len(r.input_ids) for r in records) > cfg.batch_tokens:
        raise ValueError(f"a corpus record is longer than batch_tokens={cfg.batch_tokens}")
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(records), generator=gen).tolist()
    n_val = max(1, int(len(records) * cfg.val_fraction))
    val_records, train_records = [records[i] for i in order[:n_val]], [records[i] for i in order[n_val:]]
    train_lengths = [len(r.input_ids) for r in train_records]
    train_batches = length_batches(train_lengths, cfg.batch_tokens, cfg.length_window, gen)
    if len(train_batches) < 2:
        raise ValueError(f"{world / CORPUS_FILE}: {len(train_records)} records is too little to pretrain on")
    val = [collate([val_records[i] for i in group], tokenizer.pad_token_id)
           for group in length_batches([len(r.input_ids) for r in val_records], cfg.batch_tokens)]
    model = build_llm(cfg, tokenizer)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    initial_val = evaluate_loss(model, val)
    start, train_losses, tokens = time.perf_counter(), [], 0
    picker = random.Random(cfg.seed)
    warmup_losses: list[float] = []
    warmup_steps = len(pools) * cfg.lesson_steps
    for step in range(warmup_steps):
        batch = collate(picker.sample(pools[step // cfg.lesson_steps], cfg.lookup_batch), tokenizer.pad_token_id)
        loss = sheet_loss(model, batch)
        warmup_losses.append(loss.item())
        if not math.isfinite(warmup_losses[-1]):
            raise FloatingPointError(f"stage-0 LLM lookup warm-up: non-finite loss at step {step}")
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        log_progress("llm lookup warm-up", step, warmup_steps, warmup_losses, log_every)
    # Created after the warm-up (at lr cfg.lr throughout): the scheduler sets the lr it starts from when made.
    sched = get_cosine_schedule_with_warmup(optim, cfg.warmup_steps, cfg.steps)
    schedule: list[int] = []
    for step in range(cfg.steps):
        if not schedule:  # one pass over the corpus: batches formed afresh, in a random order
            if step:
                train_batches = length_batches(train_lengths, cfg.batch_tokens, cfg.length_window, gen)
            schedule = torch.randperm(len(train_batches), generator=gen).tolist()
        batch = collate([train_records[i] for i in train_batches[schedule.pop()]], tokenizer.pad_token_id)
        tokens += int(batch.attention_mask.sum())
        train_losses.append(optimizer_step(sheet_loss(model, batch), model, optim, sched, "LLM", step))
        log_progress("llm", step, cfg.steps, train_losses, log_every)
    wall = time.perf_counter() - start
    window = max(1, min(10, cfg.steps // 5))
    metrics = {
        "params": sum(p.numel() for p in model.parameters()), "train_records": len(train_records),
        "train_batches": len(train_batches), "tokens_seen": tokens, "initial_val_loss": initial_val,
        "final_val_loss": evaluate_loss(model, val),
        "first_train_loss": sum(train_losses[:window]) / window, "final_train_loss": sum(train_losses[-window:]) / window,
        "lookup_steps": warmup_steps, "lookup_records": len(pools[-1]) if pools else 0,
        "final_lookup_loss": sum(warmup_losses[-window:]) / len(warmup_losses[-window:]) if warmup_losses else None,
        "train_seconds": wall, "tokens_per_second": tokens / wall, "torch_threads": torch.get_num_threads(),
    }
    if cfg.gate_scenes:
        metrics["text_gate"] = text_gate(model, tokenizer, seed=cfg.seed + 1, num_scenes=cfg.gate_scenes)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_cache(out, key, cfg, metrics)
    return {**metrics, "cached": False}
