"""Generate the whole synthetic world on disk: images, ground truth, LLaVA data, eval files, corpus, tokenizer."""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synthetic import evalfiles
from synthetic.corpus import CORPUS_FILE, corpus_records, record_texts
from synthetic.corrective import corrective_records
from synthetic.draw import png_bytes, render_scene
from synthetic.llava_records import align_record, caption_record, detail_record, mcq_record, text_record, vqa_record
from synthetic.tokenizer import save_tokenizer, train_tokenizer
from synthetic.world import COLOUR_NAMES, HELD_OUT, SEEN_PAIRS, SHAPES, Scene, sample_scene, scene_rng


@dataclass
class SynthConfig:
    """Everything that determines the world's bytes (plus `num_workers`, which never changes them)."""

    out: str
    seed: int = 0
    num_train: int = 10000
    num_test: int = 500
    image_size: int = 72  # a multiple of 3: the stage-0 ViT's patches are the 24-pixel grid cells
    # Wide images (width x image_size, objects at the square world's pixel size); None = square.
    image_width: int | None = None
    num_workers: int = 2
    held_out_share: float = 0.5  # share of test scenes forced to contain a held-out colour-shape pair
    detail_share: float = 0.25
    mcq_share: float = 0.25
    caption_share: float = 0.25  # one-sentence caption chats (LLaVA-1.5's TextCaps share, with its prompt)
    text_share: float = 0.15  # text-only conversations, as a share of training images
    vqa_per_image: int = 5
    pope_images: int = 150
    scienceqa_images: int = 200
    scienceqa_text: int = 20
    text_eval: int = 200
    text_chats: int = 4000  # text-only chats (numbers, facts) in the LLM's corpus
    corpus_scenes: int = 20000  # scenes written as text for the LLM's pretraining (never drawn as images)
    vocab_size: int = 2048
    prefer_scenes: int | None = None  # training scenes with corrective preference pairs (None: all of them)
    prefer_existence_share: float = 0.5  # share of those scenes that also get a yes/no existence pair
    chair_images: int = 100  # test images in the CHAIR file (COCO instances format)

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError(f"num_train and num_test must be >= 1 (got {self.num_train}, {self.num_test})")
        if self.image_size < 24:
            raise ValueError(f"image_size {self.image_size} is too small to draw a 3x3 grid of shapes (min 24)")
        if self.image_width is not None and (self.image_width < self.image_size or self.image_width % 3):
            raise ValueError(f"image_width {self.image_width} must be a multiple of 3 (three grid columns of whole "
                             f"pixels) and >= image_size {self.image_size} (objects are sized by the height, so a "
                             f"narrower cell would clip them)")
        if not 0.0 <= self.held_out_share <= 1.0:
            raise ValueError(f"held_out_share must be in [0, 1], got {self.held_out_share}")
        if not 0.0 <= self.prefer_existence_share <= 1.0:
            raise ValueError(f"prefer_existence_share must be in [0, 1], got {self.prefer_existence_share}")
        if self.prefer_scenes is not None and self.prefer_scenes < 0:
            raise ValueError(f"prefer_scenes must be >= 0 (or unset for every training scene), got {self.prefer_scenes}")

    def content_dict(self) -> dict:
        d = asdict(self)
        d.pop("out")
        d.pop("num_workers")
        if d["image_width"] is None:  # square worlds keep the manifest they always had
            d.pop("image_width")
        return d

    @property
    def width(self) -> int:
        return self.image_size if self.image_width is None else self.image_width


