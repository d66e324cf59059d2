"""lmms-eval adapter: its `generate_until` requests answered by our batched generator (where lmms-eval installs)."""
from pathlib import Path

import pytest
from PIL import Image

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is optional; this test runs where it is installed")


@pytest.mark.slow
def test_adapter_answers_like_our_generator(tmp_path: Path):
    from lmms_eval.api.instance import Instance

    from eval.generation import load_generator
    from eval.lmms_eval_adapter import MODEL_ID, VLMTrainerLMM, register
    from eval.items import EvalItem
    from vlm.testing import make_tiny_vlm

    make_tiny_vlm(tmp_path / "build").save(tmp_path / "ckpt")
    lmm = VLMTrainerLMM(pretrained=str(tmp_path / "ckpt"), device="cpu", batch_size=2, max_new_tokens=5)
    docs = {i: {"image": Image.new("RGB", (10, 9), (50 * i, 20, 0)), "q": f"What colour? {i}"} for i in range(3)}
    lmm.task_dict = {"toy": {"test": docs}}
    requests = [Instance("generate_until", (f"<image>\n{d['q']}", {"max_new_tokens": 5, "until": ["\n\n"]},
                                            lambda doc: [doc["image"]], i, "toy", "test"), idx=0,
                         metadata={"task": "toy", "doc_id": i, "repeats": 1}) for i, d in docs.items()]
    got = lmm.generate_until(requests)
    direct = load_generator(str(tmp_path / "ckpt"), 5, device="cpu")
    want = direct([EvalItem(i, d["image"], d["q"]) for i, d in docs.items()])
    assert got == [w.split("\n\n")[0].strip() for w in want]
    with pytest.raises(NotImplementedError):
        lmm.loglikelihood(requests)
    register()
    from lmms_eval.models import get_model

    assert get_model(MODEL_ID) is VLMTrainerLMM
