"""Speed and memory benchmarks; results go to benchmarks/results/<suite>.json (never timing asserts in tests).

Usage:
    python scripts/benchmark.py --suite speed        # every suite below in one run, plus the headline ratios
                                                     # (about 3-5 minutes on a 2-core CPU; one suite: under 2)
    python scripts/benchmark.py --suite encoder      # our encoder vs ParakeetForCTC at equal dimensions
    python scripts/benchmark.py --suite training     # step throughput, GFLOP/s vs matmul peak, data share
    python scripts/benchmark.py --suite supernet     # stage-1/stage-2 step vs the sum of standalone steps
    python scripts/benchmark.py --suite inference    # per-size latency and speed-up vs FLOPs ratio
    python scripts/benchmark.py --suite all
    python scripts/benchmark.py --suite onnx         # per demo size: PyTorch fp32 vs ONNX fp32 vs ONNX int8 latency
                                                     # and test-set CER (needs runs/demo/final; about 5 minutes)
    python scripts/benchmark_scale.py                # data path, memory over 1x/4x/16x corpora, paper-size
                                                     # update (about 15 minutes)

Every comparison is measured side by side in one run (same threads, same input), as a median of repeats.
A run writes OUTPUT_DIR/<suite>.json and OUTPUT_DIR/benchmarks.md (default runs/benchmarks, not tracked);
with --write_docs it rewrites the tracked benchmarks/results/<suite>.json and docs/benchmarks.md instead (commit
them with the change they measure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader
from transformers import AutoProcessor, ParakeetCTCConfig, ParakeetForCTC

from hf_dynasr import FULL, DynaSRConfig, DynaSRForCTC, build_processor
from hf_dynasr.data import DataCollatorCTCWithPadding, DurationBatchSampler, load_speech_dataset, prepare_dataset
from hf_dynasr.dmao import DMAO, DMAOConfig
from hf_dynasr.evaluation.benchmark_report import (
    add_output_options,
    benchmark_machine,
    headline_ratios,
    output_paths,
    write_docs,
)
from hf_dynasr.evaluation.inference import size_names
from hf_dynasr.evaluation.timing import matmul_peak_gflops, timeit, timeit_side_by_side
from hf_dynasr.export.onnx_export import export_onnx, quantize_int8
from hf_dynasr.export.onnx_report import ONNX_FILE, ONNX_INT8_FILE, measure_onnx
from hf_dynasr.json_io import write_json
from hf_dynasr.selection import SelectionConfig, build_selector
from hf_dynasr.trainer.dry_run import FlopCount
from hf_dynasr.trainer.supernet_step import NetRun, supernet_loss

SCALE_SUITES = ("paper_step", "data_path", "memory_scaling")  # scripts/benchmark_scale.py (their docs sections too)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")  # the tracked results (--write_docs)
FRAMES_10S = 1001  # ParakeetFeatureExtractor frames for 10 s at 16 kHz

CONFIGS = {
    # ~10M parameters, and the papers' LibriSpeech default (d=512, 12 blocks)
    "10M": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1024,
                conv_kernel_size=31),
    "paper_d512": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048,
                       conv_kernel_size=31),
}


def parakeet_twin(cfg: dict, frontend_channels: int = 64):
    """ParakeetForCTC with our hidden size, layers, heads, FFN size and 4x subsampling."""
    enc = dict(hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
               num_attention_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
               conv_kernel_size=cfg["conv_kernel_size"], subsampling_factor=4,
               subsampling_conv_channels=frontend_channels, num_mel_bins=80, dropout=0.0, layerdrop=0.0,
               activation_dropout=0.0, attention_dropout=0.0)
    return ParakeetForCTC(ParakeetCTCConfig(vocab_size=30, pad_token_id=0, encoder_config=enc)).eval()


def suite_encoder(repeats: int) -> dict:
    """Forward on 10 s of features at batch 1 and 8: ours (both frontends, relative-position attention like
    Parakeet's) vs ParakeetForCTC; `dynasr_conv2d4x_nopos` is ours without positions in attention (the earlier,
    unequal comparison, kept as a labelled row)."""
    out = {}
    for name, cfg in CONFIGS.items():
        rows = {}
        models = {
            "dynasr_conv2d4x": DynaSRForCTC(DynaSRConfig(**cfg, frontend_type="conv2d4x", frontend_channels=64,
                                                         position_encoding="relative", hidden_dropout=0,
                                                         activation_dropout=0, attention_dropout=0)).eval(),
            "dynasr_conv2d4x_nopos": DynaSRForCTC(DynaSRConfig(**cfg, frontend_type="conv2d4x", frontend_channels=64,
                                                               position_encoding="none", hidden_dropout=0,
                                                               activation_dropout=0, attention_dropout=0)).eval(),
            "dynasr_vgg4x": DynaSRForCTC(DynaSRConfig(**cfg, frontend_type="vgg4x", position_encoding="relative",
                                                      hidden_dropout=0, activation_dropout=0,
                                                      attention_dropout=0)).eval(),
            "parakeet": parakeet_twin(cfg),
        }
        for batch in (1, 8):
            feats = torch.randn(batch, FRAMES_10S, 80)
            mask = torch.ones(batch, FRAMES_10S, dtype=torch.long)
            with torch.inference_mode():
                ms = timeit_side_by_side({label: (lambda m=model: m(input_features=feats, attention_mask=mask))
                                          for label, model in models.items()}, repeats)
            rows.update({f"{label}_b{batch}_ms": round(v, 1) for label, v in ms.items()})
        for label, model in models.items():
            rows[f"{label}_params"] = sum(p.numel() for p in model.parameters())
        for batch in (1, 8):
            for ours in ("conv2d4x", "conv2d4x_nopos"):
                rows[f"ratio_{ours}_vs_parakeet_b{batch}"] = round(
                    rows[f"dynasr_{ours}_b{batch}_ms"] / rows[f"parakeet_b{batch}_ms"], 3)
        out[name] = rows
        print(name, json.dumps(rows), flush=True)
    return out


DEMO_MODEL = dict(hidden_size=144, num_hidden_layers=4, num_attention_heads=4, intermediate_size=576,
                  conv_kernel_size=15, frontend_type="conv2d4x", frontend_channels=64, hidden_dropout=0.0,
                  activation_dropout=0.0, attention_dropout=0.0)


def _batch(seconds: float = 25.0, utt_seconds: float = 2.5, labels: int = 30):
    """A padded training batch like the demo's (25 s of audio in 2.5 s utterances)."""
    b, t = int(seconds // utt_seconds), int(utt_seconds * 100)
    return (torch.randn(b, t, 80), torch.ones(b, t, dtype=torch.long), torch.randint(1, 30, (b, labels)))


def _train_step(model, opt, feats, mask, labels, **kw):
    def step():
        out = model(input_features=feats, attention_mask=mask, labels=labels, **kw)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _demo_supernet(granularity: str = "component"):
    model = DynaSRForCTC(DynaSRConfig(vocab_size=30, granularity=granularity, **DEMO_MODEL)).train()
    index = model.component_index
    costs = model.component_costs()
    order = sorted(range(len(index)), key=lambda i: costs.flops[i])  # any nested pair of masks will do
    model.add_subnet("small", components=order[len(order) // 2:])
    model.add_subnet("medium", components=order[len(order) // 4:])
    return model


def suite_training(repeats: int) -> dict:
    """Audio seconds per wall second of a demo training step, achieved GFLOP/s vs the matmul peak, and the
    share of data loading (collating prepared features) in a step."""
    model = DynaSRForCTC(DynaSRConfig(vocab_size=30, **DEMO_MODEL)).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    feats, mask, labels = _batch()
    step = _train_step(model, opt, feats, mask, labels)
    ms = timeit(step, repeats, warmup=2)
    with FlopCount() as counter:  # FlopCounterMode would count the depthwise convolutions' backward x channels
        out = model(input_features=feats, attention_mask=mask, labels=labels)
        out.loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.flops
    peak = matmul_peak_gflops()
    result = {"step_ms": round(ms, 1), "audio_s_per_s": round(25.0 / (ms / 1000), 1),
              "train_gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(flops / 1e9 / (ms / 1000), 1),
              "matmul_peak_gflops": round(peak, 1)}
    result["share_of_peak"] = round(result["achieved_gflops"] / peak, 3)
    corpus = os.path.join(os.path.dirname(RESULTS), "..", "data", "demo_corpus")
    if os.path.isdir(corpus):
        proc = build_processor()
        ds, _ = prepare_dataset(load_speech_dataset(f"audiofolder:{corpus}", split="dev"), proc.feature_extractor,
                                proc.tokenizer)
        loader = DataLoader(ds.with_format("numpy"), batch_sampler=DurationBatchSampler.from_dataset(ds, 25.0),
                            collate_fn=DataCollatorCTCWithPadding(proc.feature_extractor))
        start = time.perf_counter()
        batches = sum(1 for _ in loader)
        load_ms = (time.perf_counter() - start) * 1000 / max(1, batches)
        result.update(data_ms_per_batch=round(load_ms, 2), data_share_of_step=round(load_ms / (load_ms + ms), 4))
    print("training", json.dumps(result), flush=True)
    return result


def suite_supernet(repeats: int) -> dict:
    """A stage-1 step (full + soft-gated subnet) and a stage-2 step (full + smallest + middle, hard masks)
    against the sum of standalone steps of the same nets (extracted models, same batch); selector share."""
    model = _demo_supernet()
    feats, mask, labels = _batch()
    params = list(model.parameters())
    selector = build_selector("ortho_softmax", model.component_costs(), {"small": 0.5, "medium": 0.75},
                              criterion="flops", total_steps=10_000, index=model.component_index)
    opt = torch.optim.AdamW(params + list(selector.parameters()), 1e-3)

    # the training script's own loss (supernet_loss: one frontend pass shared by the step's nets), no LayerDrop
    selection = SelectionConfig(loss_weight="paper1", layerdrop_stage1=0.0, layerdrop_stage2=0.0)
    batch = {"input_features": feats, "attention_mask": mask, "labels": labels}
    sizes = ["small", "medium"]

    def stage1():
        step = int(selector.step_count)
        runs = [NetRun(FULL), NetRun("small", selector.gates("small", step), soft=True)]
        supernet_loss(model, model, batch, runs, step, sizes=sizes, selection=selection, seed=0,
                      selector=selector)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            selector.end_of_step(step)

    def stage2():
        runs = [NetRun(FULL), NetRun("small"), NetRun("medium")]
        supernet_loss(model, model, batch, runs, 0, sizes=sizes, selection=selection, seed=0)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def selector_work():
        step = int(selector.step_count)
        (selector.gates("small", step).sum() + selector.regularizer("small", step)).backward()
        selector.zero_grad(set_to_none=True)

    steps = _standalone_steps(model, feats, mask, labels)
    ms = timeit_side_by_side({**steps, "stage1": stage1, "stage2": stage2}, repeats, warmup=2)
    standalone = {name: ms[name] for name in ("full", "small", "medium")}
    s1, s2 = ms["stage1"], ms["stage2"]
    sel = timeit(selector_work, repeats, warmup=1)
    # stage 1 runs the full net twice (once soft-gated: every component computed): its reference is 2 x full.
    # Both stages compute the frontend once per step, the standalone steps once each: ratios below 1 come from that
    result = {"standalone_ms": {k: round(v, 1) for k, v in standalone.items()},
              "stage1_ms": round(s1, 1), "stage2_ms": round(s2, 1),
              "stage1_ratio_vs_2x_full": round(s1 / (2 * standalone["full"]), 3),
              "stage2_ratio_vs_sum": round(s2 / sum(standalone.values()), 3),
              "selector_ms": round(sel, 2), "selector_share_of_stage1": round(sel / s1, 4)}
    print("supernet", json.dumps(result), flush=True)
    return result


def _standalone_steps(model, feats, mask, labels) -> dict:
    """A training step of each net of the supernet step as a model of its own: the full net (a copy of the
    supernet's weights) and the extracted sizes, each with its own optimizer."""
    steps = {}
    for name in ("full", "small", "medium"):
        net = model.extract_subnet(name) if name != "full" else DynaSRForCTC(model.config).train()
        if name == "full":
            net.load_state_dict(model.state_dict(), strict=False)
        steps[name] = _train_step(net, torch.optim.AdamW(net.parameters(), 1e-3), feats, mask, labels)
    return steps


def suite_inference(repeats: int) -> dict:
    """Per size: latency at batch 1 and 8 on 10 s, speed-up over the full size next to the FLOPs ratio;
    the masked supernet vs the extracted model. For component-wise subnets (thinner modules) and module-wise
    ones (whole modules dropped), which differ in how much fixed per-op overhead a small size keeps."""
    result = {}
    for granularity in ("component", "module"):
        model = _demo_supernet(granularity).eval()
        rows = {}
        nets = {"full": model, **{name: model.extract_subnet(name).eval() for name in ("medium", "small")}}
        for batch in (1, 8):
            feats = torch.randn(batch, FRAMES_10S, 80)
            fns = {name: (lambda n=net: n(input_features=feats)) for name, net in nets.items()}
            fns.update({f"{name}_masked": (lambda n=name: model(input_features=feats, subnet=n))
                        for name in ("medium", "small")})
            with torch.inference_mode():
                ms = timeit_side_by_side(fns, repeats)
            for name in nets:
                rows.setdefault(name, {})[f"b{batch}_ms"] = round(ms[name], 1)
                if name != "full":
                    rows[name][f"b{batch}_masked_ms"] = round(ms[f"{name}_masked"], 1)
        total = model.component_costs().total_flops
        for name in ("medium", "small"):
            flops_ratio = total / model.config.subnets[name]["flops"]
            for batch in (1, 8):
                speedup = rows["full"][f"b{batch}_ms"] / rows[name][f"b{batch}_ms"]
                rows[name][f"b{batch}_speedup"] = round(speedup, 3)
                rows[name][f"b{batch}_speedup_over_flops_ratio"] = round(speedup / flops_ratio, 3)
            rows[name]["flops_ratio"] = round(flops_ratio, 3)
        result[granularity] = rows
    print("inference", json.dumps(result), flush=True)
    return result


def suite_loading(repeats: int) -> dict:
    """Peak RSS of from_pretrained(subnet=smallest) vs the whole supernet (paper d=512 model), each in a fresh
    process, against the bare interpreter with the libraries imported and the size's weights; and after one
    forward (weights resident), the smallest size against the supernet."""
    model = DynaSRForCTC(DynaSRConfig(**CONFIGS["paper_d512"], frontend_type="conv2d4x"))
    n = len(model.component_index)
    entry = model.add_subnet("small", components=list(range(0, n, 3)))
    rows = {"supernet_params": model.num_parameters(), "small_params": entry["num_parameters"]}
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report this (large) parent process
    code = "\n".join([
        "import sys, torch, hf_dynasr",
        "from transformers import AutoModelForCTC",
        "def status():",
        "    rows = (line.split() for line in open('/proc/self/status'))",
        "    return {r[0].rstrip(':'): int(r[1]) for r in rows if len(r) == 3 and r[2] == 'kB'}",
        "kw = {} if sys.argv[2] == 'none' else {'subnet': sys.argv[2]}",
        "m = AutoModelForCTC.from_pretrained(sys.argv[1], **kw) if sys.argv[2] != 'bare' else None",
        "loaded = status()",
        # then one forward, which makes the weights resident: a lazily mapped checkpoint costs little until used
        "with torch.inference_mode():",
        "    _ = m(input_features=torch.randn(1, 100, 80)) if m is not None else None",
        "print(loaded['VmHWM'], loaded['RssAnon'], status()['VmHWM'])",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model
        for label, arg in (("bare", "bare"), ("small", "small"), ("supernet", "none")):
            out = subprocess.run([sys.executable, "-c", code, tmp, arg], capture_output=True, text=True, check=True)
            hwm, anon, hwm_forward = map(int, out.stdout.strip().splitlines()[-1].split())
            rows[f"{label}_peak_rss_after_forward_mb"] = round(hwm_forward / 1024, 1)
            rows[f"{label}_peak_rss_mb"] = round(hwm / 1024, 1)
            # anonymous memory after loading (without the mapped safetensors pages that slicing touched)
            rows[f"{label}_rss_anon_mb"] = round(anon / 1024, 1)
    small_mb = rows["small_params"] * 4 / 2**20
    rows["small_weights_mb"] = round(small_mb, 1)
    rows["small_load_ratio"] = round((rows["small_peak_rss_mb"] - rows["bare_peak_rss_mb"]) / small_mb, 3)
    rows["small_anon_ratio"] = round((rows["small_rss_anon_mb"] - rows["bare_rss_anon_mb"]) / small_mb, 3)
    rows["small_vs_supernet_params"] = round(rows["small_params"] / rows["supernet_params"], 3)
    bare = rows["bare_peak_rss_after_forward_mb"]
    rows["small_vs_supernet_peak"] = round((rows["small_peak_rss_after_forward_mb"] - bare)
                                           / (rows["supernet_peak_rss_after_forward_mb"] - bare), 3)
    print("loading", json.dumps(rows), flush=True)
    return rows


def suite_dmao(repeats: int) -> dict:
    """DMAO's share of training time on the demo schedule: score updates every `update_every` steps plus one
    reshape event, against the plain training steps of the same run length."""
    steps = 60
    model = DynaSRForCTC(DynaSRConfig(vocab_size=30, conv_granularity="chunk", **DEMO_MODEL)).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    feats, mask, labels = _batch()
    dmao = DMAO(model, DMAOConfig(events=[0.5], update_every=10), total_steps=steps)
    train_ms = dmao_ms = 0.0
    for step in range(steps):
        start = time.perf_counter()
        out = model(input_features=feats, attention_mask=mask, labels=labels)
        out.loss.backward()
        mid = time.perf_counter()
        dmao.observe(model, step)
        after_observe = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        end = time.perf_counter()
        extra = 0.0
        if dmao.reshape_due(step + 1):
            t0 = time.perf_counter()
            dmao.reshape(model, opt, step=step + 1)
            extra = time.perf_counter() - t0
        train_ms += (mid - start + end - after_observe) * 1000
        dmao_ms += (after_observe - mid + extra) * 1000
    result = {"steps": steps, "train_ms": round(train_ms, 1), "dmao_ms": round(dmao_ms, 1),
              "dmao_share": round(dmao_ms / (train_ms + dmao_ms), 4)}
    print("dmao", json.dumps(result), flush=True)
    return result


def suite_onnx(repeats: int) -> dict:
    """Per size of the demo checkpoint: PyTorch fp32, ONNX fp32 and ONNX int8 latency at batch 1 on 10 s of audio
    (timed side by side) and WER/CER of all three on the demo test set. Needs runs/demo/final and data/demo_corpus
    (`bash scripts/demo.sh`)."""
    root = os.path.dirname(os.path.dirname(RESULTS))
    ckpt, corpus = os.path.join(root, "runs", "demo", "final"), os.path.join(root, "data", "demo_corpus")
    if not (os.path.isdir(ckpt) and os.path.isdir(os.path.join(corpus, "test"))):
        raise SystemExit(f"the onnx suite measures the demo checkpoint: {ckpt} and {corpus}/test are needed; run "
                         "`bash scripts/demo.sh` first")
    model = DynaSRForCTC.from_pretrained(ckpt, subnet=None).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    test = load_speech_dataset(f"audiofolder:{corpus}", split="test")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in size_names(model):
            size, folder = model.extract_subnet(name).eval(), os.path.join(tmp, name)
            os.makedirs(folder)
            quantize_int8(export_onnx(size, os.path.join(folder, ONNX_FILE)), os.path.join(folder, ONNX_INT8_FILE))
            report = measure_onnx(size, folder, processor, dataset=test, dataset_name="data/demo_corpus",
                                  split="test", repeats=repeats)
            ms, cer = report["latency_ms"], report["eval"]["cer"]
            out[name] = {
                **{f"{k}_ms": round(v, 2) for k, v in ms.items()},
                "onnx_fp32_speedup_vs_pytorch_fp32": round(ms["pytorch_fp32"] / ms["onnx_fp32"], 3),
                "onnx_int8_speedup_vs_pytorch_fp32": round(ms["pytorch_fp32"] / ms["onnx_int8"], 3),
                **{f"cer_{k}_pct": round(100 * v, 2) for k, v in cer.items()},
                "int8_cer_change_points": round(100 * (cer["onnx_int8"] - cer["pytorch_fp32"]), 2),
                "int8_file_vs_fp32_file": round(os.path.getsize(os.path.join(folder, ONNX_INT8_FILE))
                                                / os.path.getsize(os.path.join(folder, ONNX_FILE)), 3),
            }
            out[name]["goal_met"] = (out[name]["onnx_int8_speedup_vs_pytorch_fp32"] >= 1.5
                                     and out[name]["int8_cer_change_points"] <= 1.0)
            out["num_test_utterances"] = report["eval"]["num_utterances"]
            print("onnx", name, json.dumps(out[name]), flush=True)
    return out


ONNX_SUITES = {"onnx": suite_onnx}  # not part of `speed`: it needs the demo checkpoint and corpus


def write(suite: str, data: dict, results: str) -> str:
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, f"{suite}.json")
    machine = benchmark_machine(REPO)
    write_json(path, {"suite": suite, "machine": machine, "results": data})
    return path


SUITES = {"encoder": suite_encoder, "training": suite_training, "supernet": suite_supernet,
          "inference": suite_inference, "loading": suite_loading, "dmao": suite_dmao}


def suite_speed(repeats: int, results: str) -> dict:
    """Every suite in this one process (same threads, same machine state), then the headline ratios."""
    for name, fn in SUITES.items():
        print(f"wrote {write(name, fn(repeats), results)}", flush=True)
    return headline_ratios(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="speed", help=f"speed (all of them), or one of "
                        f"{sorted([*SUITES, *ONNX_SUITES])}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    add_output_options(parser)
    args = parser.parse_args()
    results, page = output_paths(args, RESULTS)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = ["speed"] if args.suite == "all" else [args.suite]
    runnable = dict(SUITES, speed=suite_speed, **ONNX_SUITES)
    for name in names:
        if name not in runnable:
            raise SystemExit(f"unknown suite {name!r}; choose from {sorted(runnable)} or all (= speed)")
        data = suite_speed(args.repeats, results) if name == "speed" else runnable[name](args.repeats)
        print(f"wrote {write(name, data, results)}")
    print(f"wrote {write_docs(results, [*SUITES, *SCALE_SUITES, *ONNX_SUITES], page)}")


if __name__ == "__main__":
    main()