@dataclass
class SynthReport:
    """What was written and how long each part took (seconds)."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _render_one(job: tuple[int, str, int, int, int | None, float, str]) -> None:
    seed, split, index, size, width, share, folder = job
    scene = sample_scene(seed, split, index, share)
    (Path(folder) / scene.file_name).write_bytes(png_bytes(render_scene(scene, size, seed, width)))


def _render_all(cfg: SynthConfig, root: Path) -> None:
    jobs = []
    for split, n in (("train", cfg.num_train), ("test", cfg.num_test)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(cfg.seed, split, i, cfg.image_size, cfg.image_width, cfg.held_out_share,
                  str(folder)) for i in range(n)]
    if cfg.num_workers <= 1:
        for job in jobs:
            _render_one(job)
        return
    with mp.get_context("fork").Pool(cfg.num_workers) as pool:
        for _ in pool.imap_unordered(_render_one, jobs, chunksize=256):
            pass


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def training_records(cfg: SynthConfig, train: list[Scene]) -> tuple[list[dict], list[dict]]:
    """(align, instruct) record lists; negatives in training questions never name a held-out pair."""
    absent = list(SEEN_PAIRS)
    align, instruct = [], []
    for scene in train:
        align.append(align_record(scene, scene_rng(cfg.seed, "train", scene.id, "align")))
        rng = scene_rng(cfg.seed, "train", scene.id, "instruct")
        instruct.append(vqa_record(scene, rng, absent))
        if rng.random() < cfg.detail_share:
            instruct.append(detail_record(scene, rng))
        if rng.random() < cfg.mcq_share:
            record = mcq_record(scene, rng, absent)
            if record is not None:
                instruct.append(record)
        if rng.random() < cfg.caption_share:
            instruct.append(caption_record(scene, rng))
    for i in range(int(round(cfg.text_share * len(train)))):
        instruct.append(text_record(i, scene_rng(cfg.seed, "text", i, "chat")))
    return align, instruct


def generate_world(cfg: SynthConfig) -> SynthReport:
    """Write the world to `cfg.out` (layout in docs/architecture.md); byte-identical output for a given config."""
    root = Path(cfg.out)
    if root.exists() and any(root.iterdir()) and not (root / "world.json").is_file():
        raise FileExistsError(f"{root} exists, is not empty and holds no world.json: refusing to write a world into it")
    for stale in ("images", "eval", "tokenizer"):
        shutil.rmtree(root / stale, ignore_errors=True)
    report = SynthReport(out=root)
    t0 = time.perf_counter()
    _render_all(cfg, root)
    report.timings["images"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train = [sample_scene(cfg.seed, "train", i, cfg.held_out_share) for i in range(cfg.num_train)]
    test = [sample_scene(cfg.seed, "test", i, cfg.held_out_share) for i in range(cfg.num_test)]
    _dump(root / "scenes" / "train.json", [s.to_dict() for s in train])
    _dump(root / "scenes" / "test.json", [s.to_dict() for s in test])
    align, instruct = training_records(cfg, train)
    _dump(root / "align.json", align)
    _dump(root / "instruct.json", instruct)
    prefer_from = train if cfg.prefer_scenes is None else train[: cfg.prefer_scenes]
    prefer = corrective_records(prefer_from, cfg.seed, cfg.prefer_existence_share)
    _dump(root / "prefer_train.json", prefer)
    report.timings["records"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ev = root / "eval"
    questions, annotations, splits = evalfiles.vqav2_files(test, cfg.seed, cfg.vqa_per_image)
    _dump(ev / "vqav2" / "questions.json", questions)
    _dump(ev / "vqav2" / "annotations.json", annotations)
    _dump(ev / "vqav2" / "splits.json", splits)
    pope = evalfiles.pope_files(test, cfg.seed, cfg.pope_images)
    for name, rows in pope.items():
        _dump_jsonl(ev / "pope" / f"coco_pope_{name}.json", rows)
    _dump(ev / "coco" / "captions_test.json", evalfiles.coco_captions(test, cfg.seed, cfg.image_size, cfg.width))
    problems, pid_splits, with_images = evalfiles.scienceqa_files(test, cfg.seed, cfg.scienceqa_images, cfg.scienceqa_text)
    _dump(ev / "scienceqa" / "problems.json", problems)
    _dump(ev / "scienceqa" / "pid_splits.json", pid_splits)
    for pid, scene in with_images:
        target = evalfiles.scienceqa_image_path(root, pid)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "images" / scene.image, target)
    _dump(ev / "chair" / "instances_test.json",
          evalfiles.chair_instances(test[: cfg.chair_images], cfg.image_size, cfg.width))
    text_rows = evalfiles.text_questions(cfg.seed, cfg.text_eval)
    _dump_jsonl(ev / "text" / "questions.jsonl", text_rows)
    report.timings["eval"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    corpus = list(corpus_records(cfg.seed, cfg.corpus_scenes, cfg.text_chats))
    _dump_jsonl(root / CORPUS_FILE, corpus)
    report.timings["corpus"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tokenizer_texts = [text for entry in corpus for text in record_texts(entry)]
    tokenizer_texts += [turn["value"] for r in align + instruct for turn in r["conversations"]]
    save_tokenizer(train_tokenizer(tokenizer_texts, cfg.vocab_size), root / "tokenizer")
    report.timings["tokenizer"] = time.perf_counter() - t0

    report.counts = {"train_images": len(train), "test_images": len(test), "align": len(align),
                     "instruct": len(instruct), "prefer": len(prefer),
                     "chair_images": min(cfg.chair_images, len(test)), "vqav2_questions": len(questions["questions"]),
                     "vqav2_heldout": sum(v == "heldout" for v in splits.values()),
                     "pope_random": len(pope["random"]), "coco_images": len(test), "scienceqa": len(problems),
                     "text_eval": len(text_rows), "corpus_records": len(corpus)}
    manifest = {"format": "vlm-synthetic-world/1", "config": cfg.content_dict(), "shapes": list(SHAPES),
                "colours": list(COLOUR_NAMES), "held_out_pairs": [list(p) for p in sorted(HELD_OUT)],
                "counts": report.counts}
    _dump(root / "world.json", manifest)
    return report
