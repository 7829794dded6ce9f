"""What ``glvc eval`` writes: eval.csv/eval.json, the BD tables (bd_rate.md), results.md and one
RD plot per metric (file list in :mod:`glvc.evaluate`'s docstring), and the summary it prints."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from fractions import Fraction
from typing import Sequence

import numpy as np

from .defaults import REPO_ROOT
from .rd import LOWER_IS_BETTER

METRIC_LABELS = {
    "psnr": "PSNR-RGB (dB)",
    "psnr_y": "PSNR-Y (dB)",
    "ms_ssim": "MS-SSIM",
    "vmaf": "VMAF",
    "lpips": "LPIPS-Alex",
    "lpips_alex": "LPIPS-Alex",
    "lpips_vgg": "LPIPS-VGG",
    "dists": "DISTS",
    "cvvdp": "ColorVideoVDP (JOD, standard_fhd)",
}
CODEC_LABELS = {"glvc": "GLVC", "x264": "x264", "x265": "x265", "svtav1": "SVT-AV1"}

# column order of eval.csv (metric columns are inserted per --metrics)
_LEAD_COLUMNS = [
    "clip", "codec", "rate_param", "rate", "frames", "width", "height", "fps",
    "bytes", "total_bytes", "byte_count", "bpp", "kbps",
]
_TAIL_COLUMNS = ["encode_seconds", "decode_seconds", "encode_fps", "decode_fps", "metrics_seconds"]


def _columns(metrics: Sequence[str]) -> list[str]:
    cols = list(_LEAD_COLUMNS)
    for m in metrics:
        cols.append(m)
    if "ms_ssim" in metrics:
        cols.append("ms_ssim_variant")
    for m in metrics:
        cols.append(f"{m}_unavailable")
    cols += _TAIL_COLUMNS + ["crf_search", "notes"]
    return cols


# the parts of a metric's unavailability reason that depend on the moment it was asked
# (glvc.metrics.fetch_backbone: "failed 217 s ago (...); no new try for 383 s", "(started 3 s ago)")
_MOMENT = (re.compile(r"(?<=failed) \d+ s ago"), re.compile(r"; no new try for \d+ s"), re.compile(r" \(started \d+ s ago\)"))


def portable_note(text: str | None) -> str | None:
    """A reason or note as the results files keep it: paths inside the repository relative to it, the
    home folder as ``~``, and without the parts that depend on the moment ("failed 217 s ago" ->
    "failed"), so that one cause reads the same on every row (and in one footnote) and the files do
    not name the machine that made them."""
    if not text:
        return text
    for root in dict.fromkeys((os.path.realpath(REPO_ROOT), os.path.abspath(REPO_ROOT))):
        text = text.replace(root + os.sep, "")
    home = os.path.expanduser("~")
    if home not in ("", os.sep, "~"):
        text = re.sub(re.escape(home.rstrip(os.sep)) + r"(?=[/\\]|$)", "~", text)
    for moment in _MOMENT:
        text = moment.sub("", text)
    return text


def _json_default(obj):
    if isinstance(obj, Fraction):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _fmt(v, digits: int) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}"


_DIGITS = {"psnr": 2, "psnr_y": 2, "ms_ssim": 4, "vmaf": 2, "lpips": 4, "lpips_alex": 4, "lpips_vgg": 4, "dists": 4, "cvvdp": 3}


def _available_metrics(rows: Sequence[dict], metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if any(r.get(m) is not None for r in rows)]


def _unavailable_reasons(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, list[str]]:
    out = {}
    for m in metrics:
        reasons = sorted({r.get(f"{m}_unavailable") for r in rows if r.get(m) is None and r.get(f"{m}_unavailable")})
        if reasons:
            out[m] = reasons
    return out


def bd_markdown(bd: Sequence[dict], metrics: Sequence[str]) -> str:
    """Markdown BD-rate and BD-metric tables, one pair per anchor, with numbered notes."""
    lines: list[str] = []
    notes: dict[str, int] = {}

    def note(text: str) -> str:
        if text not in notes:
            notes[text] = len(notes) + 1
        return f"<sup>{notes[text]}</sup>"

    anchors = list(dict.fromkeys(e["anchor"] for e in bd))
    for anchor in anchors:
        entries = [e for e in bd if e["anchor"] == anchor]
        pairs = list(dict.fromkeys((e["clip"], e["test"]) for e in entries))
        for kind, title, unit in (
            ("bd_rate", f"BD-rate vs {CODEC_LABELS.get(anchor, anchor)} (%, Akima; negative = fewer bits for the same quality)", "%"),
            ("bd_metric", f"BD-metric vs {CODEC_LABELS.get(anchor, anchor)} (mean test - anchor at equal bpp, metric units)", ""),
        ):
            lines.append(f"### {title}")
            lines.append("")
            header = ["clip", "codec"] + [METRIC_LABELS.get(m, m) + (" (lower better)" if m in LOWER_IS_BETTER and kind == "bd_metric" else "") for m in metrics]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            means: dict[tuple[str, str], list[float | None]] = {}
            for clip, test in pairs:
                cells = [clip, CODEC_LABELS.get(test, test)]
                for m in metrics:
                    e = next((x for x in entries if x["clip"] == clip and x["test"] == test and x["metric"] == m), None)
                    if e is None:
                        cells.append("")
                        continue
                    v = e.get(kind)
                    text = "n/a" if v is None else (f"{v:+.1f} %" if kind == "bd_rate" else f"{v:+.{_DIGITS.get(m, 3)}f}")
                    if e.get("metric_variant"):
                        text += note(f"{clip}: {e['metric_variant']} instead of MS-SSIM")
                    if e.get(f"{kind}_note"):
                        text += note(e[f"{kind}_note"])
                    cells.append(text)
                    means.setdefault((test, m), []).append(v)
                lines.append("| " + " | ".join(cells) + " |")
            clips = list(dict.fromkeys(c for c, _ in pairs))
            if len(clips) > 1:
                for test in dict.fromkeys(t for _, t in pairs):
                    cells = ["**mean**", CODEC_LABELS.get(test, test)]
                    for m in metrics:
                        vals = means.get((test, m), [])
                        if vals and len(vals) == len(clips) and all(v is not None for v in vals):
                            mean = float(np.mean(vals))
                            cells.append(f"{mean:+.1f} %" if kind == "bd_rate" else f"{mean:+.{_DIGITS.get(m, 3)}f}")
                        else:
                            cells.append("n/a")
                    lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    if notes:
        lines.append("Notes:")
        lines.append("")
        for text, k in notes.items():
            lines.append(f"{k}. {text}")
        lines.append("")
    return "\n".join(lines)


def _single_scale(row: dict) -> bool:
    """The row's ``ms_ssim`` holds single-scale SSIM (frames under 161 px: ``glvc.metrics``' fallback)."""
    return row.get("ms_ssim") is not None and not str(row.get("ms_ssim_variant") or "MS-SSIM").startswith("MS-SSIM")


def _ssim_label(rows: Sequence[dict]) -> str:
    """The ``ms_ssim`` column's name by what it holds: MS-SSIM, SSIM, or both (SSIM rows then marked)."""
    scored = [r for r in rows if r.get("ms_ssim") is not None]
    single = [r for r in scored if _single_scale(r)]
    if not single:
        return METRIC_LABELS["ms_ssim"]
    return "SSIM" if len(single) == len(scored) else "MS-SSIM (SSIM where marked)"


