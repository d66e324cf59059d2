"""Exact token lengths computed once (worker processes, ranks sharing the work) and cached on disk by content key."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from instruct_data.manifest import sha256_file
from instruct_data.parallel import default_workers, ordered_map
from instruct_data.sources import ConcatRecords, RecordSource

FORMAT = 2  # 2: the vision tiles per record beside the lengths
SERIAL_BELOW = 2000  # fewer records than this: one process (starting workers costs more than it saves)
CHUNK = 256  # records per task handed to a worker
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- key
def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides token ids: the fast tokenizer's full serialization (vocab, merges, normalizer,
    added tokens), else the vocab; plus the special tokens and the class."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = getattr(tokenizer, "special_tokens_map", {})
    digest.update(json.dumps(special, sort_keys=True, default=str).encode())
    for name in ("add_bos_token", "add_eos_token", "padding_side", "chat_template"):
        digest.update(repr(getattr(tokenizer, name, None)).encode())
    return digest.hexdigest()


def _code(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    body = b"" if code is None else code.co_code + repr(code.co_consts).encode()
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}:{hashlib.sha256(body).hexdigest()[:16]}"


def template_fingerprint(template: Any) -> str:
    """The template's fields, a function by its name and code (its repr holds an address that differs per process)."""
    fields = getattr(template, "__dataclass_fields__", None)
    if fields is None:
        return repr(template)
    parts = {}
    for name in fields:
        value = getattr(template, name)
        parts[name] = _code(value) if callable(value) else repr(value)
    return json.dumps(parts, sort_keys=True)


def counter_fingerprint(count: Any) -> str | None:
    """K, or the anyres geometry (the per-size function's object); None when the function cannot be named (a bare
    function or lambda: the lengths are then not cached)."""
    if not count.needs_size:
        return f"k={count.k}"
    owner = getattr(count.per_size, "__self__", None)
    if owner is None:
        return None
    return f"{type(owner).__qualname__}:{owner!r}:{getattr(count.per_size, '__name__', '')}"


def _leaves(records: RecordSource) -> tuple[list[RecordSource], bytes]:
    """The record files and the selection of their records (empty for a single file)."""
    if isinstance(records, ConcatRecords):
        return records.sources, records.which.tobytes() + records.local.tobytes()
    return [records], b""


def cache_key(dataset: Any) -> dict[str, Any] | None:
    """Everything an exact length depends on; None when some part cannot be fingerprinted (no caching)."""
    counter = counter_fingerprint(dataset.count)
    sources, selection = _leaves(dataset.records)
    paths = [getattr(src, "path", None) for src in sources]
    if counter is None or any(p is None for p in paths):
        return None
    key: dict[str, Any] = {
        "format": FORMAT,
        "records": len(dataset),
        "files": [sha256_file(p) for p in paths],
        "selection": hashlib.sha256(selection).hexdigest(),
        "tokenizer": tokenizer_fingerprint(dataset.tokenizer),
        "template": template_fingerprint(dataset.template),
        "image_token_id": int(dataset.image_token_id),
        "image_tokens": counter,
        "max_length": dataset.max_length,
    }
    if dataset.count.needs_size:  # sizes come from image headers: where the images are found matters
        key["image_roots"] = [str(Path(r).resolve()) for r in dataset.extra_roots] + sorted(
            {str(Path(r).resolve()) for src in sources for r in getattr(src, "roots", [])})
    return key


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str | Path, key: dict[str, Any]) -> Path:
    return Path(cache_dir) / f"lengths-{key_digest(key)[:20]}.npz"


