"""The reproduction's run matrix: which runs `scripts/reproduce.py` trains, and how a derived run gets its config.

Plain runs train a config of training/configs/repro/ with a seed. Derived runs are decided at launch from
finished runs, so the pool only starts them once their inputs exist:

- `best_supernet_s1`: the best of the papers' headline supernets (lowest mean test CER over its sizes at
  seed 0), trained again with seed 1, for a seed spread.
- `best_supernet_distill_s{0,1}`: the same best method with in-place distillation
  (`selection.distillation_weight`, not in the papers; issue 21 item 3), on vs off at the same seeds.
- `best_supernet_equal_compute_s0`: the best method with its updates scaled so that its training time equals the
  sum of the three seed-0 individually trained models' times (equal total compute, not only equal updates).

Paper 2's criterion x granularity ablation (the other three OrthoSoftmax settings) stays in the matrix but is
trained only when named in `--runs`.
"""

from __future__ import annotations

import os

import yaml

from hf_dynasr.json_io import read_json, write_json

CONFIG_DIR = os.path.join("training", "configs", "repro")
BASELINES = ["baseline_small", "baseline_medium", "baseline_full"]
HEADLINE_SUPERNETS = ["stk_module", "izo_module", "ortho_flops_component"]  # paper 1 (both methods), paper 2's best
DMAO = ["dmao_full", "dmao_copy", "dmao_fresh"]  # paper 3, growth init random_split / exact copies / fresh moments
ABLATIONS = ["ortho_params_module", "ortho_params_component", "ortho_flops_module"]  # paper 2's Tab. 2 ablation
BEST = "best_supernet"
DISTILL = "best_supernet_distill"
EQUAL_COMPUTE = "best_supernet_equal_compute"
DERIVED = (BEST, DISTILL, EQUAL_COMPUTE)
DISTILLATION_WEIGHT = 1.0  # KL(p_whole || p_subnet) added to each subnet's weighted CTC loss at weight 1 (BigNAS-like)


def run_matrix() -> list[tuple[str, str, int]]:
    """(run name, config stem, seed) in launch order: long supernet runs first, so two workers stay busy; the
    derived runs sit before the baselines, which fill the slots while the derived runs wait for their inputs."""
    runs = [(f"{c}_s0", c, 0) for c in HEADLINE_SUPERNETS]
    runs += [(f"{BEST}_s1", BEST, 1), (f"{DISTILL}_s0", DISTILL, 0), (f"{DISTILL}_s1", DISTILL, 1)]
    runs += [(f"{c}_s{s}", c, s) for s in (0, 1) for c in BASELINES]
    runs += [(f"{c}_s{s}", c, s) for c in DMAO for s in (0, 1)]
    runs += [(f"{EQUAL_COMPUTE}_s0", EQUAL_COMPUTE, 0)]
    return runs + [(f"{c}_s0", c, 0) for c in ABLATIONS]


def selected_runs(runs: str) -> set[str]:
    """The run names `runs` asks for ("all": every run but paper 2's ablation); ValueError naming any unknown."""
    names = [n for n, _, _ in run_matrix()]
    if runs == "all":
        return {n for n, c, _ in run_matrix() if c not in ABLATIONS}
    wanted = set(runs.split(","))
    unknown = sorted(wanted - set(names))
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; available: {', '.join(names)}")
    return wanted


def finished(output_dir: str, name: str) -> bool:
    return os.path.exists(os.path.join(output_dir, name, "eval", "results.json"))


def best_method(output_dir: str) -> str | None:
    """The seed-0 headline supernet with the lowest mean CER over its sizes, once all of them have finished."""
    scores = {}
    for c in HEADLINE_SUPERNETS:
        if not finished(output_dir, f"{c}_s0"):
            return None
        sizes = read_json(os.path.join(output_dir, f"{c}_s0", "eval", "results.json"))["sizes"]
        scores[c] = sum(s["cer"] for s in sizes.values()) / len(sizes)
    return min(scores, key=scores.get)


def equal_compute_steps(output_dir: str, config: str) -> int | None:
    """Updates for `config` at seed 0 so that its training time matches the seed-0 baselines' total: the
    finished run's steps scaled by (sum of baseline times) / (its time). None until all four have finished."""
    runs = [f"{config}_s0", *(f"{b}_s0" for b in BASELINES)]
    if not all(finished(output_dir, r) for r in runs):
        return None
    train = [read_json(os.path.join(output_dir, r, "final", "training_results.json")) for r in runs]
    baseline_time = sum(t["wall_time_s"] for t in train[1:])
    return max(1, round(train[0]["steps"] * baseline_time / train[0]["wall_time_s"]))


def resolve(output_dir: str, name: str, config: str) -> dict | None:
    """How to launch a run: {"config": stem, "path": YAML, "train_args": [...], "variant": ...}; None while a
    derived run's inputs have not finished."""
    if config not in DERIVED:
        return {"config": config, "path": os.path.join(CONFIG_DIR, f"{config}.yaml"), "train_args": [],
                "variant": None}
    best = best_method(output_dir)
    if best is None:
        return None
    spec = {"config": best, "path": os.path.join(CONFIG_DIR, f"{best}.yaml"), "train_args": [], "variant": None}
    if config == DISTILL:  # the config file is written at launch (`write_derived_config`): resolving stays read-only
        spec["config_values"] = distillation_values(spec["path"])
        spec["path"] = os.path.join(output_dir, f"{name}.config.yaml")
        spec["variant"] = f"distillation {DISTILLATION_WEIGHT:g}"
    elif config == EQUAL_COMPUTE:
        steps = equal_compute_steps(output_dir, best)
        if steps is None:
            return None
        spec["train_args"] = ["--max_steps", str(steps)]
        spec["variant"] = "equal compute"
    return spec


def distillation_values(base: str) -> dict:
    """The options of the YAML file `base` with `selection.distillation_weight` set."""
    with open(base, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    values.setdefault("selection", {})["distillation_weight"] = DISTILLATION_WEIGHT
    return values


def write_derived_config(spec: dict) -> None:
    """Write a derived run's config (`spec["config_values"]`, from `resolve`) to `spec["path"]` (JSON is YAML)."""
    if "config_values" in spec:
        os.makedirs(os.path.dirname(spec["path"]) or ".", exist_ok=True)
        write_json(spec["path"], spec["config_values"])
