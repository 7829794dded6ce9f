"""Bjontegaard deltas between rate-quality curves (BD-rate, BD-metric), for ``glvc eval``.

The conventions (Akima interpolation from the ``bjontegaard`` package, rate = bpp, lower-is-better
metrics negated, each curve reduced to its Pareto front first) are described in
:mod:`glvc.evaluate`'s docstring, which states them for the reports.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

BD_ANCHORS = ("x265", "x264")
LOWER_IS_BETTER = frozenset({"lpips", "dists", "lpips_alex", "lpips_vgg"})
MIN_OVERLAP = 0.75


def pareto_front(rates: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Points sorted by rate keeping only those whose (higher-is-better) value beats every cheaper
    point. Returns (rates, values, number dropped)."""
    pts = sorted(zip(rates, values))
    keep_r, keep_v = [], []
    for r, v in pts:
        if keep_r and r <= keep_r[-1]:
            if v > keep_v[-1]:  # same rate, better value: replace
                keep_v[-1] = v
            continue
        if not keep_v or v > keep_v[-1]:
            keep_r.append(r)
            keep_v.append(v)
    return np.asarray(keep_r, float), np.asarray(keep_v, float), len(pts) - len(keep_r)


def bd_pair(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]], lower_is_better: bool) -> dict:
    """BD-rate (%) and BD-metric between two (rate, metric) point sets, see the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    import bjontegaard as bd

    sign = -1.0 if lower_is_better else 1.0
    ra, qa, drop_a = pareto_front([p[0] for p in anchor], [sign * p[1] for p in anchor])
    rt, qt, drop_t = pareto_front([p[0] for p in test], [sign * p[1] for p in test])
    out: dict[str, Any] = {
        "anchor_points": int(len(ra)),
        "test_points": int(len(rt)),
        "dropped_points": {"anchor": drop_a, "test": drop_t},
        "bd_rate": None,
        "bd_metric": None,
        "quality_overlap": None,
        "rate_overlap": None,
        "bd_rate_note": None,
        "bd_metric_note": None,
    }
    if len(ra) < 2 or len(rt) < 2:
        note = f"needs >= 2 monotone points per curve (anchor {len(ra)}, test {len(rt)})"
        out["bd_rate_note"] = out["bd_metric_note"] = note
        return out

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        union = max(a.max(), b.max()) - min(a.min(), b.min())
        inter = min(a.max(), b.max()) - max(a.min(), b.min())
        return max(inter, 0.0) / union if union > 0 else 0.0

    def rng(v: np.ndarray) -> str:
        lo, hi = sorted((sign * v.min(), sign * v.max()))
        return f"{lo:.4g}-{hi:.4g}"

    q_ov = overlap(qa, qt)
    r_ov = overlap(np.log10(ra), np.log10(rt))
    out["quality_overlap"], out["rate_overlap"] = q_ov, r_ov
    # (key, bjontegaard function, scale of its value, overlap it needs, note when there is none, what overlaps)
    measures = (
        ("bd_rate", bd.bd_rate, 1.0, q_ov, f"no quality overlap (anchor {rng(qa)}, test {rng(qt)})", "quality ranges"),
        ("bd_metric", bd.bd_psnr, sign, r_ov,
         f"no rate overlap (anchor {ra.min():.4g}-{ra.max():.4g} bpp, test {rt.min():.4g}-{rt.max():.4g} bpp)", "log-rate ranges"),
    )
    for key, function, scale, ov, no_overlap, ranges in measures:
        if ov <= 0:
            out[f"{key}_note"] = no_overlap
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(function(ra, qa, rt, qt, method="akima", require_matching_points=False, min_overlap=0))
        if not math.isfinite(value):
            out[f"{key}_note"] = "not finite"
            continue
        out[key] = scale * value
        if ov < MIN_OVERLAP:
            out[f"{key}_note"] = f"{ranges} overlap only {100 * ov:.0f} %"
    return out


def compute_bd(rows: Sequence[dict], metrics: Sequence[str], anchors: Sequence[str] = BD_ANCHORS) -> list[dict]:
    """One entry per (anchor, clip, tested codec, metric); see :func:`bd_pair`."""
    entries = []
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    for anchor in anchors:
        for clip in clips:
            for test in codecs:
                if test == anchor:
                    continue
                for m in metrics:
                    a_rows = [r for r in rows if r["clip"] == clip and r["codec"] == anchor]
                    t_rows = [r for r in rows if r["clip"] == clip and r["codec"] == test]
                    if not a_rows or not t_rows:
                        continue
                    entry = {"anchor": anchor, "clip": clip, "test": test, "metric": m, "lower_is_better": m in LOWER_IS_BETTER}
                    reasons = {r.get(f"{m}_unavailable") for r in a_rows + t_rows if r.get(m) is None}
                    a_pts = [(r["bpp"], r[m]) for r in a_rows if r.get(m) is not None]
                    t_pts = [(r["bpp"], r[m]) for r in t_rows if r.get(m) is not None]
                    if not a_pts or not t_pts:
                        reason = "; ".join(sorted(x for x in reasons if x)) or "no values"
                        entry.update(bd_rate=None, bd_metric=None, bd_rate_note=f"unavailable: {reason}", bd_metric_note=f"unavailable: {reason}", unavailable=True)
                    else:
                        entry.update(bd_pair(a_pts, t_pts, m in LOWER_IS_BETTER))
                        entry["unavailable"] = False
                    variants = {r.get("ms_ssim_variant") for r in a_rows} if m == "ms_ssim" else set()
                    if variants and variants != {"MS-SSIM"}:
                        entry["metric_variant"] = "; ".join(sorted(v for v in variants if v))
                    entries.append(entry)
    return entries
