"""Converters from public datasets' official formats to LLaVA-format JSON (`vlm data convert <name>`)."""
from __future__ import annotations

from instruct_data.converters.coco_captions import BRIEF_PROMPTS, convert_coco_captions
from instruct_data.converters.common import ConversionError, ConversionResult, write_records
from instruct_data.converters.gqa import convert_gqa
from instruct_data.converters.registry import CONVERTERS, Converter, get_converter
from instruct_data.converters.rlaif_v import convert_rlaif_v, convert_rlhf_v
from instruct_data.converters.scienceqa import convert_scienceqa
from instruct_data.converters.sharegpt import convert_sharegpt
from instruct_data.converters.vlfeedback import convert_vlfeedback
from instruct_data.converters.vqav2 import convert_vqav2

__all__ = [
    "BRIEF_PROMPTS",
    "CONVERTERS",
    "ConversionError",
    "ConversionResult",
    "Converter",
    "convert_coco_captions",
    "convert_gqa",
    "convert_rlaif_v",
    "convert_rlhf_v",
    "convert_scienceqa",
    "convert_sharegpt",
    "convert_vlfeedback",
    "convert_vqav2",
    "get_converter",
    "write_records",
]
