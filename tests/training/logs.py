"""Reading the training logs that ``tumsyn-train`` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``.jsonl`` metrics file (``train_log.jsonl``, ``val_log.jsonl``)."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
