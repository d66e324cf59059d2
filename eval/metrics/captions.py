"""COCO caption metrics through pycocoevalcap: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D."""
from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence

SPICE_NOTE = "SPICE not computed: it needs Stanford CoreNLP models downloaded at first use, impossible offline"


class JavaMissingError(RuntimeError):
    """Raised when `java` is not on PATH (the PTB tokenizer and METEOR are Java programs)."""


def require_java() -> str:
    """Path of `java`, or a clear error naming what is missing and what needs it."""
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError(
            "caption metrics need a Java runtime: `java` is not on PATH (pycocoevalcap's PTB tokenizer "
            "(stanford-corenlp-3.4.1.jar) and METEOR (meteor-1.5.jar) run in Java; install e.g. openjdk-17-jre)"
        )
    return java


def score_captions(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], *, meteor: bool = True
) -> dict[str, object]:
    """Corpus scores (x100, 2 decimals as usually reported) over the images of `references`.

    Every image needs exactly one predicted caption. CIDEr-D's document frequencies come from the
    references of the evaluated set, so a one-image corpus scores 0 (log(1) idf).
    """
    require_java()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = [k for k in references if k not in predictions]
    if missing or not references:
        raise ValueError(f"{len(missing)} image(s) have no caption, e.g. {missing[:5]}" if missing
                         else "no images to score")
    empty = [k for k, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"{len(empty)} image(s) have no reference caption, e.g. {empty[:5]}")
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tok.tokenize({k: [{"caption": predictions[k]}] for k in references})
    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, b in enumerate(bleu, start=1):
        scores[f"BLEU-{n}"] = b
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
        try:
            scores["METEOR"], _ = m.compute_score(gts, res)
        finally:
            _close_meteor(m)
    scores["ROUGE-L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    out: dict[str, object] = {k: round(100 * float(v), 2) for k, v in scores.items()}
    out["n"] = len(references)
    out["notes"] = [SPICE_NOTE] + ([] if meteor else ["METEOR skipped on request"])
    return out


def _close_meteor(m: object) -> None:
    # Older pycocoevalcap releases have no close(); end the Java child ourselves so none is left behind.
    proc = getattr(m, "meteor_p", None)
    if proc is None:
        return
    with m.lock:  # type: ignore[attr-defined]
        proc.stdin.close()
        proc.kill()
        proc.wait()
