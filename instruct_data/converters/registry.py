"""The converters by exact name: each adds its CLI arguments and runs from the parsed namespace."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from instruct_data.converters import coco_captions, gqa, rlaif_v, scienceqa, sharegpt, vlfeedback, vqav2
from instruct_data.converters.common import ConversionResult


@dataclass(frozen=True)
class Converter:
    """A registered converter: `vlm data convert <name> ...`."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], ConversionResult]


CONVERTERS: dict[str, Converter] = {
    c.name: c
    for c in (
        Converter("coco-captions", "COCO captions JSON -> alignment pairs with brief-description prompts",
                  coco_captions.add_arguments, coco_captions.run),
        Converter("vqav2", "VQAv2 questions + annotations -> multi-turn short-answer records by image",
                  vqav2.add_arguments, vqav2.run),
        Converter("gqa", "GQA questions JSON -> multi-turn short-answer records by image",
                  gqa.add_arguments, gqa.run),
        Converter("sharegpt", "ShareGPT conversations -> text-only records",
                  sharegpt.add_arguments, sharegpt.run),
        Converter("scienceqa", "ScienceQA problems + pid_splits -> letter-answer multiple-choice records",
                  scienceqa.add_arguments, scienceqa.run),
        Converter("rlaif-v", "RLAIF-V-Dataset parquet -> preference records (images written under --image-root)",
                  rlaif_v.add_arguments, rlaif_v.run_rlaif_v),
        Converter("rlhf-v", "RLHF-V-Dataset parquet -> preference records (images written under --image-root)",
                  rlaif_v.add_arguments, rlaif_v.run_rlhf_v),
        Converter("vlfeedback", "VLFeedback rows -> preference records (highest- vs lowest-rated completion)",
                  vlfeedback.add_arguments, vlfeedback.run),
    )
}


def get_converter(name: str) -> Converter:
    """The converter registered under exactly `name`."""
    try:
        return CONVERTERS[name]
    except KeyError:
        raise ValueError(f"unknown converter {name!r}; known: {', '.join(CONVERTERS)}") from None
