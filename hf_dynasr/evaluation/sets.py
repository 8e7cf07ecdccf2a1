"""Evaluate one checkpoint on several test sets and report them side by side (``evaluate_model.py --data A B C``):
the in-domain test split next to held-out ones (another TTS engine, a telephone channel; see
``hf_dynasr.data.heldout``), one table with a column per set and a row per size."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

__all__ = ["evaluate_sets", "groups_markdown", "set_label", "sets_markdown"]


def set_label(spec: str) -> str:
    """A short column name for a dataset spec: the last folder of a local corpus, else the spec."""
    name = spec.split(":", 1)[-1].rstrip("/")
    return os.path.basename(name) or spec


def evaluate_sets(evaluate: Callable[[str, bool], dict], specs: list[str]) -> dict:
    """{"sets": {label: results}} with ``evaluate(spec, first)`` the results of one set (``first``: the first
    set, where latency is measured once). Labels are made unique with the set's position when two collide."""
    labels = [set_label(spec) for spec in specs]
    labels = [f"{label} ({i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]
    return {"sets": {label: {**evaluate(spec, i == 0), "spec": spec}
                     for i, (label, spec) in enumerate(zip(labels, specs))}}


def sets_markdown(results: Mapping, metric: str = "cer") -> str:
    """A markdown table: one row per size, one column per set, the ``metric`` (cer or wer) in %, and each
    set's ratio to the first set's (the in-domain one)."""
    sets = results["sets"]
    labels = list(sets)
    sizes = list(next(iter(sets.values()))["sizes"]) if sets else []
    head = "| size | " + " | ".join(f"{label} {metric.upper()} %" for label in labels)
    head += "".join(f" | {label} / {labels[0]}" for label in labels[1:]) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(labels) - 1)]
    for size in sizes:
        values = [sets[label]["sizes"].get(size, {}).get(metric) for label in labels]
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in values]
        ratios = ["-" if v is None or not values[0] else f"{v / values[0]:.2f}x" for v in values[1:]]
        lines.append(f"| {size} | " + " | ".join(cells + ratios) + " |")
    notes = [f"- {label}: `{s['spec']}` ({s.get('split')}), {s.get('num_utterances', 0)} utterances"
             for label, s in sets.items()]
    return "\n".join(lines + [""] + notes) + "\n"


def groups_markdown(results: Mapping, metric: str = "cer", title: str = "") -> str:
    """A markdown table of one set's results scored per group (``evaluate_checkpoint(group_by=...)``): one row per
    group value with its utterance count, one column per size; empty when the results have no groups."""
    sizes = results.get("sizes", {})
    names = [name for name, size in sizes.items() if "groups" in size]
    if not names:
        return ""
    values = list(sizes[names[0]]["groups"])
    head = "| group | utterances | " + " | ".join(f"{n} {metric.upper()} %" for n in names) + " |"
    lines = ([title, ""] if title else []) + [head, "|---|---:|" + "---:|" * len(names)]
    for value in values:
        cells = [f"{100 * sizes[n]['groups'][value][metric]:.1f}" for n in names]
        count = sizes[names[0]]["groups"][value]["num_utterances"]
        lines.append(f"| {value} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
