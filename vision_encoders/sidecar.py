"""The JSON config that timm and open_clip checkpoints keep beside their weights file (their hub layouts)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_sidecar(checkpoint: str | None, file_name: str, architecture: str) -> dict[str, Any]:
    """`file_name` next to `checkpoint`, if it describes `architecture`; {} when absent or for another model."""
    if checkpoint is None:
        return {}
    path = Path(checkpoint).parent / file_name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    return data if data.get("architecture") == architecture else {}
