"""Training logs that outlive the terminal: one CSV row and one JSON line per logged step.

CSV is what people open in a spreadsheet; JSON lines keep types and any extra fields. Only rank 0
writes. Files are appended to (``--resume`` continues the same log) and flushed every row, so a
killed job keeps everything it logged.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, out_dir: str | Path, name: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.csv_path = Path(out_dir) / f"{name}.csv"
        self.jsonl_path = Path(out_dir) / f"{name}.jsonl"
        self._columns: list[str] | None = None
        if enabled and self.csv_path.is_file():
            with open(self.csv_path, newline="") as fh:
                header = next(csv.reader(fh), None)
            self._columns = header or None

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in row.items()}
        if self._columns is None:
            self._columns = list(clean)
            with open(self.csv_path, "w", newline="") as fh:
                csv.writer(fh).writerow(self._columns)
        with open(self.csv_path, "a", newline="") as fh:
            csv.writer(fh).writerow([clean.get(c, "") for c in self._columns])
        with open(self.jsonl_path, "a") as fh:
            fh.write(json.dumps(clean, sort_keys=True) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
