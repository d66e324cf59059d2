"""`vlm synth` through the real console dispatcher."""
import json
from pathlib import Path

from app.cli import main


def test_vlm_synth_writes_the_documented_layout(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    rc = main(["synth", "--out", str(out), "--seed", "3", "--num-train", "12", "--num-test", "6", "--num-workers", "1",
               "--image-size", "48", "--pope-images", "4", "--scienceqa-images", "3", "--scienceqa-text", "1",
               "--text-eval", "5", "--text-chats", "6", "--corpus-scenes", "30", "--vocab-size", "400"])
    assert rc == 0
    for rel in ("images/train/000011.png", "images/test/000005.png", "scenes/train.json", "scenes/test.json",
                "align.json", "instruct.json", "text_corpus.jsonl", "eval/vqav2/questions.json",
                "eval/vqav2/annotations.json", "eval/vqav2/splits.json", "eval/pope/coco_pope_random.json",
                "eval/pope/coco_pope_popular.json", "eval/pope/coco_pope_adversarial.json",
                "eval/coco/captions_test.json", "eval/scienceqa/problems.json", "eval/scienceqa/pid_splits.json",
                "eval/text/questions.jsonl", "tokenizer/tokenizer.json", "world.json"):
        assert (out / rel).is_file(), rel
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["config"]["image_size"] == 48 and manifest["counts"]["train_images"] == 12
    assert "synthetic world written to" in capsys.readouterr().out