# ------------------------------------------------------------------------------------------------- file
def read_keyed_table(path: Path, key: dict[str, Any], what: str, table: Callable[[Any], np.ndarray],
                     dtype: type, check: Callable[[np.ndarray], str | None] | None = None) -> np.ndarray | None:
    """A cache file's [records, 2] table (`table` builds it from the open npz), or None when absent; a file that
    does not read back whole, for this `key`, as `dtype`, with its checksum and passing `check` (None: fine, else
    why not) is reported with a warning naming `what` and read as None (the caller rebuilds it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = json.loads(bytes(data["key"]).decode())
            values = table(data)
            digest = str(data["sha256"])
        if stored_key != key:
            raise ValueError("it was written for other inputs")
        if values.dtype != dtype or values.shape != (key["records"], 2):
            raise ValueError(f"it holds {values.dtype} {values.shape}, not {np.dtype(dtype)} ({key['records']}, 2)")
        if hashlib.sha256(values.tobytes()).hexdigest() != digest:
            raise ValueError("its checksum does not match")
        problem = check(values) if check is not None else None
        if problem:
            raise ValueError(problem)
    except Exception as exc:  # a truncated zip, bad JSON, a missing array: all mean the same, rebuild
        log.warning("%s %s is unreadable (%s: %s): recomputing it", what, path, type(exc).__name__, exc)
        return None
    return values


def read_cache(path: Path, key: dict[str, Any]) -> np.ndarray | None:
    """The cached [records, 2] (length, vision tiles), or None when absent or unreadable (`read_keyed_table`)."""
    cap = key["max_length"]

    def in_range(costs: np.ndarray) -> str | None:
        if costs.min(initial=0) < 0 or (cap is not None and costs[:, 0].max(initial=0) > cap):
            return "it holds lengths out of range"
        return None

    return read_keyed_table(path, key, "length cache",
                            lambda data: np.stack([np.asarray(data["lengths"]), np.asarray(data["tiles"])], axis=1),
                            np.int32, in_range)


def write_cache(path: Path, key: dict[str, Any], costs: np.ndarray) -> None:
    """[records, 2] (length, vision tiles), atomically (a reader sees the old file or the new one, whole)."""
    from vlm.atomic import atomic_file

    costs = np.ascontiguousarray(costs, dtype=np.int32)
    with atomic_file(path, binary=True) as fh:
        np.savez(fh, lengths=costs[:, 0], tiles=costs[:, 1], sha256=np.array(hashlib.sha256(costs.tobytes()).hexdigest()),
                 key=np.frombuffer(json.dumps(key, sort_keys=True).encode(), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------- compute
def _costs(dataset: Any, bounds: tuple[int, int]) -> np.ndarray:
    return np.array([dataset.exact_cost(i) for i in range(*bounds)], dtype=np.int32).reshape(-1, 2)


def compute_lengths(dataset: Any, start: int = 0, stop: int | None = None, workers: int | None = None,
                    progress: Callable[[int], None] | None = None, tiles: bool = False) -> np.ndarray:
    """Exact lengths of records [start, stop) (`dataset.exact_cost`), in `workers` processes; `progress(n)` is
    called as records are done. `tiles`: [n, 2] (length, vision tiles) instead."""
    stop = len(dataset) if stop is None else stop
    workers = default_workers() if workers is None else workers
    if stop - start < SERIAL_BELOW:
        workers = 1
    bounds = [(a, min(a + CHUNK, stop)) for a in range(start, stop, CHUNK)]
    out = []
    for b, part in zip(bounds, ordered_map(_costs, bounds, dataset, workers)):
        out.append(part)
        if progress:
            progress(b[1] - b[0])
    costs = np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int32)
    return costs if tiles else costs[:, 0].copy()


def gathered_blocks(strategy: Any, n: int, start: int, compute: Callable[[], np.ndarray], dtype: type,
                    failure: str) -> np.ndarray:
    """All ranks' [n, 2] table, each rank computing its contiguous block from `start` (`compute`): one all-reduce of
    a vector zero outside each rank's block, plus a slot counting the ranks whose `compute` raised, so that no rank
    waits forever: that rank re-raises its error, the others raise `failure`."""
    import torch

    if strategy is None or strategy.world_size == 1:
        return compute()
    error: BaseException | None = None
    try:
        mine: np.ndarray | None = compute()
    except Exception as exc:  # told to the other ranks first, then raised
        error, mine = exc, None
    exact = np.dtype(dtype).kind in "iu"
    full = torch.zeros(2 * n + 1, dtype=torch.int64 if exact else torch.float64, device=strategy.device)
    if mine is None:
        full[2 * n] = 1
    else:
        block = torch.from_numpy(np.asarray(mine, dtype=np.int64 if exact else np.float64).ravel())
        full[2 * start:2 * (start + len(mine))] = block.to(strategy.device)
    strategy.all_reduce_sum(full)
    if error is not None:
        raise error
    if int(full[2 * n].item()):
        raise RuntimeError(failure)
    return full[:2 * n].cpu().numpy().astype(dtype).reshape(n, 2)


def exact_lengths(dataset: Any, cache_dir: str | Path | None, strategy: Any = None,
                  workers: int | None = None) -> np.ndarray:
    """Every record's exact length (as `InstructDataset.tokenize_all` measures it), from the cache in `cache_dir`
    when it was written for these very inputs, else computed (split over the ranks, then over worker processes)
    and written there. Every rank returns all lengths; the dataset holds them (and each record's vision tiles) too."""
    world = strategy.world_size if strategy is not None else 1
    key = cache_key(dataset) if cache_dir is not None else None
    path = cache_path(cache_dir, key) if key is not None else None
    t0 = time.perf_counter()
    costs = read_cache(path, key) if path is not None else None
    if world > 1:  # all ranks agree on hit or miss, or their collectives would not pair up
        import torch

        hit = torch.tensor([int(costs is not None)], dtype=torch.int64, device=strategy.device)
        if int(strategy.all_reduce_sum(hit).item()) != world:
            costs = None
    if costs is None:
        n, rank = len(dataset), (strategy.rank if strategy is not None else 0)
        start, stop = n * rank // world, n * (rank + 1) // world
        costs = gathered_blocks(strategy, n, start, lambda: compute_lengths(dataset, start, stop, workers=workers,
                                                                             tiles=True), np.int32,
                                "another rank failed while measuring the exact lengths (its log has the error)")
        if path is not None:
            try:  # every rank that computed: each rename is whole, the bytes equal
                write_cache(path, key, costs)
            except OSError as exc:  # a read-only shared folder: train on, uncached
                log.warning("could not write the length cache %s (%s): the next run computes the lengths again",
                            path, exc)
        how = f"computed ({world} rank(s) x {workers or default_workers()} worker(s))"
    else:
        how = f"read from {path}"
    if strategy is None or strategy.is_main:
        log.info("exact lengths of %d records %s in %.1fs", len(dataset), how, time.perf_counter() - t0)
    dataset.set_exact_lengths(costs[:, 0], costs[:, 1])
    return costs[:, 0].copy()


def store_audited(dataset: Any, cache_dir: str | Path, audited: list[int] | None, check: int = 64,
                  workers: int | None = None) -> str:
    """Write the lengths a full audit measured (`AuditReport.exact`) into the cache, so the packed run after
    `vlm data audit` starts warm. `check` evenly spread records are measured again as training measures them;
    any difference (or no lengths) and every length is computed instead. Returns what was done."""
    key = cache_key(dataset)
    if key is None:
        return "not cacheable"
    path = cache_path(cache_dir, key)
    if read_cache(path, key) is not None:
        return f"already in {path}"
    lengths = np.asarray(audited if audited is not None else [], dtype=np.int32)
    if dataset.count.tiles_per_size is not None:  # anyres tiles need every image's header: measured with the lengths
        lengths = np.zeros(0, dtype=np.int32)
    if len(lengths) == len(dataset):
        probe = np.unique(np.linspace(0, len(dataset) - 1, num=min(check, len(dataset))).round().astype(int))
        if any(dataset.exact_length(int(i)) != lengths[i] for i in probe):
            lengths = np.zeros(0, dtype=np.int32)
    if len(lengths) == len(dataset):  # one tile an image, of every record that is not skipped
        images = np.array([dataset.records.stats(i)[1] for i in range(len(dataset))], dtype=np.int32)
        costs = np.stack([lengths, np.where(lengths > 0, images, 0)], axis=1)
    else:
        costs = compute_lengths(dataset, workers=workers, tiles=True)
    write_cache(path, key, costs)
    return f"written to {path}"
