"""docs/reproduction.md and its plot from benchmarks/results/reproduction.json (`hf_dynasr.evaluation.reproduction`
writes that file; `python scripts/reproduce.py` runs both).

Every figure in the document is computed here from the recorded runs; nothing is typed in by hand.
"""

from __future__ import annotations

import os
import statistics

SIZE_ORDER = {"small": 0, "medium": 1, "full": 2}
BASELINE_SIZE = {"baseline_small": "small", "baseline_medium": "medium", "baseline_full": "full"}
PAPER_CLAIMS = (
    "- Paper 1 (dynamic encoder size): subnets of one supernet are on par with individually trained models of the "
    "same size (Simple-Top-k and Iterative-Zero-Out both, sandwich rule in stage 2).\n"
    "- Paper 2 (OrthoSoftmax): FLOPs-aware, component-wise selection gives the best family.\n"
    "- Paper 3 (DMAO): up to 6 % relative WER improvement over the same model trained without it.\n"
)
PAPER2_BEST = "ortho_flops_component"


def _size_rows(run: dict):
    return sorted(run["sizes"].items(), key=lambda kv: kv[1]["num_parameters"])


def _baselines(runs: list[dict]) -> dict[str, list[dict]]:
    """size name -> the baseline runs' results (one per seed)."""
    out: dict[str, list[dict]] = {}
    for r in runs:
        if r["config"] in BASELINE_SIZE:
            out.setdefault(BASELINE_SIZE[r["config"]], []).append(r["sizes"]["full"])
    return out


def _mean(values):
    return statistics.fmean(values) if values else float("nan")


def _spread(values):
    return (max(values) - min(values)) / 2 if len(values) > 1 else float("nan")


def _pct(x):
    return f"{100 * x:.1f}"


def _rel(a, b):
    """Relative change of a against b, in percent (negative = a is better)."""
    return f"{100 * (a - b) / b:+.1f} %"


