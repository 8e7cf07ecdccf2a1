"""Step helpers of training/train.py: model building, the supernet loss, masks, DMAO reshape, checks, eval.

`training/train.py`'s `main()` reads top to bottom as the numbered steps of a run and calls these; they log
under the `hf_dynasr.train` logger, as the script does. The `HF_DYNASR_TEST_*` hooks (`_test_hook`) are
inert unless their environment variable is set (tests/test_robustness.py uses them).
"""

from __future__ import annotations

import json
import logging
import os

import torch

from hf_dynasr.models.dynasr.configuration_dynasr import DynaSRConfig
from hf_dynasr.models.dynasr.frontend_dynasr import frame_mask
from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC
from hf_dynasr.trainer.supernet_step import layerdrop_gates, size_fractions, subnet_loss_weight
from hf_dynasr.evaluation.sizes import evaluate_sizes

logger = logging.getLogger("hf_dynasr.train")


def grads_finite(accelerator, model, selector, max_grad_norm) -> bool:
    """Clip (if max_grad_norm > 0) and say whether every gradient is finite, agreed across processes.
    Under fp16 the GradScaler already skips overflowing steps and lowers its scale: not counted here."""
    if max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if accelerator.scaler is not None or norm is None:
        return True
    ok = torch.isfinite(norm.detach().float().cpu())
    for p in selector.parameters() if selector is not None else []:
        if p.grad is not None:
            ok = ok & torch.isfinite(p.grad).all().cpu()
    return bool(accelerator.reduce(ok.float().to(accelerator.device), "min") >= 1)


# Test hooks (tests/test_robustness.py); inert unless the environment variable is set. N = the step counter
# (optimizer updates done so far); K = how many batches in a row (default 1; a skipped batch keeps the step at N).
#   HF_DYNASR_TEST_KILL_AT=step:N        SIGKILL this process right after update N (before checkpoint N)
#   HF_DYNASR_TEST_KILL_AT=checkpoint:N  SIGKILL it while checkpoint N sits complete in .tmp-step_N, not renamed
#   HF_DYNASR_TEST_NAN_AT=loss:N[:K],grad:N[:K]  the loss (or one gradient) of K batches at step N becomes NaN
_TEST_HOOKS_FIRED: dict = {}


def _test_hook(variable: str, kind: str, step: int) -> bool:
    for item in filter(None, os.environ.get(variable, "").split(",")):
        name, at, times = (item.split(":") + ["1"])[:3]
        if name == kind and int(at) == step:
            fired = _TEST_HOOKS_FIRED[item] = _TEST_HOOKS_FIRED.get(item, 0) + 1
            return fired <= int(times)
    return False


SUPERNET_KEYS = ("method", "criterion", "stage1_fraction", "loss_weight", "layerdrop_stage1", "layerdrop_stage2")


