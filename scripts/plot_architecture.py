#!/usr/bin/env python
"""Plot where DMAO moved capacity: units per block and module before / after / difference (issue 5).

    python scripts/plot_architecture.py --run_dir runs/dmao      # writes runs/dmao/dmao_architecture.{png,md}
    python scripts/plot_architecture.py --events runs/dmao/dmao_events.jsonl --output arch.png [--config config.json]

Reads the DMAO events training/train.py appends to OUTPUT_DIR/dmao_events.jsonl (one JSON object per event with
"before" / "after" architecture specs, "dropped", "grown", "sources", parameter counts). "before" is the first
event's spec and "after" the last event's, so several events show their total effect.

Units are DMAO's: FFN and cgMLP chunks, conv chunks, attention heads. Chunk sizes come from the run's config
(--config, else RUN_DIR/final/config.json, else the latest RUN_DIR/checkpoints/*/config.json, else a
config.json next to the events file); without a config they are inferred from the events' "sources" (units
per module) and, failing that, shown as raw sizes (hidden units / heads / channels).

Writes a PNG (matplotlib, Agg backend) and a markdown summary next to it (same name, .md), which is also
printed: which modules grew, shrank or vanished, per block and in total.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

#: Module rows in block order (Conformer: ffn1, mhsa, conv, ffn2; E-Branchformer: ffn1, mhsa, cgmlp, ffn2).
MODULES = ("ffn1", "mhsa", "conv", "cgmlp", "ffn2")
_CHUNK_FIELDS = {"ffn1": "ffn_chunk_size", "ffn2": "ffn_chunk_size", "conv": "conv_chunk_size",
                 "cgmlp": "cgmlp_chunk_size"}
_UNIT_NAMES = {"ffn1": "hidden units", "ffn2": "hidden units", "conv": "channels", "cgmlp": "units", "mhsa": "heads"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run_dir", help="training output directory holding dmao_events.jsonl")
    src.add_argument("--events", help="a dmao_events.jsonl file")
    p.add_argument("--config", default=None, help="config.json giving the chunk sizes (default: found in the run)")
    p.add_argument("--output", default=None,
                   help="PNG path (default: RUN_DIR/dmao_architecture.png, or next to --events)")
    return p.parse_args(argv)


# --- inputs ---------------------------------------------------------------------------------------------
def load_events(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise SystemExit(f"error: no DMAO events file at {path}; was the run trained with --dmao?")
    events = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"error: {path}:{n} is not JSON ({err})") from None
            missing = {"before", "after"} - set(event)
            if missing:
                raise SystemExit(f"error: {path}:{n} lacks {sorted(missing)}; is this a dmao_events.jsonl file?")
            events.append(event)
    if not events:
        raise SystemExit(f"error: {path} holds no DMAO event (the run ended before the first event?)")
    return sorted(events, key=lambda e: (e.get("step", 0), e.get("event", 0)))


def find_config(run_dir: str | None, events_path: str) -> str | None:
    """The run's config.json: final/, else the latest checkpoint, else next to the events file."""
    candidates = []
    if run_dir:
        candidates.append(os.path.join(run_dir, "final", "config.json"))

        def step(path):
            match = re.search(r"(\d+)$", os.path.basename(os.path.dirname(path)))
            return int(match.group(1)) if match else -1

        candidates += sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*", "config.json")), key=step,
                             reverse=True)
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(events_path)), "config.json"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def chunk_sizes(config: dict | None, events: list[dict], modules) -> tuple[dict[str, int], str]:
    """Units per DMAO unit for each module, and where they came from ("config", "events" or "raw")."""
    sizes, origin = {"mhsa": 1}, "config"
    for module in modules:
        if module == "mhsa":
            continue
        value = (config or {}).get(_CHUNK_FIELDS[module])
        if not value:
            value, origin = _chunk_from_sources(events, _CHUNK_FIELDS[module]), "events"
        if not value:
            return {m: 1 for m in modules}, "raw"
        sizes[module] = int(value)
    return sizes, origin


def _chunk_from_sources(events, field: str) -> int | None:
    """A chunk size (config field `field`, e.g. ffn1 and ffn2 share "ffn_chunk_size") from the events'
    "sources": the units each module holds after an event."""
    for event in events:
        for key, units in (event.get("sources") or {}).items():
            b, name = key.split(".", 1)
            size = event["after"][int(b[1:])].get(name, 0)
            if _CHUNK_FIELDS.get(name) == field and units and size % len(units) == 0:
                return size // len(units)
    return None