def supernet_table(runs: list[dict], base: dict) -> list[str]:
    lines = ["| run | method | seed | size | params | GFLOPs (10 s) | WER % | CER % | CER vs baseline | train min |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        for size, v in _size_rows(r):
            key = BASELINE_SIZE.get(r["config"], size)
            ref = _mean([b["cer"] for b in base.get(key, [])])
            vs = "" if r["config"] in BASELINE_SIZE else (_rel(v["cer"], ref) if ref == ref else "")
            lines.append(f"| {r['name']} | {r['method'] or 'single model'}{' + DMAO' if r['dmao'] else ''} | "
                         f"{r['seed']} | {size if r['config'] not in BASELINE_SIZE else key} | "
                         f"{v['num_parameters'] / 1e6:.2f}M | {v['flops'] / 1e9:.2f} | {_pct(v['wer'])} | "
                         f"{_pct(v['cer'])} | {vs} | {r['train_wall_time_s'] / 60:.1f} |")
    return lines


def headline(runs: list[dict], base: dict) -> tuple[list[str], str | None]:
    """Per size: the baseline (mean over seeds) against each supernet method's subnet of that size."""
    methods = [r for r in runs if r["config"] not in BASELINE_SIZE and not r["dmao"]]
    if not methods or not base:
        return ["(not enough finished runs for the headline)"], None
    by_config: dict[str, list[dict]] = {}
    for r in methods:
        by_config.setdefault(r["config"], []).append(r)
    sizes = sorted(base, key=SIZE_ORDER.get)
    head = "| method (seeds) | " + " | ".join(f"{s} CER % (vs baseline)" for s in sizes) + " | mean CER % |"
    lines = [head, "|---|" + "---:|" * (len(sizes) + 1)]
    ref = {s: _mean([b["cer"] for b in base[s]]) for s in sizes}
    noise = {s: _spread([b["cer"] for b in base[s]]) for s in sizes}
    cells = [f"{_pct(ref[s])} ± {_pct(noise[s])}" if noise[s] == noise[s] else _pct(ref[s]) for s in sizes]
    lines.append(f"| individually trained ({len(base[sizes[0]])}) | " + " | ".join(cells)
                 + f" | {_pct(_mean(list(ref.values())))} |")
    means = {}
    for config, rs in sorted(by_config.items()):
        cers = {s: [r["sizes"][s]["cer"] for r in rs if s in r["sizes"]] for s in sizes}
        means[config] = _config_mean(runs, config)
        row = [f"{_pct(_mean(cers[s]))} ({_rel(_mean(cers[s]), ref[s])})" if cers[s] else "–" for s in sizes]
        lines.append(f"| {config} ({len(rs)}) | " + " | ".join(row) + f" | {_pct(means[config])} |")
    best = min(means, key=means.get)
    return lines, best


def reading(runs: list[dict], base: dict, best: str | None) -> list[str]:
    """Plain statements computed from the numbers: each claim, what we measured, and whether it holds here."""
    out = []
    if not base or best is None:
        return ["Not enough finished runs to compare."]
    sizes = sorted(base, key=SIZE_ORDER.get)
    noise = [_spread([b["cer"] for b in base[s]]) for s in sizes if len(base[s]) > 1]
    noise_abs = max(noise) if noise else float("nan")
    best_runs = [r for r in runs if r["config"] == best and not r["dmao"]]
    for s in sizes:
        ref = _mean([b["cer"] for b in base[s]])
        got = _mean([r["sizes"][s]["cer"] for r in best_runs if s in r["sizes"]])
        gap = got - ref
        verdict = ("no second baseline seed yet, so no noise estimate" if noise_abs != noise_abs else
                   "within the seed noise" if abs(gap) <= noise_abs else
                   "better than the baseline beyond the seed noise" if gap < 0 else
                   "worse than the baseline beyond the seed noise")
        out.append(f"- {s}: best method `{best}` {_pct(got)} % CER against {_pct(ref)} % individually trained "
                   f"({_rel(got, ref)}): {verdict} (largest baseline half-range over seeds: {_pct(noise_abs)} points).")
    ranked = sorted({r["config"] for r in runs if r["config"] not in BASELINE_SIZE and not r["dmao"]},
                    key=lambda c: _config_mean(runs, c))
    out.append(f"- Ranking of the methods by mean CER over their three sizes (best first): {', '.join(ranked)}.")
    if PAPER2_BEST in ranked:
        place = ranked.index(PAPER2_BEST) + 1
        gap = _config_mean(runs, PAPER2_BEST) - _config_mean(runs, ranked[0])
        out.append(f"- Paper 2's best setting, `{PAPER2_BEST}`, ranks {place} of {len(ranked)} here"
                   + (": the claim holds on this machine." if place == 1 else
                      f"; `{ranked[0]}` is ahead by {_pct(gap)} CER points, "
                      + ("within" if gap <= noise_abs else "beyond")
                      + f" the largest baseline half-range over seeds ({_pct(noise_abs)} points), so the claim is not "
                      "reproduced here" + (" (nor contradicted)." if gap <= noise_abs else ".")))
    dmao = [r for r in runs if r["dmao"]]
    full = base.get("full", [])
    if dmao and full:
        d = dmao[0]["sizes"]["full"]
        same_seed = [r for r in runs if r["config"] == "baseline_full" and r["seed"] == dmao[0]["seed"]]
        ref = same_seed[0]["sizes"]["full"] if same_seed else full[0]
        out.append(f"- DMAO: {_pct(d['wer'])} % WER / {_pct(d['cer'])} % CER with {d['num_parameters'] / 1e6:.3f}M "
                   f"parameters against {_pct(ref['wer'])} % / {_pct(ref['cer'])} % ({ref['num_parameters'] / 1e6:.3f}M) "
                   f"for the same model and seed without it: WER {_rel(d['wer'], ref['wer'])}, CER "
                   f"{_rel(d['cer'], ref['cer'])} relative (paper 3: up to -6 % WER); the CER difference, "
                   f"{_pct(abs(d['cer'] - ref['cer']))} points, is "
                   + ("within" if abs(d["cer"] - ref["cer"]) <= noise_abs else "beyond")
                   + " the baseline seed noise.")
    return out


def _provenance(stamp: dict) -> str:
    """'commit `abc` (date) on CPU, N cores, P runs at a time with T thread(s) each'."""
    m = stamp.get("machine") or {}
    return (f"commit `{stamp.get('commit')}` ({str(stamp.get('date'))[:10]}) on {m.get('cpu', '?')}, "
            f"{m.get('cores', '?')} cores, {stamp.get('parallel', '?')} runs at a time with "
            f"{stamp.get('threads_per_run', '?')} thread(s) each")


def _config_mean(runs: list[dict], config: str) -> float:
    """Mean CER over a supernet config's sizes and seeds."""
    return _mean([_mean([v["cer"] for v in r["sizes"].values()]) for r in runs if r["config"] == config and not r["dmao"]])


def plot(runs: list[dict], base: dict, path: str) -> bool:
    try:  # matplotlib is optional (the `plot` extra) and slow to import: only here
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = sorted(base, key=SIZE_ORDER.get)
    if sizes:
        xs = [_mean([b["num_parameters"] for b in base[s]]) / 1e6 for s in sizes]
        ys = [100 * _mean([b["cer"] for b in base[s]]) for s in sizes]
        err = [[100 * (ys[i] / 100 - min(b["cer"] for b in base[s])) for i, s in enumerate(sizes)],
               [100 * (max(b["cer"] for b in base[s]) - ys[i] / 100) for i, s in enumerate(sizes)]]
        ax.errorbar(xs, ys, yerr=err, color="black", lw=2, marker="s", capsize=4, label="individually trained")
    for r in runs:
        if r["config"] in BASELINE_SIZE:
            continue
        rows = _size_rows(r)
        label = f"{r['config']} s{r['seed']}" + (" (DMAO)" if r["dmao"] else "")
        ax.plot([v["num_parameters"] / 1e6 for _, v in rows], [100 * v["cer"] for _, v in rows],
                marker="o" if not r["dmao"] else "*", ms=6 if not r["dmao"] else 12, lw=1, label=label)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("test CER %")
    ax.set_title("Supernet subnets vs individually trained models (same data, same updates)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def write_report(record: dict, doc_path: str) -> None:
    """Write `doc_path` (markdown) and the plot next to it (same name, .png, when matplotlib is installed)."""
    runs = record["runs"]
    base = _baselines(runs)
    png = os.path.splitext(doc_path)[0] + ".png"
    has_plot = plot(runs, base, png)
    head, best = headline(runs, base)
    lines = [
        "# Reproduction: one supernet vs individually trained models, on this machine",
        "",
        *_setup(record),
        "",
        "## Headline: each size against its individually trained model (test CER)",
        "",
        *head,
        "",
        "## Reading against the papers' claims",
        "",
        PAPER_CLAIMS,
        "What this machine shows:",
        "",
        *reading(runs, base, best),
        "",
        _scale_caveat(record),
        "",
    ]
    if has_plot:
        lines += ["## Plot", "", f"![CER vs parameters]({os.path.basename(png)})", ""]
    lines += ["## Every run", "", *supernet_table(runs, base), "",
              "## Commands", "", "```bash",
              "python scripts/reproduce.py --write_docs               # all runs with no result yet, then this page",
              "python scripts/reproduce.py --report_only --write_docs  # this page and the JSON from finished runs",
              "python scripts/reproduce.py --report_only              # the same into runs/repro/report/ (untracked)",
              "python scripts/reproduce.py --list                      # the run matrix", "```", ""]
    tmp = doc_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, doc_path)


def _setup(record: dict) -> list[str]:
    """Provenance (command, commit, where the runs were recorded) and the setup shared by every run."""
    runs = record["runs"]
    total_min = sum(r["train_wall_time_s"] for r in runs) / 60
    steps = " / ".join(str(s) for s in sorted({r["steps"] for r in runs}))
    hours = record.get("corpus_hours")
    amount = (f"{hours['train']:.1f} h of training audio; dev {hours['dev']:.2f} h, test {hours['test']:.2f} h"
              if hours else "a few hours of audio")
    recorded = sorted({_provenance(r.get("recorded") or record) for r in runs})
    return [
        f"Generated by `{record['command'].strip()}` at commit `{record['commit']}`"
        f"{' (with uncommitted changes)' if record['dirty'] else ''} on {record['date']}. Runs recorded at "
        + "; ".join(recorded) + ". Raw numbers: "
        "`benchmarks/results/reproduction.json`; configs: `training/configs/repro/`.",
        "",
        f"Setup: every run trains on `{record['corpus']}` (synthesized espeak-ng/flite speech, {amount}) for "
        f"{steps} updates of 25 s of audio with the same one-cycle schedule, and is scored on the "
        f"{runs[0]['test_utterances'] if runs else '?'} test utterances, whose sentences no training utterance "
        f"contains. {len(runs)} runs, {total_min:.0f} minutes of training in total; a run's wall time depends on "
        "which run shared the CPU with it, so compare speed in docs/benchmarks.md, not here. "
        "Sizes are FLOPs (or parameter) fractions 0.5 / 0.75 / 1 of the d=144, 4-block Conformer; the individually "
        "trained baselines are the same Conformer at d=96 / d=120 / d=144 (FFN 4d), the closest dense shapes.",
    ]


def _scale_caveat(record: dict) -> str:
    hours = record.get("corpus_hours")
    train_amount = f"{hours['train']:.1f} h" if hours else "a few hours"
    cers = [v["cer"] for r in record["runs"] for v in r["sizes"].values()]
    cer_range = f"{_pct(min(cers))}-{_pct(max(cers))} %" if cers else "?"
    return (f"Scale caveat: these are minutes-long runs of ~2M-parameter models on {train_amount} of synthetic speech, "
            f"where every model is still far from converged (test CER {cer_range}); the papers train 100-500 h for "
            "days. A claim that "
            "holds here is weak evidence, and one that fails here may still hold at scale.")