def build_model(args, tokenizer, resume_dir):
    """The model, its sizes (name -> fraction, smallest first) and the cost criterion."""
    if resume_dir:
        config = DynaSRConfig.from_json_file(os.path.join(resume_dir, "config.json"))
        model = DynaSRForCTC(config)
    elif args.init_from:
        model = DynaSRForCTC.from_pretrained(args.init_from)
    else:
        model_kwargs = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **args.model}
        model = DynaSRForCTC(DynaSRConfig(**model_kwargs))
    model.config.apply_spec_augment = args.spec_augment
    if len(tokenizer) != model.config.vocab_size:
        raise SystemExit(f"error: the tokenizer has {len(tokenizer)} labels but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    criterion = args.selection.get("criterion", "params")
    sizes, criterion = size_fractions(args.subnets, model.component_costs(), criterion) if args.subnets else ({}, criterion)
    for name, fraction in sizes.items():
        if name not in model.config.subnets:
            model.add_subnet(name, components=None, criterion=criterion, target=fraction)
    return model, sizes, criterion


def supernet_loss(model, unwrapped, batch, runs, args, selector, step, size_names):
    """Sum of the weighted CTC losses of this step's nets plus the selector's regulariser."""
    sel = args.selection
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # LayerDrop: a function of the step
    total, losses = 0.0, {}
    stage1 = any(run.soft for run in runs)
    drop_rate = sel.get("layerdrop_stage1" if stage1 else "layerdrop_stage2", 0.0 if stage1 else 0.1)
    for i, run in enumerate(runs):
        gates = run.gates
        if run.subnet is None and selector is not None:
            drop = selector.layerdrop_components(step) if stage1 else ~unwrapped.subnet_mask(size_names[0])
            gates = layerdrop_gates(drop, drop_rate, batch["input_features"].shape[0], generator)
        if i == 0:  # the first net computes the frontend output, the others start from it (shared_frontend)
            out = model(input_features=batch["input_features"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"], subnet=run.subnet, component_gates=gates, output_hidden_states=True)
            embeds, embeds_mask = shared_frontend(unwrapped, out, batch["attention_mask"])
        else:
            out = model(inputs_embeds=embeds, attention_mask=embeds_mask, labels=batch["labels"], subnet=run.subnet,
                        component_gates=gates)
        weight = 1.0 if run.subnet is None else subnet_loss_weight(out.loss, sel.get("loss_weight", "paper1"))
        total = total + weight * out.loss
        losses[f"loss/{run.subnet or 'full'}"] = float(out.loss.detach())
        if run.soft:
            reg = selector.regularizer(run.subnet, step)
            total = total + reg
            losses["loss/regularizer"] = float(reg.detach())
    return total + anchor_unused_heads(unwrapped, {r.subnet for r in runs}), losses


def shared_frontend(unwrapped, out, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The frontend output of a forward pass ([B, T', d], `hidden_states[0]`) and its frame mask [B, T'].

    Every net of a step reads the same batch, and the frontend is outside every size's mask, so all nets start
    from one frontend output: its forward and backward then run once per step instead of once per net (a
    third of a demo step went there). Same gradients; SpecAugment, if on, is drawn once per batch, as in the
    papers' RETURNN pipeline, where augmentation is part of the data and every net of the step sees the same."""
    embeds = out.hidden_states[0]
    lengths = unwrapped._get_feat_extract_output_lengths(attention_mask.long().sum(-1))
    return embeds, frame_mask(lengths, embeds.shape[1])


def anchor_unused_heads(unwrapped, used) -> torch.Tensor:
    """0 * (heads not run this step): DDP then sees every parameter used without find_unused_parameters,
    which would cost an extra graph traversal every step (ecosystem.md 5). Gradients stay exactly zero."""
    anchor = 0.0
    for name, head in unwrapped.subnet_heads.items():
        if name not in used:
            anchor = anchor + 0.0 * (head.weight.sum() + head.bias.sum())
    return anchor


def freeze_masks(unwrapped, selector, sizes, criterion, accelerator) -> None:
    """Stage boundary: the selector's nested binary masks become config.subnets (same on every rank)."""
    masks = selector.final_masks()
    for name, ids in masks.items():
        entry = unwrapped.add_subnet(name, components=ids, criterion=criterion, target=sizes[name])
        logger.info("subnet %s: %d components, %s params, %s FLOPs", name, len(ids),
                    f"{entry['num_parameters']:,}", f"{entry['flops']:,}")


def dmao_reshape(dmao, model, optimizer, accelerator, args, step):
    """Reshape the unwrapped model, carry the optimiser state over, and prepare the model again."""
    unwrapped = accelerator.unwrap_model(model)
    dmao.reduce_scores(accelerator)
    report = dmao.reshape(unwrapped, optimizer, step=step)
    if accelerator.is_main_process:
        path = os.path.join(args.output_dir, "dmao_events.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(report) + "\n")
    if accelerator.num_processes > 1:  # DDP must be rebuilt over the new parameters
        new_model = accelerator.prepare_model(unwrapped)
        # keep one entry for this model in accelerate's list (save_state writes one model_N per entry)
        models = accelerator._models
        first = next(i for i, m in enumerate(models) if accelerator.unwrap_model(m) is unwrapped)
        models[:] = [m for m in models if accelerator.unwrap_model(m) is not unwrapped]
        models.insert(first, new_model)
        model = new_model
    return model, optimizer


def check_same_choice(accelerator, runs, size_names, step) -> list:
    """All-gather this step's nets (as size indices) and fail if any process chose differently."""
    code = torch.tensor([[-1 if r.subnet is None else size_names.index(r.subnet) for r in runs] + [-2] * (3 - len(runs))])
    gathered = accelerator.gather(code).tolist()
    if any(row != gathered[0] for row in gathered):
        raise RuntimeError(f"step {step}: processes chose different subnets {gathered}; the choice must depend "
                           "only on (seed, step)")
    return gathered


def weight_checksums(accelerator, unwrapped) -> list:
    """Per process: a float64 checksum of every parameter; DDP ranks must agree exactly."""
    with torch.no_grad():
        local = sum(p.double().sum() * (i + 1) + p.double().pow(2).sum() for i, p in enumerate(unwrapped.parameters()))
    gathered = accelerator.gather(local.reshape(1)).tolist()
    if len(set(gathered)) > 1:
        logger.error("weights differ across processes: %s", gathered)
    return gathered


def run_eval(accelerator, unwrapped, eval_ds, collator, tokenizer, step, args):
    results = {}
    if accelerator.is_main_process and len(eval_ds):
        results = evaluate_sizes(unwrapped, eval_ds, collator, tokenizer)
        accelerator.log({f"eval/{name}/{k}": v for name, r in results.items() for k, v in r.items()
                         if isinstance(v, (int, float))}, step=step)
        for name, r in results.items():
            logger.info("step %d eval %-8s WER %.3f CER %.3f (%s params)", step, name, r["wer"], r["cer"],
                        f"{r['num_parameters']:,}")
    accelerator.wait_for_everyone()
    return results
