"""Vision encoder backends (HF transformers, timm, open_clip) behind one interface, with their preprocessing."""
from vision_encoders.base import VisionEncoder
from vision_encoders.config import VisionEncoderConfig
from vision_encoders.preprocess import ImageProcessor, to_rgb
from vision_encoders.registry import BACKENDS, load_vision_encoder, parse_spec, resolve_path

__all__ = [
    "BACKENDS",
    "ImageProcessor",
    "VisionEncoder",
    "VisionEncoderConfig",
    "load_vision_encoder",
    "parse_spec",
    "resolve_path",
    "to_rgb",
]
