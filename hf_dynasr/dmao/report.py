"""Reports of DMAO's architecture changes: the per-block table for logs, and the before / after / difference
figure and markdown summary of a run's events (`dmao_events.jsonl`).

Units are DMAO's: FFN and cgMLP chunks, conv chunks, attention heads (each module class names its chunk-size
config field and its unit). Chunk sizes come from the run's config.json when found, else they are inferred
from the events' "sources" (units per module), else sizes are shown raw (hidden units / heads / channels).
"""

from __future__ import annotations

import glob
import json
import os
import re

from hf_dynasr.json_io import read_json
from hf_dynasr.models.dynasr.components_dynasr import MODULE_NAMES
from hf_dynasr.models.dynasr.modules_dynasr import MODULE_CLASSES


class ReportInputError(ValueError):
    """A missing or malformed events file or config (the CLI turns it into an error message)."""


def architecture_table(spec, config=None) -> str:
    """Module sizes per block, one row per module (for logs and records). With `config`, sizes are given in
    DMAO units (FFN chunks, heads, conv / cgMLP chunks); without, in hidden units / heads / channels."""
    step = {m: 1 if config is None else MODULE_CLASSES[m].chunk_size(config) for m in MODULE_NAMES}
    header = ["module"] + [f"b{b}" for b in range(len(spec))] + ["total"]
    rows = [header]
    for module in (m for m in MODULE_NAMES if spec and m in spec[0]):  # the spec's block type
        values = [block[module] // step[module] for block in spec]
        rows.append([module] + [str(v) for v in values] + [str(sum(values))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


# --- inputs ---------------------------------------------------------------------------------------------
def load_events(path: str) -> list[dict]:
    """The DMAO events of a `dmao_events.jsonl` file, in step order."""
    if not os.path.isfile(path):
        raise ReportInputError(f"no DMAO events file at {path}; was the run trained with --dmao?")
    events = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as err:
                raise ReportInputError(f"{path}:{n} is not JSON ({err})") from None
            missing = {"before", "after"} - set(event)
            if missing:
                raise ReportInputError(f"{path}:{n} lacks {sorted(missing)}; is this a dmao_events.jsonl file?")
            events.append(event)
    if not events:
        raise ReportInputError(f"{path} holds no DMAO event (the run ended before the first event?)")
    return sorted(events, key=lambda e: (e.get("step", 0), e.get("event", 0)))


def _checkpoint_step(path: str) -> int:
    match = re.search(r"(\d+)$", os.path.basename(os.path.dirname(path)))
    return int(match.group(1)) if match else -1


def find_config(run_dir: str | None, events_path: str) -> str | None:
    """The run's config.json: final/, else the latest checkpoint, else next to the events file."""
    candidates = []
    if run_dir:
        candidates.append(os.path.join(run_dir, "final", "config.json"))
        candidates += sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*", "config.json")),
                             key=_checkpoint_step, reverse=True)
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(events_path)), "config.json"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def chunk_sizes(config: dict | None, events: list[dict], modules) -> tuple[dict[str, int], str]:
    """Units per DMAO unit for each module, and where they came from ("config", "events" or "raw")."""
    sizes, origin = {}, "config"
    for module in modules:
        field = MODULE_CLASSES[module].chunk_size_field
        if field is None:  # one unit per component (heads)
            sizes[module] = 1
            continue
        value = (config or {}).get(field)
        if not value:
            value, origin = _chunk_from_sources(events, field), "events"
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
            module_class = MODULE_CLASSES.get(name)
            if module_class is not None and module_class.chunk_size_field == field and units \
                    and size % len(units) == 0:
                return size // len(units)
    return None


# --- tables ---------------------------------------------------------------------------------------------
def unit_table(spec: list[dict], modules, sizes) -> list[list[int]]:
    """[module][block] -> units."""
    return [[block.get(m, 0) // sizes[m] for block in spec] for m in modules]


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else ("0" if n == 0 else f"\u2212{-n}")


def _unit_description(module: str, sizes) -> str:
    module_class = MODULE_CLASSES[module]
    if module_class.chunk_size_field is None:
        return f"{module}: {module_class.unit_name}"
    return f"{module}: chunks of {sizes[module]} {module_class.unit_name}"


def event_changes(events) -> list[str]:
    """Per event: the parameter change and the budget's tolerance. DMAO drops units until rho x the budget is removed,
    then grows until at least as much is added, so the count grows by less than the last grown unit's cost."""
    lines = []
    for e in events:
        if "params_before" not in e or "params_after" not in e:
            continue
        change = e["params_after"] - e["params_before"]
        detail = [_signed(change)]
        if "removed_cost" in e and "added_cost" in e:
            detail.append(f"removed {e['removed_cost']:,}, added {e['added_cost']:,}")
        if "budget_tolerance" in e:
            detail.append(f"the budget is fixed up to one unit: added \u2212 removed < {e['budget_tolerance']:,}")
        lines.append(f"event {e.get('event', '?')} at step {e.get('step', '?')}: {e['params_before']:,} \u2192 "
                     f"{e['params_after']:,} parameters ({'; '.join(detail)})")
    return lines


def read_event_changes(path: str) -> list[str]:
    """`event_changes` of a run's dmao_events.jsonl; [] when the run made no event."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return event_changes([json.loads(line) for line in f if line.strip()])


def _summary_header(title: str, events, modules, sizes, origin) -> list[str]:
    lines = [f"# DMAO architecture change: {title}", ""]
    steps = ", ".join(f"step {e.get('step', '?')} (dropped {len(e.get('dropped', []))}, grew "
                      f"{len(e.get('grown', []))})" for e in events)
    lines.append(f"{len(events)} event(s): {steps}.")
    first, last = events[0], events[-1]
    if "params_before" in first and "params_after" in last:
        delta = last["params_after"] - first["params_before"]
        lines.append(f"Parameters: {first['params_before']:,} \u2192 {last['params_after']:,} ({_signed(delta)}).")
        lines += [f"- {line}." for line in event_changes(events)]
    if origin == "raw":
        lines.append("Units: raw sizes (no config with chunk sizes was found).")
    else:
        lines.append(f"Units ({'from the config' if origin == 'config' else 'inferred from the events'}): "
                     + "; ".join(_unit_description(m, sizes) for m in modules) + ".")
    return lines


def _summary_table(modules, before, after) -> list[str]:
    blocks = len(before[0])
    lines = ["| module | " + " | ".join(f"b{b}" for b in range(blocks)) + " | total |",
             "|---|" + "---:|" * (blocks + 1)]
    for i, m in enumerate(modules):
        cells = [f"{x}" if x == y else f"{x} \u2192 {y}" for x, y in zip(before[i], after[i])]
        total_b, total_a = sum(before[i]), sum(after[i])
        total = f"{total_b}" if total_b == total_a else f"{total_b} \u2192 {total_a} ({_signed(total_a - total_b)})"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {total} |")
    return lines


def _block_change(modules, before, after, b: int) -> str:
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
    return f"- **b{b}**: " + ("; ".join(p for p in parts if p) or "unchanged")


def summary_markdown(title: str, events, modules, sizes, origin, before, after) -> str:
    """Which modules grew, shrank or vanished, per block and in total, as markdown."""
    lines = _summary_header(title, events, modules, sizes, origin)
    lines += ["", *_summary_table(modules, before, after), "", "## Per block", ""]
    lines += [_block_change(modules, before, after, b) for b in range(len(before[0]))]
    lines += ["", "## Per module (all blocks)", ""]
    for i, m in enumerate(modules):
        delta = sum(after[i]) - sum(before[i])
        verb = "grew" if delta > 0 else ("shrank" if delta < 0 else "unchanged")
        lines.append(f"- {m}: {verb} {_signed(delta) if delta else ''}".rstrip()
                     + f" ({sum(before[i])} \u2192 {sum(after[i])} units)")
    return "\n".join(lines) + "\n"


# --- figure ---------------------------------------------------------------------------------------------
def _row_label(module: str, sizes, origin: str) -> str:
    if origin == "raw":
        return module
    module_class = MODULE_CLASSES[module]
    if module_class.chunk_size_field is None:
        return f"{module} ({module_class.unit_name})"
    return f"{module} (\u00d7{sizes[module]})"


def plot(path: str, title: str, modules, sizes, origin, before, after) -> None:
    """Three heatmaps (before, after, after - before) of units per module and block, written as a PNG."""
    import matplotlib  # optional dependency (the `plot` extra), slow to import: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = len(before[0])
    diff = [[y - x for x, y in zip(rb, ra)] for rb, ra in zip(before, after)]
    labels = [_row_label(m, sizes, origin) for m in modules]
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


# --- a run's report -------------------------------------------------------------------------------------
def _read_config(config_path: str | None) -> dict | None:
    if not config_path:
        return None
    if not os.path.isfile(config_path):
        raise ReportInputError(f"--config {config_path} does not exist")
    return read_json(config_path)


def architecture_report(run_dir: str | None = None, events: str | None = None, config: str | None = None,
                        output: str | None = None) -> dict:
    """Write the figure (PNG) and markdown summary of a run's DMAO events; give `run_dir` (reads
    RUN_DIR/dmao_events.jsonl) or an `events` file. "before" is the first event's spec and "after" the last
    event's, so several events show their total effect. Returns the paths, the unit tables, the unit sizes
    and where they came from, the config used and the summary text."""
    events_path = events or os.path.join(run_dir, "dmao_events.jsonl")
    event_list = load_events(events_path)
    config_path = config or find_config(run_dir, events_path)
    config_dict = _read_config(config_path)
    spec_before, spec_after = event_list[0]["before"], event_list[-1]["after"]
    modules = [m for m in MODULE_NAMES if any(m in block for block in spec_before + spec_after)]
    sizes, origin = chunk_sizes(config_dict, event_list, modules)
    before, after = unit_table(spec_before, modules, sizes), unit_table(spec_after, modules, sizes)

    output = output or (os.path.join(run_dir, "dmao_architecture.png") if run_dir
                        else os.path.splitext(events_path)[0] + "_architecture.png")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    title = os.path.basename(os.path.normpath(run_dir)) if run_dir else os.path.basename(events_path)
    block_type = (config_dict or {}).get("block_type") or ("ebranchformer" if "cgmlp" in modules else "conformer")
    plot(output, f"DMAO units per block\n{title} ({block_type}, {len(event_list)} event(s))", modules, sizes,
         origin, before, after)
    summary = summary_markdown(title, event_list, modules, sizes, origin, before, after)
    summary_path = os.path.splitext(output)[0] + ".md"
    with open(summary_path, "w", encoding="utf-8") as f:
        f.write(summary)
    return {"png": output, "markdown": summary_path, "modules": modules, "unit_sizes": sizes,
            "unit_origin": origin, "before": before, "after": after, "config": config_path, "summary": summary}
