"""Pick the largest size of a checkpoint that fits a budget of parameters, FLOPs and/or latency.

    name = hf_dynasr.pick_subnet("org/asr", max_params=40e6, max_latency_ms=150)
    model = AutoModelForCTC.from_pretrained("org/asr", subnet=name)

Parameters and FLOPs come from `config.subnets` (FLOPs at the config's reference duration, batch 1);
latency from `latency_table.json` beside the checkpoint, written on the target machine by
`python scripts/evaluate_model.py --checkpoint DIR --latency-table`.
"""

from __future__ import annotations

import os

from transformers.utils.hub import cached_file

from hf_dynasr.evaluation.latency import LATENCY_TABLE_NAME
from hf_dynasr.evaluation.reports import format_count
from hf_dynasr.json_io import read_json
from hf_dynasr.models.dynasr.components_dynasr import ComponentIndex
from hf_dynasr.models.dynasr.configuration_dynasr import DynaSRConfig
from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC
from hf_dynasr.models.dynasr.subnets_dynasr import FULL

_COST_KEYS = (("max_params", "num_parameters", "parameters"), ("max_flops", "flops", "FLOPs"),
              ("max_latency_ms", "latency_ms", "latency ms"))


def _load(path_or_model, download_kwargs):
    """(config as a dict, checkpoint path or None, the config object of a loaded model or None)."""
    if hasattr(path_or_model, "config"):
        config = path_or_model.config
        path = getattr(config, "name_or_path", None) or None
        return config.to_dict(), path, config
    path = os.fspath(path_or_model)
    return read_json(cached_file(path, "config.json", **download_kwargs)), path, None


def _latency_table(path, download_kwargs) -> dict | None:
    if path is None:
        return None
    if os.path.isdir(path):
        file = os.path.join(path, LATENCY_TABLE_NAME)
        file = file if os.path.isfile(file) else None
    else:
        try:
            file = cached_file(path, LATENCY_TABLE_NAME, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **download_kwargs)
        except OSError:
            file = None
    if file is None:
        return None
    return read_json(file)


def size_table(path_or_model, *, with_latency: bool = False, **download_kwargs) -> dict[str, dict]:
    """`{name: {"num_parameters", "flops"[, "latency_ms"]}}` for every selectable size of a checkpoint
    (its named subnets, plus "full" when no subnet is the whole network)."""
    config_dict, path, config = _load(path_or_model, download_kwargs)
    subnets = {n: e for n, e in (config_dict.get("subnets") or {}).items() if e.get("components") is not None}
    if not subnets:
        raise ValueError(
            f"{path or 'this model'} has no named subnets (config.subnets is empty): it is a single model, "
            "not a supernet with sizes. Load it directly, or add sizes with model.add_subnet(...)."
        )
    if config is None:
        config = DynaSRConfig.from_dict(config_dict)
    index = ComponentIndex(config)
    sizes, covers_all = {}, False
    for name, entry in subnets.items():
        covers_all = covers_all or index.covers_all(entry["components"])
        if entry.get("num_parameters") is None or entry.get("flops") is None:
            raise ValueError(f"subnet '{name}' of {path} has no recorded num_parameters/flops; re-save it with "
                             "this hf_dynasr version (model.add_subnet fills them in)")
        sizes[name] = {"num_parameters": int(entry["num_parameters"]), "flops": int(entry["flops"])}
    if not covers_all:
        sizes[FULL] = {"num_parameters": DynaSRForCTC.count_parameters(config),
                       "flops": DynaSRForCTC.measure_flops(config)}
    if with_latency:
        table = _latency_table(path, download_kwargs)
        if table is None:
            where = path or "the checkpoint"
            raise FileNotFoundError(
                f"max_latency_ms needs {LATENCY_TABLE_NAME} beside {where}, and there is none. Measure it on the "
                f"target machine: python scripts/evaluate_model.py --checkpoint {where} --latency-table"
            )
        for name, row in table.get("sizes", {}).items():
            if name in sizes and row.get("latency_ms") is not None:
                sizes[name]["latency_ms"] = float(row["latency_ms"])
    return sizes


def pick_subnet(path_or_model, max_params: float | None = None, max_flops: float | None = None,
                max_latency_ms: float | None = None, **download_kwargs) -> str:
    """Name of the largest size (most parameters, then FLOPs) within every given budget.

    `path_or_model`: a checkpoint directory, a Hub id, or a loaded model. Latency comes from
    `latency_table.json` beside the checkpoint (missing -> FileNotFoundError telling how to create it).
    Raises ValueError when no size fits (naming the smallest size and its costs) or when the
    checkpoint has no subnets. Extra keywords (revision, token, cache_dir, ...) go to the file lookup."""
    if max_params is None and max_flops is None and max_latency_ms is None:
        raise ValueError("give at least one budget: max_params, max_flops or max_latency_ms")
    sizes = size_table(path_or_model, with_latency=max_latency_ms is not None, **download_kwargs)
    budgets = {"max_params": max_params, "max_flops": max_flops, "max_latency_ms": max_latency_ms}
    if max_latency_ms is not None:
        missing = [n for n, s in sizes.items() if "latency_ms" not in s]
        if len(missing) == len(sizes):
            raise ValueError(f"{LATENCY_TABLE_NAME} has no entry for any size ({', '.join(sizes)}); "
                             "re-run scripts/evaluate_model.py --latency-table for this checkpoint")

    def fits(cost: dict) -> bool:
        for arg, key, _ in _COST_KEYS:
            limit = budgets[arg]
            if limit is not None and (key not in cost or cost[key] > limit):
                return False
        return True

    ranked = sorted(sizes.items(), key=lambda kv: (kv[1]["num_parameters"], kv[1]["flops"]))
    fitting = [name for name, cost in ranked if fits(cost)]
    if fitting:
        return fitting[-1]
    smallest, cost = ranked[0]
    parts = []
    for arg, key, label in _COST_KEYS:
        if budgets[arg] is None:
            continue
        value = cost.get(key)
        shown = "not measured" if value is None else (f"{value:.1f}" if key == "latency_ms" else format_count(value))
        limit = f"{budgets[arg]:.1f}" if key == "latency_ms" else format_count(budgets[arg])
        parts.append(f"{label} {shown} (budget {limit})")
    raise ValueError(f"no size fits the budget; the smallest size is '{smallest}' with {', '.join(parts)}. "
                     f"Available sizes: {', '.join(n for n, _ in ranked)}")
