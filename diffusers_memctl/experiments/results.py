"""Results I/O of experiments: the results CSV (one row per run) and the compact loss-history codec of exported
sweeps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..run_folder import publishable_path, write_csv_atomic

__all__ = [
    "read_compact_history",
    "read_results_csv",
    "write_compact_history",
    "write_results_csv",
]


def write_results_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Result rows as CSV (columns in order of first appearance), written to a temporary name and renamed.

    ``run_dir`` is written relative to the CSV's folder (the file is published); :func:`read_results_csv` resolves it.
    """
    rows = [
        {**row, "run_dir": publishable_path(row["run_dir"], path.parent)} if row.get("run_dir") else row
        for row in rows
    ]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    write_csv_atomic(path, rows, columns)


def read_results_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``sweep_results.csv`` with numbers parsed back (empty cells become `None`)."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value in ("", None):
                    row[key] = None
                    continue
                try:
                    number = float(value)
                    row[key] = int(number) if key == "seed" else number
                except ValueError:
                    row[key] = value
            run_dir = row.get("run_dir")
            if isinstance(run_dir, str) and not Path(run_dir).is_absolute() and (Path(path).parent / run_dir).exists():
                row["run_dir"] = str((Path(path).parent / run_dir).resolve())
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no result row")
    return rows


def _round_floats(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, list):
        return [_round_floats(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round_floats(v, digits) for k, v in value.items()}
    return value


def write_compact_history(path: Path, records: list[dict[str, Any]], *, digits: int = 5) -> Path:
    """A loss history as gzip-compressed JSON lines, floats rounded to `digits` significant digits.

    Exported studies keep every step of every run; rounded and compressed they take about a tenth of the plain
    ``loss_history.jsonl`` (the full-precision file stays in the run folder). The gzip header carries no timestamp,
    so the same history always gives the same bytes.
    """
    import gzip

    text = "".join(json.dumps(_round_floats(r, digits)) + "\n" for r in records).encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        handle.write(text)
    return path


def read_compact_history(path: Path) -> list[dict[str, Any]]:
    """Records of a ``.jsonl`` or ``.jsonl.gz`` loss history."""
    import gzip

    path = Path(path)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
