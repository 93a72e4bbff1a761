"""Where the real data for tests lies (``../shared/data`` beside the repository), and the skip when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_or_skip(path: Path = SHARED_DATA) -> Path:
    """`path` when it is a folder; otherwise skip the calling test with a one-line reason."""
    if not path.is_dir():
        pytest.skip(f"needs the real data in ../shared/data beside the repository; not found at {path}")
    return path
