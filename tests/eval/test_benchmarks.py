"""The registry by exact name, and the synthetic world's official-format eval files read by the same loaders."""
from pathlib import Path

import pytest

from eval.benchmarks import BENCHMARKS, BenchmarkPaths, get_benchmark, score_items
from eval.items import BenchmarkFileError


@pytest.fixture(scope="module")
def eval_world(tmp_path_factory) -> Path:
    """A world just big enough for the benchmark loaders: 10 train / 8 test scenes, a few POPE / ScienceQA items."""
    from synthetic.generate import SynthConfig, generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(SynthConfig(out=str(root), num_train=10, num_test=8, num_workers=1, pope_images=4,
                               scienceqa_images=4, scienceqa_text=2, text_eval=4, text_chats=4, corpus_scenes=20, vocab_size=300))
    return root


def test_registry_names_are_exact():
    assert set(BENCHMARKS) == {"vqav2", "gqa", "textvqa", "vizwiz", "pope", "mme", "scienceqa_img", "mmbench",
                               "seed", "coco_captions", "chair", "llava_jsonl", "text_qa"}
    with pytest.raises(ValueError, match="known: vqav2"):
        get_benchmark("vqa")  # no prefix / substring matching


def test_gold_answers_score_top_on_the_world(eval_world: Path):
    gold = {
        "vqav2": lambda it: it.meta["answers"][0], "pope": lambda it: it.meta["label"].capitalize() + ".",
        "scienceqa_img": lambda it: "The answer is " + "ABCDE"[it.meta["answer"]] + ".",
        "text_qa": lambda it: it.meta["answer"],
    }
    for name, answer in gold.items():
        bench = get_benchmark(name)
        items = bench.load(BenchmarkPaths(eval_world))
        assert items, name
        assert all(Path(it.image).is_file() for it in items if it.image is not None), name
        scores = score_items(bench, items, {it.key: answer(it) for it in items})
        assert scores[bench.headline] >= (90.0 if name == "vqav2" else 100.0), (name, scores)
    vqa = score_items(get_benchmark("vqav2"), items := get_benchmark("vqav2").load(BenchmarkPaths(eval_world)),
                      {it.key: "no idea" for it in items})
    assert vqa["accuracy"] == 0.0 and set(vqa["per_group"]) <= {"seen", "heldout"}


def test_world_captions_load_with_references(eval_world: Path):
    items = get_benchmark("coco_captions").load(BenchmarkPaths(eval_world))
    assert len(items) == 8 and all(len(it.meta["references"]) >= 1 and Path(it.image).is_file() for it in items)


def test_test_split_without_answers_says_so(vqav2_root: Path):
    (vqav2_root / "v2_mscoco_val2014_annotations.json").unlink()
    bench = get_benchmark("vqav2")
    items = bench.load(BenchmarkPaths(vqav2_root))
    with pytest.raises(BenchmarkFileError, match="submission"):
        score_items(bench, items, {it.key: "x" for it in items})


def test_chair_on_the_world_is_exact(eval_world: Path):
    """True detailed descriptions score CHAIR 0 and recall 100; one invented object per description moves both
    CHAIR numbers by the hand-computed amounts, and saying nothing loses recall."""
    import json

    from synthetic.text import detailed_description
    from synthetic.world import Scene

    bench = get_benchmark("chair")
    items = bench.load(BenchmarkPaths(eval_world))
    scenes = {s["id"]: Scene.from_dict(s) for s in json.loads((eval_world / "scenes" / "test.json").read_text())}
    assert len(items) == 8 and all(Path(it.image).is_file() for it in items)
    assert all(it.meta["objects"] == sorted(o.name for o in scenes[it.question_id].objects) for it in items)
    truth = {it.key: detailed_description(scenes[it.question_id]) for it in items}
    exact = score_items(bench, items, truth)
    n_objects = sum(len(s.objects) for s in scenes.values())
    assert (exact["CHAIR_s"], exact["CHAIR_i"], exact["recall"], exact["mentions"]) == (0.0, 0.0, 100.0, n_objects)
    # every description also names one object absent from its image
    invented = {}
    for it in items:
        absent = next(c for c in it.meta["categories"] if c not in it.meta["objects"])
        invented[it.key] = truth[it.key] + f" A small {absent} is at the bottom right."
    worse = score_items(bench, items, invented)
    assert worse["CHAIR_s"] == 100.0 and worse["recall"] == 100.0
    assert worse["CHAIR_i"] == round(100 * 8 / (n_objects + 8), 2)
    silent = score_items(bench, items, {it.key: "I see a picture." for it in items})
    assert (silent["CHAIR_s"], silent["CHAIR_i"], silent["recall"]) == (0.0, 0.0, 0.0)
