"""Phase-1 vision-feature cache: frozen-encoder outputs computed once per image, memory-mapped from disk.

Layout: `<root>/<fingerprint>/shards/<id>.npy` ([n, T, D] rows) + `<id>.json` (the n keys; the commit marker).
The fingerprint covers the encoder (class, config, a hash of every weight) and the preprocessing, so a
change of either lands in a new directory; an image's identity covers its path, size and mtime (or its
bytes), so an edited image is a miss. Each writer writes its own uniquely named shard and commits it by
renaming the index last, so several processes can fill the cache at once and readers never see a
partial entry. (Hand-written: no library offers a multi-process, append-only, memory-mapped tensor store.)
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlm.atomic import atomic_file

IdentityMode = Literal["stat", "content", "raw"]
_FORMAT_VERSION = 1
_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}


class FeatureCacheError(RuntimeError):
    """A cache file that cannot be used, naming the file and why."""


def _hash_state_dict(module: nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encoder_fingerprint(encoder: nn.Module, image_processor: Any) -> str:
    """A hex digest of what decides an image's features: encoder class + config (spec, layer, tokens),
    every weight, and the preprocessing (`image_processor.to_dict()`)."""
    config = getattr(encoder, "config", None)
    config_dict = config.to_dict() if hasattr(config, "to_dict") else repr(config)
    described = {
        "format": _FORMAT_VERSION,
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "config": config_dict,
        "weights": _hash_state_dict(encoder),
        "preprocessing": image_processor.to_dict() if hasattr(image_processor, "to_dict") else repr(image_processor),
    }
    blob = json.dumps(described, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def image_identity(path: str | os.PathLike[str], mode: IdentityMode = "stat") -> str:
    """Identity of an image file: path + size + mtime (`stat`), or its bytes (`content`), or the key itself (`raw`)."""
    if mode == "raw":
        return hashlib.sha256(str(path).encode()).hexdigest()[:32]
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"feature cache: image {str(path)!r} does not exist") from exc
    if mode == "stat":
        blob = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        return hashlib.sha256(blob).hexdigest()[:32]
    if mode == "content":
        digest = hashlib.sha256()
        with open(resolved, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()[:32]
    raise ValueError(f"unknown identity mode {mode!r}; known: ['content', 'raw', 'stat']")


class FeatureCache:
    """Maps image keys to cached [T, D] feature rows for one encoder fingerprint.

    `get(keys)` returns a float32 [N, T, D] tensor only when every key is cached (else None): a batch is
    either read from the cache or encoded whole. `put` buffers rows and writes a shard every
    `shard_size` rows (and on `flush()`), so other processes see them after the flush.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        fingerprint: str,
        *,
        identity: IdentityMode = "stat",
        dtype: str = "float32",
        shard_size: int = 1024,
    ) -> None:
        if not fingerprint or any(c not in "0123456789abcdefABCDEF-_" for c in fingerprint):
            raise ValueError(f"fingerprint must be a non-empty hex string, got {fingerprint!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"unknown cache dtype {dtype!r}; known: {sorted(_DTYPES)}")
        if identity not in ("stat", "content", "raw"):
            raise ValueError(f"unknown identity mode {identity!r}; known: ['content', 'raw', 'stat']")
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.identity_mode: IdentityMode = identity
        self.dtype = _DTYPES[dtype]
        self.shard_size = shard_size
        self.directory = self.root / fingerprint
        self.shard_dir = self.directory / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[str, int]] = {}  # identity -> (shard id, row)
        self._loaded_shards: set[str] = set()
        self._arrays: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}
        self._row_shape: tuple[int, ...] | None = None
        self._exit_flush_registered = False
        self._dir_stamp = -1
        self.refresh()

    # ---- reading -------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Pick up shards committed (by any process) since the last look; returns how many were new."""
        new = 0
        self._dir_stamp = self.shard_dir.stat().st_mtime_ns
        for index_path in sorted(self.shard_dir.glob("*.json")):
            shard_id = index_path.stem
            if shard_id in self._loaded_shards:
                continue
            try:
                meta = json.loads(index_path.read_text())
                keys = meta["keys"]
                shape = tuple(meta["shape"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise FeatureCacheError(f"feature cache index {index_path} is unreadable: {exc}") from exc
            if len(keys) != shape[0]:
                raise FeatureCacheError(f"feature cache index {index_path}: {len(keys)} keys for {shape[0]} rows")
            self._check_row_shape(shape[1:], str(index_path))
            for row, key in enumerate(keys):
                self._index.setdefault(key, (shard_id, row))  # the first committed shard wins
            self._loaded_shards.add(shard_id)
            new += 1
        return new

    def _maybe_refresh(self) -> None:
        # Re-listing the shard directory on every miss would be quadratic over a first epoch (all misses);
        # its mtime changes whenever a shard is committed (rename into it), so one stat tells.
        try:
            stamp = self.shard_dir.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp != self._dir_stamp:
            self.refresh()

    def _check_row_shape(self, row_shape: tuple[int, ...], where: str) -> None:
        if self._row_shape is None:
            self._row_shape = tuple(row_shape)
        elif tuple(row_shape) != self._row_shape:
            raise FeatureCacheError(
                f"{where}: feature rows of shape {tuple(row_shape)} but this cache holds {self._row_shape}"
            )

    def _array(self, shard_id: str) -> np.ndarray:
        array = self._arrays.get(shard_id)
        if array is None:
            path = self.shard_dir / f"{shard_id}.npy"
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise FeatureCacheError(f"feature cache shard {path} is unreadable: {exc}") from exc
            self._arrays[shard_id] = array
        return array

    def identities(self, keys: Sequence[str]) -> list[str]:
        return [image_identity(key, self.identity_mode) for key in keys]

    def _row(self, ident: str) -> np.ndarray | None:
        pending = self._pending.get(ident)
        if pending is not None:
            return pending
        located = self._index.get(ident)
        if located is None:
            return None
        shard_id, row = located
        return self._array(shard_id)[row]

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys not (yet) cached, in order, without duplicates (the ZeRO-3 pre-fill's work list)."""
        self.refresh()
        out: list[str] = []
        seen: set[str] = set()
        for key, ident in zip(keys, self.identities(keys)):
            if ident not in self._index and ident not in self._pending and ident not in seen:
                out.append(key)
                seen.add(ident)
        return out

    def get(self, keys: Sequence[str]) -> torch.Tensor | None:
        """Float32 [N, T, D] features of `keys` in order when all are cached; None if any is missing."""
        if not keys:
            return None
        idents = self.identities(keys)
        if any(i not in self._index and i not in self._pending for i in idents):
            self.refresh()
        rows = [self._row(i) for i in idents]
        if any(r is None for r in rows):
            return None
        return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))

    def get_or_compute(self, keys: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Float32 [N, T, D] features of `keys`: cached rows read, only the missing images passed to `encode`
        (once each) and stored. Rows reach disk every `shard_size` puts and at exit (or `flush()`)."""
        idents = self.identities(keys)
        if any(i not in self._index and i not in self._pending for i in idents):
            self._maybe_refresh()
        todo: dict[str, str] = {}
        for key, ident in zip(keys, idents):
            if ident not in self._index and ident not in self._pending:
                todo.setdefault(ident, key)
        if todo:
            computed = encode(list(todo.values()))
            self.put(list(todo.values()), computed)
            if not self._exit_flush_registered:
                atexit.register(self._flush_at_exit)
                self._exit_flush_registered = True
        rows = [self._row(i) for i in idents]
        if any(r is None for r in rows):  # only if an image changed between identities() and put()
            raise FeatureCacheError(f"feature cache: images changed while being cached: {list(keys)}")
        return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))

    def __len__(self) -> int:
        self.refresh()
        return len(set(self._index) | set(self._pending))

    # ---- writing -------------------------------------------------------------------------------
    def put(self, keys: Sequence[str], features: torch.Tensor) -> None:
        """Store `features[i]` ([N, T, D]) under `keys[i]`; written to disk every `shard_size` rows or on flush()."""
        if features.dim() != 3 or features.shape[0] != len(keys):
            raise ValueError(f"put: expected features [N={len(keys)}, T, D], got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("put: non-finite vision features; refusing to cache them")
        self._check_row_shape(tuple(features.shape[1:]), "put")
        array = features.detach().to("cpu", torch.float32).numpy().astype(self.dtype)
        for key, ident, row in zip(keys, self.identities(keys), array):
            if ident not in self._index:
                self._pending[ident] = row
                if len(self._pending) >= self.shard_size:
                    self.flush()

    def flush(self) -> str | None:
        """Write the buffered rows as one new shard (data first, then the index that commits it)."""
        if not self._pending:
            return None
        shard_id = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        keys = list(self._pending)
        data = np.ascontiguousarray(np.stack([self._pending[k] for k in keys]))
        npy_path = self.shard_dir / f"{shard_id}.npy"
        with atomic_file(npy_path, binary=True) as handle:
            np.save(handle, data, allow_pickle=False)
        index = {"keys": keys, "shape": list(data.shape), "dtype": str(data.dtype), "format": _FORMAT_VERSION}
        with atomic_file(self.shard_dir / f"{shard_id}.json") as handle:
            handle.write(json.dumps(index))
        self._pending.clear()
        self.refresh()
        return shard_id

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except FileNotFoundError:
            pass  # the cache directory was removed before exit: nothing left to write into

    def close(self) -> None:
        self.flush()
        self._arrays.clear()
