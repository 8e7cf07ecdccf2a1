"""Reports of evaluation results: markdown tables, sample transcripts, Pareto plots, training curves, count
formatting.

    from hf_dynasr.evaluation.reports import results_markdown, plot_pareto, plot_training_curve
    print(results_markdown(results)); plot_pareto(results, "pareto.png")   # results: evaluate_checkpoint's
    plot_training_curve("runs/demo/final/training_results.json", "training_curve.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

from hf_dynasr.json_io import read_json


def format_count(n: float | int | None, unit: str = "") -> str:
    """A count with a metric suffix: 1234567 -> "1.23M" (`unit` appended), None -> "-"."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pct(x) -> str:
    return "-" if x is None else ("inf" if isinstance(x, float) and math.isinf(x) else f"{100 * x:.2f}")


def results_markdown(results: Mapping) -> str:
    """A markdown table of sizes: params, FLOPs, WER, CER, latency, RTF."""
    duration = results.get("reference_duration_s", 10.0)
    latency_s = (results.get("latency_setup") or {}).get("duration_s", 10.0)
    has_lm = any("lm_wer" in s for s in results["sizes"].values())
    lines = [
        f"| size | params | FLOPs ({duration:g} s) | WER % | CER % |{' LM WER % | LM CER % |' if has_lm else ''} "
        f"latency ms (batch 1, {latency_s:g} s) | RTF |",
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if has_lm else "") + "---:|---:|",
    ]
    for name, s in results["sizes"].items():
        lat = s.get("latency_ms")
        rtf = s.get("rtf")
        lm = f" {_pct(s.get('lm_wer'))} | {_pct(s.get('lm_cer'))} |" if has_lm else ""
        lines.append(
            f"| {name} | {format_count(s.get('num_parameters'))} | {format_count(s.get('flops'))} | "
            f"{_pct(s.get('wer'))} | {_pct(s.get('cer'))} |{lm} {'-' if lat is None else f'{lat:.1f}'} | "
            f"{'-' if rtf is None else f'{rtf:.4f}'} |"
        )
    head = []
    if results.get("dataset"):
        head.append(f"Data: `{results['dataset']}`" + (f" ({results['split']})" if results.get("split") else "")
                    + f", {results.get('num_utterances', 0)} utterances, {results.get('audio_duration_s', 0):.1f} s.")
    if results.get("machine") and any("latency_ms" in s for s in results["sizes"].values()):
        m = results["machine"]
        head.append(f"Latency: median model forward on {m.get('cpu')} with {m.get('num_threads')} threads; "
                    "RTF includes feature extraction.")
    return "\n".join([*head, "", *lines]) + "\n" if head else "\n".join(lines) + "\n"


def samples_markdown(results: Mapping, num_samples: int = 3) -> str:
    """The first `num_samples` test utterances: the reference, then each size's greedy transcript."""
    sizes = {name: s.get("examples") or [] for name, s in results["sizes"].items()}
    count = min([num_samples, *(len(e) for e in sizes.values())])
    if count == 0:
        return ""
    lines = ["Sample transcripts:", ""]
    for i in range(count):
        reference = next(iter(sizes.values()))[i]["reference"]
        lines.append(f"- reference: `{reference}`")
        lines += [f"  - {name}: " + (f"`{examples[i]['prediction']}`" if examples[i]["prediction"] else "(empty)")
                  for name, examples in sizes.items()]
    return "\n".join(lines) + "\n"


def _baseline_rows(baselines) -> list[dict]:
    if baselines is None:
        return []
    if isinstance(baselines, (str, os.PathLike)):
        baselines = read_json(baselines)
    if isinstance(baselines, Mapping):
        baselines = baselines.get("sizes", baselines)
        return [{"name": k, **v} for k, v in baselines.items()]
    return [dict(b) for b in baselines]


def plot_pareto(results: Mapping | Iterable[Mapping], path, baselines=None, title: str | None = None) -> str:
    """WER vs parameters and WER vs FLOPs of every size (one line per eval set), with optional
    individually trained `baselines` (a JSON path, `{name: {num_parameters, flops, wer}}` or a list)."""
    import matplotlib  # optional and slow to import: only plots need it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    evals = [results] if isinstance(results, Mapping) else list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "num_parameters", "parameters (M)"), (axes[1], "flops", "GFLOPs (10 s)")):
        scale = 1e6 if key == "num_parameters" else 1e9
        for res in evals:
            pts = [(s[key] / scale, 100 * s["wer"], n) for n, s in res["sizes"].items()
                   if s.get("wer") is not None and s.get(key) is not None and math.isfinite(s["wer"])]
            pts.sort()
            if not pts:
                continue
            name = res.get("dataset") or "supernet"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"hf_dynasr supernet ({name}), greedy")
            for x, y, n in pts:
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            lm = sorted((s[key] / scale, 100 * s["lm_wer"]) for s in res["sizes"].values()
                        if _finite(s.get("lm_wer")) and s.get(key) is not None)
            if lm:  # results of evaluate_model.py --lm: the beam search with the n-gram LM beside the greedy line
                ax.plot([p[0] for p in lm], [p[1] for p in lm], "^-", label=f"with n-gram LM ({name})")
        rows = [b for b in _baseline_rows(baselines) if b.get(key) is not None and b.get("wer") is not None]
        if rows:
            rows.sort(key=lambda b: b[key])
            ax.plot([b[key] / scale for b in rows], [100 * b["wer"] for b in rows], "s--", label="individually trained")
            for b in rows:
                ax.annotate(b["name"], (b[key] / scale, 100 * b["wer"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("WER %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = os.fspath(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curve(history: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in history if _finite(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curve(training_results, path) -> str:
    """Training loss of every size, dev WER/CER of every size and the learning rate against the update step, from a
    run's `final/training_results.json` (a path or its content): its history (every logged step and every
    --eval_steps evaluation, over all resumed segments) and the final evaluation."""
    import matplotlib  # optional and slow to import: only plots need it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    record = read_json(training_results) if isinstance(training_results, (str, os.PathLike)) else training_results
    history = list(record.get("history") or [])
    final = {f"eval/{name}/{k}": r[k] for name, r in (record.get("eval") or {}).items() for k in ("wer", "cer")
             if _finite(r.get(k))}
    if final and record.get("steps") is not None:
        history.append({"step": record["steps"], **final})
    keys = sorted({k for r in history for k in r})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    panels = ((axes[0], [k for k in keys if k.startswith("loss/")], "CTC loss", 1.0),
              (axes[1], [k for k in keys if k.startswith("eval/")], "dev error %", 100.0),
              (axes[2], ["lr"] if "lr" in keys else [], "learning rate", 1.0))
    for ax, names, label, scale in panels:
        for key in names:
            steps, values = _curve(history, key)
            ax.plot(steps, [scale * v for v in values], "o-" if len(steps) < 30 else "-", markersize=3,
                    label=key.removeprefix("loss/").removeprefix("eval/").replace("/", " "))
        if not names:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("update step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if names and names != ["lr"]:
            ax.legend(fontsize=8)
    path = os.fspath(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
