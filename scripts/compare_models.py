"""Two GLVC models compared at matched rates, from their ``glvc eval`` results.

    python scripts/compare_models.py OLD/eval.json NEW/eval.json --old-name wan-small --new-name taef2 \
        [--metrics psnr ms_ssim vmaf cvvdp] [--out compare.json]

For every clip both evaluations hold, and every metric: at each rate point of the old model, the new
model's value at the same bits per pixel (linear in log bpp between its neighbouring points on its
rate-quality Pareto front; "outside" when that bpp is beyond the new model's range) and the
difference; then BD-rate and BD-metric of the new model against the old one (:func:`glvc.rd.compute_bd`,
the same conventions as ``glvc eval``'s report: negative BD-rate = the new model needs fewer bits).
Prints a markdown table; ``--out`` writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glvc.rd import LOWER_IS_BETTER, compute_bd, pareto_front  # noqa: E402


def glvc_rows(path: str, name: str) -> list[dict]:
    """The GLVC rows of an eval.json, with ``codec`` set to ``name``."""
    with open(path) as f:
        rows = json.load(f)["rows"]
    return [{**row, "codec": name} for row in rows if row["codec"] == "glvc"]


def value_at(rows: list[dict], metric: str, bpp: float) -> float | None:
    """The metric of ``rows`` at ``bpp`` (linear in log bpp on the Pareto front), None outside its range."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rates, values, _ = pareto_front([r["bpp"] for r in rows if r.get(metric) is not None],
                                    [sign * r[metric] for r in rows if r.get(metric) is not None])
    if len(rates) == 0 or not rates[0] <= bpp <= rates[-1]:
        return None
    return sign * float(np.interp(math.log(bpp), np.log(rates), values))


def compare(old: list[dict], new: list[dict], metrics: list[str]) -> dict:
    clips = [c for c in dict.fromkeys(r["clip"] for r in old) if any(r["clip"] == c for r in new)]
    matched = []
    for clip in clips:
        old_rows = sorted((r for r in old if r["clip"] == clip), key=lambda r: r["bpp"])
        new_rows = [r for r in new if r["clip"] == clip]
        for row in old_rows:
            entry = {"clip": clip, "old_quality": row["rate"], "bpp": row["bpp"], "bytes": row["bytes"]}
            for m in metrics:
                theirs = value_at(new_rows, m, row["bpp"])
                entry[m] = {"old": row.get(m), "new": theirs,
                            "delta": None if theirs is None or row.get(m) is None else theirs - row[m]}
            matched.append(entry)
    old_name, new_name = old[0]["codec"], new[0]["codec"]
    bd = [e for e in compute_bd(old + new, metrics, anchors=(old_name,)) if e["test"] == new_name]
    return {"clips": clips, "metrics": metrics, "matched": matched, "bd": bd}


def markdown(result: dict, old_name: str, new_name: str) -> str:
    metrics = result["metrics"]
    lines = [f"| clip | {old_name} quality | bpp | " + " | ".join(f"{m}: {old_name} -> {new_name}" for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for e in result["matched"]:
        cells = []
        for m in metrics:
            v = e[m]
            if v["old"] is None:
                cells.append("n/a")
            elif v["new"] is None:
                cells.append(f"{v['old']:.3f} -> outside")
            else:
                cells.append(f"{v['old']:.3f} -> {v['new']:.3f} ({v['delta']:+.3f})")
        lines.append(f"| {e['clip']} | {e['old_quality']} | {e['bpp']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", f"BD-rate of {new_name} against {old_name} (negative: fewer bits for the same quality), BD-metric:", ""]
    for e in result["bd"]:
        rate = "n/a" if e["bd_rate"] is None else f"{e['bd_rate']:+.1f} %"
        metric = "n/a" if e["bd_metric"] is None else f"{e['bd_metric']:+.3f}"
        notes = "; ".join(n for n in (e.get("bd_rate_note"), e.get("bd_metric_note")) if n)
        lines.append(f"- {e['clip']} {e['metric']}: BD-rate {rate}, BD-metric {metric}" + (f" ({notes})" if notes else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--old-name", default="old")
    parser.add_argument("--new-name", default="new")
    parser.add_argument("--metrics", nargs="+", default=["psnr", "ms_ssim", "vmaf", "cvvdp"])
    parser.add_argument("--out")
    args = parser.parse_args()
    result = compare(glvc_rows(args.old, args.old_name), glvc_rows(args.new, args.new_name), args.metrics)
    print(markdown(result, args.old_name, args.new_name))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