# --- tables ---------------------------------------------------------------------------------------------
def unit_table(spec: list[dict], modules, sizes) -> list[list[int]]:
    """[module][block] -> units."""
    return [[block.get(m, 0) // sizes[m] for block in spec] for m in modules]


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else ("0" if n == 0 else f"\u2212{-n}")


def summary_markdown(title: str, events, modules, sizes, origin, before, after) -> str:
    blocks = len(before[0])
    lines = [f"# DMAO architecture change: {title}", ""]
    steps = ", ".join(f"step {e.get('step', '?')} (dropped {len(e.get('dropped', []))}, grew "
                      f"{len(e.get('grown', []))})" for e in events)
    lines.append(f"{len(events)} event(s): {steps}.")
    first, last = events[0], events[-1]
    if "params_before" in first and "params_after" in last:
        delta = last["params_after"] - first["params_before"]
        lines.append(f"Parameters: {first['params_before']:,} \u2192 {last['params_after']:,} ({_signed(delta)}).")
    if origin == "raw":
        lines.append("Units: raw sizes (no config with chunk sizes was found).")
    else:
        desc = [f"{m}: heads" if m == "mhsa" else f"{m}: chunks of {sizes[m]} {_UNIT_NAMES[m]}" for m in modules]
        lines.append(f"Units ({'from the config' if origin == 'config' else 'inferred from the events'}): "
                     + "; ".join(desc) + ".")
    lines += ["", "| module | " + " | ".join(f"b{b}" for b in range(blocks)) + " | total |",
              "|---|" + "---:|" * (blocks + 1)]
    for i, m in enumerate(modules):
        cells = [f"{x}" if x == y else f"{x} \u2192 {y}" for x, y in zip(before[i], after[i])]
        total_b, total_a = sum(before[i]), sum(after[i])
        total = f"{total_b}" if total_b == total_a else f"{total_b} \u2192 {total_a} ({_signed(total_a - total_b)})"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {total} |")
    lines += ["", "## Per block", ""]
    for b in range(blocks):
        grew, shrank, gone = [], [], []
        for i, m in enumerate(modules):
            x, y = before[i][b], after[i][b]
            if y > x:
                grew.append(f"{m} {_signed(y - x)} ({x} \u2192 {y})")
            elif y == 0 < x:
                gone.append(f"{m} ({x} \u2192 0)")
            elif y < x:
                shrank.append(f"{m} {_signed(y - x)} ({x} \u2192 {y})")
        parts = [f"grew {', '.join(grew)}" if grew else "", f"shrank {', '.join(shrank)}" if shrank else "",
                 f"removed {', '.join(gone)}" if gone else ""]
        lines.append(f"- **b{b}**: " + ("; ".join(p for p in parts if p) or "unchanged"))
    lines += ["", "## Per module (all blocks)", ""]
    for i, m in enumerate(modules):
        delta = sum(after[i]) - sum(before[i])
        verb = "grew" if delta > 0 else ("shrank" if delta < 0 else "unchanged")
        lines.append(f"- {m}: {verb} {_signed(delta) if delta else ''}".rstrip()
                     + f" ({sum(before[i])} \u2192 {sum(after[i])} units)")
    return "\n".join(lines) + "\n"


# --- figure ---------------------------------------------------------------------------------------------
def plot(path: str, title: str, modules, sizes, origin, before, after) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = len(before[0])
    diff = [[y - x for x, y in zip(rb, ra)] for rb, ra in zip(before, after)]
    labels = [m if origin == "raw" else (f"{m} (heads)" if m == "mhsa" else f"{m} (\u00d7{sizes[m]})")
              for m in modules]
    vmax = max(1, max(max(r) for r in before + after))
    dmax = max(1, max(abs(v) for r in diff for v in r))
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.55 * blocks + 2.5), 1.0 + 3 * (0.45 * len(modules) + 0.9)),
                             constrained_layout=True)
    panels = [("before", before, "viridis", 0, vmax), ("after", after, "viridis", 0, vmax),
              ("after \u2212 before", diff, "RdBu", -dmax, dmax)]
    for ax, (name, table, cmap, lo, hi) in zip(axes, panels):
        image = ax.imshow(table, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(blocks), [f"b{b}" for b in range(blocks)], fontsize=8)
        ax.set_yticks(range(len(modules)), labels, fontsize=8)
        for i, row in enumerate(table):
            for b, value in enumerate(row):
                dark = (value - lo) / (hi - lo) < 0.5 if cmap == "viridis" else abs(value) > 0.6 * dmax
                ax.text(b, i, _signed(value) if table is diff and value else str(value), ha="center",
                        va="center", fontsize=7, color="white" if dark else "black")
        fig.colorbar(image, ax=ax, shrink=0.9, label="units" if table is not diff else "\u0394 units")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    events_path = args.events or os.path.join(args.run_dir, "dmao_events.jsonl")
    events = load_events(events_path)
    config_path = args.config or find_config(args.run_dir, events_path)
    config = None
    if config_path:
        if not os.path.isfile(config_path):
            raise SystemExit(f"error: --config {config_path} does not exist")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    spec_before, spec_after = events[0]["before"], events[-1]["after"]
    modules = [m for m in MODULES if any(m in block for block in spec_before + spec_after)]
    sizes, origin = chunk_sizes(config, events, modules)
    before, after = unit_table(spec_before, modules, sizes), unit_table(spec_after, modules, sizes)

    output = args.output or (os.path.join(args.run_dir, "dmao_architecture.png") if args.run_dir
                             else os.path.splitext(events_path)[0] + "_architecture.png")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    title = os.path.basename(os.path.normpath(args.run_dir)) if args.run_dir else os.path.basename(events_path)
    block_type = (config or {}).get("block_type") or ("ebranchformer" if "cgmlp" in modules else "conformer")
    plot(output, f"DMAO units per block\n{title} ({block_type}, {len(events)} event(s))", modules, sizes, origin,
         before, after)
    summary = summary_markdown(title, events, modules, sizes, origin, before, after)
    summary_path = os.path.splitext(output)[0] + ".md"
    with open(summary_path, "w", encoding="utf-8") as f:
        f.write(summary)
    print(summary)
    print(f"wrote {output} and {summary_path}", file=sys.stderr)
    return {"png": output, "markdown": summary_path, "modules": modules, "unit_sizes": sizes,
            "unit_origin": origin, "before": before, "after": after, "config": config_path}


if __name__ == "__main__":
    main()