def points_markdown(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    """The table of every rate point; the ``ms_ssim`` column is named by what was computed."""
    avail = _available_metrics(rows, metrics)
    labels = [_ssim_label(rows) if m == "ms_ssim" else METRIC_LABELS.get(m, m) for m in avail]
    mixed = "MS-SSIM (SSIM where marked)" in labels
    header = ["clip", "codec", "rate", "bytes", "bpp", "kbps"] + labels + ["enc fps", "dec fps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        rate = f"q{r['rate']}" if r["rate_param"] == "quality" else f"crf {r['rate']}"
        cells = [r["clip"], CODEC_LABELS.get(r["codec"], r["codec"]), rate, str(r["bytes"]), f"{r['bpp']:.4f}", f"{r['kbps']:.1f}"]
        for m in avail:
            text = _fmt(r.get(m), _DIGITS.get(m, 4)) or "n/a"
            if m == "ms_ssim" and mixed and _single_scale(r):
                text += " (SSIM)"
            cells.append(text)
        cells += [f"{r['encode_fps']:.2f}", f"{r['decode_fps']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bd_summary(bd: Sequence[dict], metrics: Sequence[str]) -> list[str]:
    """A few lines for the terminal: BD-rate against each anchor on the first metric that has values
    (PSNR-RGB by default), per tested codec and clip; the tables and their notes are in bd_rate.md."""
    lines: list[str] = []
    metric = next((m for m in metrics if any(e["metric"] == m and not e.get("unavailable") for e in bd)), None)
    if metric is None:
        return ["no BD-rate: no anchor (x265/x264) was evaluated, or no metric has values"]
    name = METRIC_LABELS.get(metric, metric).split(" (")[0]
    for anchor in dict.fromkeys(e["anchor"] for e in bd):
        entries = [e for e in bd if e["anchor"] == anchor and e["metric"] == metric]
        parts = []
        for test in dict.fromkeys(e["test"] for e in entries):
            cells = [f"{e['clip']} " + ("n/a" if e["bd_rate"] is None else f"{e['bd_rate']:+.1f} %") for e in entries if e["test"] == test]
            parts.append(f"{CODEC_LABELS.get(test, test)} " + ", ".join(cells))
        lines.append(f"BD-rate vs {CODEC_LABELS.get(anchor, anchor)} on {name} (negative = fewer bits): " + "; ".join(parts))
    return lines


def rd_figure(rows: Sequence[dict], metric: str):
    """The RD plot of one metric: a panel per clip, bpp on a log axis, a line per codec. Returns the
    matplotlib figure (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    clips = list(dict.fromkeys(r["clip"] for r in rows))
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    styles = {"glvc": ("tab:red", "o"), "x264": ("tab:blue", "s"), "x265": ("tab:green", "^"), "svtav1": ("tab:purple", "D")}
    fig, axes = plt.subplots(1, len(clips), figsize=(5.2 * len(clips), 4.2), squeeze=False)
    for ax, clip in zip(axes[0], clips):
        clip_rows = [r for r in rows if r["clip"] == clip]
        for codec in codecs:
            pts = sorted((r["bpp"], r[metric]) for r in clip_rows if r["codec"] == codec and r.get(metric) is not None)
            if not pts:
                continue
            color, marker = styles.get(codec, (None, "o"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=CODEC_LABELS.get(codec, codec))
        first = clip_rows[0]
        ax.set_title(f"{clip} ({first['width']}x{first['height']}, {first['frames']} frames)", fontsize=10)
        ax.set_xscale("log")
        # a panel spanning more than 0.6 decade is labelled at 1, 2 and 5 times the powers of ten only:
        # labelling every minor tick (3, 4, 6, 7, ...) ran the labels into each other there (RD curves
        # from 0.002 to 0.06 bpp); a narrower one keeps every minor tick's label, or it could have none
        low, high = ax.get_xlim()
        subs = (2.0, 5.0) if math.log10(high / low) > 0.6 else tuple(float(k) for k in range(2, 10))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs=subs))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("bits per pixel (log scale)")
        label = METRIC_LABELS.get(metric, metric)
        if metric == "ms_ssim" and any(_single_scale(r) for r in clip_rows):
            label = "SSIM (frame < 161 px: no MS-SSIM)"
        if metric in LOWER_IS_BETTER:
            label += " (lower is better)"
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Rate-distortion: {METRIC_LABELS.get(metric, metric)}")
    fig.tight_layout()
    return fig


def plot_rd(rows: Sequence[dict], metrics: Sequence[str], out_dir: str) -> dict[str, str]:
    """One PNG per available metric (``rd_<metric>.png``, :func:`rd_figure`); returns {``rd_<metric>``: path}."""
    import matplotlib.pyplot as plt

    files = {}
    for m in _available_metrics(rows, metrics):
        fig = rd_figure(rows, m)
        path = os.path.join(out_dir, f"rd_{m}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[f"rd_{m}"] = path
    return files


def write_outputs(out_dir: str, rows: Sequence[dict], bd: Sequence[dict], config: dict, elapsed: float) -> dict[str, str]:
    """Write every output file into ``out_dir``; ``config`` is the run's record (``glvc.evaluate``:
    its ``metrics``, ``baseline_mode`` and ``byte_count`` shape the files). Returns {kind: path}."""
    files: dict[str, str] = {}
    metrics = config["metrics"]
    cols = _columns(metrics)
    csv_path = os.path.join(out_dir, "eval.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            out = {}
            for c in cols:
                v = r.get(c)
                if v is None:
                    out[c] = ""
                elif isinstance(v, (list, dict)):
                    out[c] = json.dumps(v)
                else:
                    out[c] = v
            writer.writerow(out)
    files["csv"] = csv_path

    unavailable = _unavailable_reasons(rows, metrics)
    json_path = os.path.join(out_dir, "eval.json")
    with open(json_path, "w") as f:
        json.dump(
            {"config": config, "elapsed_seconds": elapsed, "rows": list(rows), "bd": list(bd), "unavailable_metrics": unavailable},
            f,
            indent=1,
            default=_json_default,
        )
    files["json"] = json_path

    bd_md = bd_markdown(bd, metrics) if bd else "No BD-rate anchors (x265/x264) were evaluated.\n"
    bd_path = os.path.join(out_dir, "bd_rate.md")
    with open(bd_path, "w") as f:
        f.write("# Bjontegaard deltas\n\n")
        f.write(_conventions_text())
        f.write("\n")
        f.write(bd_md)
    files["bd_markdown"] = bd_path

    files.update(plot_rd(rows, metrics, out_dir))

    md = ["# GLVC evaluation", ""]
    if config.get("command"):
        md += ["```", config["command"], "```", ""]
    resumed = config.get("resumed_rows") or 0
    md.append(
        f"{len(rows)} rate points over {len({r['clip'] for r in rows})} clip(s), {elapsed / 60:.1f} min wall, "
        f"{config.get('cpu_seconds_this_run', 0) / 60:.1f} CPU-min"
        + (f" (this run; {resumed} rows reused from an interrupted run)" if resumed else "")
        + f" on {config['machine']['cpus']} CPU(s) ({config['machine']['torch_threads']} torch threads, "
        f"load average at the end {config['machine']['load_average_1_5_15min_at_end']}). "
        f"Model: `{config.get('model')}` (fingerprint {config.get('model_fingerprint')}). "
        f"Baseline CRFs: `{config['baseline_mode']}` mode, byte count `{config['byte_count']}`."
    )
    md += ["", "## Rate points", "", points_markdown(rows, metrics), "", "## Bjontegaard deltas", "", _conventions_text(), bd_md]
    if unavailable:
        md += ["## Unavailable metrics", ""]
        for m, reasons in unavailable.items():
            md.append(f"- {METRIC_LABELS.get(m, m)}: " + "; ".join(reasons))
        md.append("")
    plots = [k for k in files if k.startswith("rd_")]
    if plots:
        md += ["## Plots", ""] + [f"![{k}]({os.path.basename(files[k])})" for k in plots] + [""]
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    files["markdown"] = md_path
    return files


def _cvvdp_display() -> str:
    from .metrics import CVVDP_DISPLAY

    return CVVDP_DISPLAY


def _conventions_text() -> str:
    return (
        "Bjontegaard deltas from the `bjontegaard` package with Akima interpolation; rate = bpp. "
        "BD-rate: mean bitrate difference at equal quality over the overlapping quality range, "
        "negative = the codec needs fewer bits than the anchor (better). LPIPS and DISTS (lower is better) "
        "are negated before interpolation, so the same sign convention holds. "
        "BD-metric: mean metric difference (codec - anchor) at equal bpp over the overlapping log-rate range, "
        "in the metric's units (higher is better except LPIPS/DISTS). Each curve is first reduced to its "
        "rate-quality Pareto front. n/a: see the numbered note.\n"
    )
