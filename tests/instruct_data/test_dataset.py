"""Tests for instruct_data.dataset: lazy items, images, skip-and-count, strict mode, workers, lengths."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from instruct_data.collate import Collator, Skipped
from instruct_data.dataset import InstructDataset, SkipLog
from instruct_data.item import Item
from conversation.errors import RecordError
from instruct_data.sources import load_records
from conversation.tokenize import IGNORE_INDEX
from vision_encoders.preprocess import ImageProcessor

K = 3
SIDE = 8


# PIL -> [3, S, S], values in [0, 1]
processor = ImageProcessor(size=SIDE, mean=(0.0,) * 3, std=(1.0,) * 3, aspect_ratio="resize")


@pytest.fixture()
def data(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "imgs" / "red.png")
    Image.new("RGB", (10, 10), (0, 0, 255)).save(tmp_path / "other" / "blue.png")
    Image.new("L", (10, 30), 128).save(tmp_path / "imgs" / "sub" / "gray.jpg")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    recs = [
        {"id": "ok-red", "image": "red.png", "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Say yes"}, {"from": "gpt", "value": "yes"}]},
        {"id": "ok-two", "image": ["sub/gray.jpg", "blue.png"], "conversations": [{"from": "human", "value": "<image> vs <image>"}, {"from": "gpt", "value": "gray then blue"}]},
        {"id": "missing", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "escape", "image": "../secret.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "broken", "image": "broken.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "roles", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
    ]
    (tmp_path / "secret.png").write_bytes((tmp_path / "imgs" / "red.png").read_bytes())
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n{broken json\n")
    return load_records(path, image_roots=[tmp_path / "imgs", tmp_path / "other"])


def make(data, tok, **kw):
    return InstructDataset(data, "vicuna_v1", tok, image_token_id=tok.convert_tokens_to_ids("<image>"),
                           num_image_tokens=K, image_processor=processor, **kw)


def test_items_and_skips(data, bpe_tokenizer):
    ds = make(data, bpe_tokenizer)
    assert len(ds) == 8
    red = ds[0]
    assert red.id == "ok-red" and red.pixel_values.shape == (1, 3, SIDE, SIDE)
    assert red.pixel_values[0, 0].mean().item() == pytest.approx(1.0)
    assert red.image_keys[0].endswith("imgs/red.png")
    assert (red.input_ids == ds.image_token_id).sum().item() == K
    assert (red.labels != IGNORE_INDEX).any()
    assert ds[1].pixel_values is None
    two = ds[2]
    assert two.pixel_values.shape == (2, 3, SIDE, SIDE) and two.image_keys[1].endswith("other/blue.png")
    skips = [ds[i] for i in range(3, 8)]
    assert all(isinstance(s, Skipped) for s in skips)
    bad = {s.id: s.reason for s in skips}
    assert bad["missing"].startswith("image:") and "missing file" in bad["missing"]
    assert "outside image root" in bad["escape"]
    assert "image:" in bad["broken"]
    assert bad["roles"].startswith("record: turn 0: role 'assistant'")
    assert "malformed JSON" in bad["#7"]
    assert len(ds.skip_log) == 5 and ds.skip_log.by_reason() == {"image": 3, "record": 2}


def test_paths_only_mode_resolves_but_does_not_decode(data, bpe_tokenizer):
    ds = make(data, bpe_tokenizer, load_pixels=False)
    two = ds[2]
    assert two.pixel_values is None and [k.rsplit("/", 2)[-2:] for k in two.image_keys] == [["sub", "gray.jpg"], ["other", "blue.png"]]
    assert isinstance(ds[3], Skipped)  # a missing file is still found out
    assert isinstance(ds[5], Item)  # but a broken one is not decoded here


def test_strict_raises(data, bpe_tokenizer):
    ds = make(data, bpe_tokenizer, strict=True)
    with pytest.raises(RecordError, match="roles|role"):
        ds[6]
    with pytest.raises(OSError, match="nope.png"):
        ds[3]


def test_images_that_do_not_fit_are_skipped_with_reason(data, bpe_tokenizer):
    ds = make(data, bpe_tokenizer, max_length=6)
    assert ds[2] == Skipped("ok-two", "max_length: images do not fit in max_length")


def test_dataloader_workers_carry_skips_in_the_batch(data, bpe_tokenizer):
    ds = make(data, bpe_tokenizer)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Collator(bpe_tokenizer.pad_token_id))
    log = SkipLog()
    ids = []
    for batch in loader:
        log.add_batch(batch)
        ids += batch.ids
    assert ids == ["ok-red", "text", "ok-two"]
    assert sorted(r for r, _ in log.entries) == sorted(["missing", "escape", "broken", "roles", "#7"])
    assert "skipped 5 records" in log.summary()


def test_lengths_estimated_then_exact(data, bpe_tokenizer):
    ds = make(data, bpe_tokenizer)
    est = ds.lengths()
    assert est[0] >= K and len(est) == len(ds)
    mod = ds.modality_lengths()
    assert mod[0] > 0 and mod[1] < 0 and mod[2] > 0
    n = len(ds[0].input_ids)
    assert ds.lengths()[0] == n and ds.modality_lengths()[0] == n


def test_calibrated_estimates_track_exact_lengths(tmp_path, unigram_tokenizer):
    words = "the red square is on the left of a blue circle".split()
    recs = [{"id": f"t{i}", "conversations": [{"from": "human", "value": " ".join(words[: 1 + i % 10])},
                                              {"from": "gpt", "value": " ".join(words * (1 + i % 7))}]} for i in range(40)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    ds = make(load_records(tmp_path / "t.jsonl"), unigram_tokenizer)
    a, _ = ds.calibrate(n=10)
    assert a > 0.5
    est = ds.lengths()
    exact = [len(ds[i].input_ids) for i in range(len(ds))]
    assert np.mean([abs(e - x) / x for e, x in zip(est, exact)]) < 0.1
    assert ds.lengths() == exact  # exact once tokenized


def test_end_to_end_mixture_sampler_loader(tmp_path, bpe_tokenizer):
    from instruct_data.mixture import load_mixture
    from instruct_data.samplers import ModalityLengthGroupedSampler

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (12, 12), (0, 255, 0)).save(tmp_path / "imgs" / "g.png")
    img = [{"id": f"i{k}", "image": "g.png", "conversations": [{"from": "human", "value": "<image>\nColor?"},
                                                               {"from": "gpt", "value": "green " * (1 + k)}]} for k in range(6)]
    txt = [{"id": f"t{k}", "conversations": [{"from": "human", "value": "Say"}, {"from": "gpt", "value": "yes " * (1 + k)}]}
           for k in range(6)]
    (tmp_path / "img.json").write_text(json.dumps(img))
    (tmp_path / "txt.jsonl").write_text("\n".join(json.dumps(r) for r in txt))
    (tmp_path / "mix.yaml").write_text("datasets:\n  - json_path: img.json\n    image_folder: imgs\n"
                                       "  - json_path: txt.jsonl\n    sampling_strategy: first:4\n")
    ds = make(load_mixture(tmp_path / "mix.yaml", seed=0), bpe_tokenizer)
    sampler = ModalityLengthGroupedSampler(ds.modality_lengths(), 2, seed=0)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=Collator(bpe_tokenizer.pad_token_id))
    batches = list(loader)
    assert sorted(i for b in batches for i in b.ids) == sorted([f"i{k}" for k in range(6)] + [f"t{k}" for k in range(4)])
    for b in batches:  # 6 image + 4 text records in batches of 2: no batch mixes modalities
        assert b.image_counts.tolist() in ([1, 1], [0, 0])
        assert (b.pixel_values is None) == (b.image_counts.sum().item() == 0)


def test_skip_log_prints_the_first_few_of_each_kind_then_counts(caplog):
    import logging

    log = SkipLog()
    with caplog.at_level(logging.WARNING, logger="instruct_data.dataset"):
        for i in range(50):
            log.add(f"r{i}", "max_length: images do not fit in max_length")
        log.add("img", "image: missing file")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == [f"skipping record 'r{i}': max_length: images do not fit in max_length" for i in range(3)]
    assert "further 'max_length' skips are counted" in lines[3]
    assert lines[4:] == ["skipping record 'img': image: missing file"]
    assert len(log) == 51 and log.by_reason() == {"max_length": 50, "image": 1}
