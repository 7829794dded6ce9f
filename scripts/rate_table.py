"""Measure a model's bits per pixel at a set of quality indices on the example clips.

The app's rate slider shows the expected bpp of each quality index from this table; how it is
measured: :mod:`glvc.ratetable` (``glvc train`` writes one for the model it exports). The app
interpolates log(bpp) linearly between the measured indices and says so.

Usage (about 10 minutes for the default model on 2 CPU cores)::

    python scripts/rate_table.py                      # writes glvc/pretrained/default/rate_table.json
    python scripts/rate_table.py --model DIR --qualities 0,21,42,63 --out DIR/rate_table.json
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from glvc.defaults import default_model  # noqa: E402
from glvc.pipeline import GLVC  # noqa: E402
from glvc.ratetable import DEFAULT_QUALITIES, EXAMPLES, RATE_TABLE_NAME, write_rate_table  # noqa: E402
from glvc.service import CPU_LIMITS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=default_model(), help="model folder (default: the bundled model)")
    parser.add_argument("--qualities", default=",".join(map(str, DEFAULT_QUALITIES)),
                        help="comma-separated quality indices (default: every 7th, ends included)")
    parser.add_argument("--examples", default=os.path.join(ROOT, "examples"))
    parser.add_argument("--max-height", type=int, default=CPU_LIMITS.default_height)
    parser.add_argument("--max-seconds", type=float, default=CPU_LIMITS.default_seconds)
    parser.add_argument("--out", default=None, help=f"default: <model>/{RATE_TABLE_NAME}")
    args = parser.parse_args(argv)

    model = GLVC.from_pretrained(args.model)
    qualities = sorted({int(q) for q in args.qualities.split(",")})
    if qualities[0] < 0 or qualities[-1] > model.max_quality:
        parser.error(f"qualities must lie in 0 .. {model.max_quality}, got {qualities}")
    path = args.out or os.path.join(args.model, RATE_TABLE_NAME)
    command = "python scripts/rate_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_rate_table(model, path, [os.path.join(args.examples, name) for name in EXAMPLES], qualities,
                     args.max_height, args.max_seconds, command=command.strip(), log=lambda line: print(line, flush=True))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
