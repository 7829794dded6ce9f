"""The one output step of the measuring scripts (fuzz.py, long_clip.py, determinism.py, codec_sweep.py)."""

from __future__ import annotations

import json


def print_and_save(result: dict, path: str | None) -> None:
    """Print ``result`` as indented JSON, and write the same to ``path`` when one is given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text)
