"""`data.quarantine`: the ids of records left out of training, from the config and/or a file."""
from __future__ import annotations

import json
from pathlib import Path

from train.config import DataConfig
from train.errors import ConfigError


def quarantined_ids(data: DataConfig) -> frozenset[str]:
    """`data.quarantine` plus the ids in `data.quarantine_file` (one a line, `#` comments; or a JSON list)."""
    ids = set(data.quarantine)
    if data.quarantine_file:
        path = Path(data.quarantine_file)
        text = path.read_text()
        if text.lstrip().startswith("["):
            try:
                listed = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"data.quarantine_file={path}: not a JSON list of ids ({err})") from None
            if not isinstance(listed, list):
                raise ConfigError(f"data.quarantine_file={path}: expected a JSON list of ids")
            ids.update(str(x) for x in listed)
        else:
            ids.update(line.split("#", 1)[0].strip() for line in text.splitlines())
    ids.discard("")
    return frozenset(ids)
