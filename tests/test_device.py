"""Every tensor the model, the selectors, the supernet step, DMAO and evaluation create lives on the device of the
weights it meets, proven on CPU-only torch.

Two tools, as neither does everything on this torch (2.13, CPU build):
- FakeTensorMode raises on any mix of devices, but its fake `cuda` tensors abort or raise in a CPU build as soon
  as Python indexes them (`x[:, None]`) or autograd meets them (no CUDA device guard), so the weights go on a
  fake `meta` device instead, which stands for the accelerator: a CPU tensor meeting them raises the same
  FakeTensorDeviceMismatchError. Fake tensors have no data (no CTC loss, no `.tolist()`): this part runs the
  forward and backward of every size (whole network, masked, soft-gated, extracted), and shows that the
  data-dependent input checks stay out of fake runs.
- VirtualCuda (tests/virtual_cuda.py) keeps the data on the CPU, tracks what would be on the GPU and raises on a
  mix like CUDA does: it runs what reads data, a stage-1 and a stage-2 supernet step per selector with
  LayerDrop, a DMAO reshape with its optimizer state, and an evaluation of every size.
"""

import pytest
import torch
from conftest import make_model
from datasets import Dataset
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode
from virtual_cuda import DeviceMixError, VirtualCuda

from hf_dynasr.data import DataCollatorCTCWithPadding
from hf_dynasr.data.processing import build_processor
from hf_dynasr.dmao import DMAO, DMAOConfig
from hf_dynasr.evaluation.inference import transcribe_batch
from hf_dynasr.evaluation.sizes import evaluate_sizes
from hf_dynasr.models.dynasr import FULL
from hf_dynasr.selection import METHODS, SelectionConfig, build_selector
from hf_dynasr.trainer.supernet_step import freeze_masks, plan_step, supernet_loss

SIZES = {"small": 0.45, "mid": 0.7}
ACCELERATOR = "meta"  # the fake device that stands for the GPU (see the module doc)


def nested_sizes(model) -> dict[str, list[int]]:
    n = len(model.component_index)
    return {"small": list(range(0, n, 3)), "mid": list(range(0, n, 3)) + [1, 4, 7]}


def fake_weights(module: nn.Module, device: str) -> nn.Module:
    """Inside a FakeTensorMode: every parameter and buffer replaced by a fake tensor of its shape on `device`."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                     requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    return module


def fake_mode() -> FakeTensorMode:
    # non-fake inputs are converted, keeping their device, so a CPU tensor still fails the device check; this is
    # needed because `torch.tensor(..., device="meta")` is a real meta tensor even inside the mode
    return FakeTensorMode(allow_non_fake_inputs=True)


# --- FakeTensorMode: the forward and backward of every size -------------------------------------------------
@pytest.mark.parametrize("block_type", ["conformer", "ebranchformer"])
def test_every_size_runs_on_fake_accelerator_weights(block_type):
    model = make_model(block_type=block_type)
    for name, ids in nested_sizes(model).items():
        model.add_subnet(name, components=ids)
    n = len(model.component_index)
    with fake_mode():
        fake_weights(model, ACCELERATOR)
        x = torch.zeros(2, 40, 80, device=ACCELERATOR)
        mask = torch.ones(2, 40, dtype=torch.long, device=ACCELERATOR)
        gates = torch.full((2, n), 0.5, device=ACCELERATOR, requires_grad=True)
        outputs = {size: model(x, attention_mask=mask, subnet=size).logits for size in (FULL, "small", "mid")}
        outputs["gated"] = model(x, attention_mask=mask, subnet="small", component_gates=gates).logits
        small = model.extract_subnet("small")
        outputs["extracted"] = small(x, attention_mask=mask).logits
        assert {p.device.type for p in small.parameters()} == {ACCELERATOR}
        for size, logits in outputs.items():
            assert logits.device.type == ACCELERATOR and logits.shape == (2, 10, model.config.vocab_size), size
        sum(logits.sum() for logits in outputs.values()).backward()
        assert gates.grad.device.type == ACCELERATOR
        assert model.dynasr.layers[0].ffn1.linear_in.weight.grad.device.type == ACCELERATOR
        # and the check bites: gates left on the CPU meet the weights
        with pytest.raises(FakeTensorDeviceMismatchError):
            model(x, attention_mask=mask, subnet="small", component_gates=torch.full((n,), 0.5))


def test_input_checks_skip_fake_tensors_and_still_raise_for_real_ones():
    model = make_model()
    short = torch.ones(1, 3, dtype=torch.long)  # 3 frames give no output frame
    with pytest.raises(ValueError, match="at least 4 valid frames"):
        model(torch.zeros(1, 3, 80), attention_mask=short)
    with pytest.raises(ValueError, match="pad labels with -100"):
        model(torch.zeros(1, 40, 80), labels=torch.tensor([[3, model.config.pad_token_id]]))
    with fake_mode():
        fake_weights(model, "cpu")  # fake CPU tensors: only the fake check keeps the data out of reach
        out = model(torch.zeros(1, 8, 80), attention_mask=torch.ones(1, 8, dtype=torch.long))
        assert out.logits.shape == (1, 2, model.config.vocab_size)


# --- VirtualCuda: supernet steps, DMAO, evaluation --------------------------------------------------
def cuda_batch(vocab_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 120, dtype=torch.long)
    mask[1, 90:] = 0
    batch = {"input_features": torch.randn(2, 120, 80, generator=g), "attention_mask": mask,
             "labels": torch.tensor([[5, 6, 7, -100], [8, 9, 10, 11]]) % vocab_size}
    return {k: v.to("cuda") for k, v in batch.items()}


def two_steps(vc, method: str, *, move_selector: bool = True):
    """A stage-1 and a stage-2 supernet step (LayerDrop on) with everything moved as the trainer moves it."""
    model = make_model().train()
    selector = build_selector(method, model.component_costs(), SIZES, criterion="params", total_steps=2,
                              stage1_fraction=0.5, index=model.component_index)
    for name, fraction in SIZES.items():
        model.add_subnet(name, components=None, criterion="params", target=fraction)
    model.to("cuda")
    if move_selector:
        selector.to("cuda")
    optimizer = torch.optim.AdamW([*model.parameters(), *selector.parameters()], lr=1e-3)
    selection = SelectionConfig(layerdrop_stage1=0.5, layerdrop_stage2=0.5)
    batch, sizes, losses = cuda_batch(model.config.vocab_size), list(SIZES), []
    for step in range(2):
        if step == selector.stage1_steps():
            freeze_masks(model, selector, SIZES, "params")
        runs = plan_step(step, sizes, stage1_steps=selector.stage1_steps(), seed=0, selector=selector)
        assert any(r.soft for r in runs) == (step == 0)
        loss, _ = supernet_loss(model, model, batch, runs, step, sizes=sizes, selection=selection, seed=0,
                                selector=selector)
        loss.backward()
        assert loss.device.type == "cuda" and torch.isfinite(loss).item()
        if step == 0:
            assert selector.scores.grad is not None and vc.is_cuda(selector.scores.grad)
        optimizer.step()
        optimizer.zero_grad()
        if step < selector.stage1_steps():
            selector.end_of_step(step)
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("method", METHODS)
def test_stage1_and_stage2_steps_stay_on_the_device(method):
    with VirtualCuda() as vc:
        model, losses = two_steps(vc, method)
        assert all(vc.is_cuda(p) for p in model.parameters())
        assert len(losses) == 2


def test_a_selector_left_on_the_cpu_is_caught():
    with VirtualCuda() as vc, pytest.raises(DeviceMixError, match="same device"):
        two_steps(vc, "ortho_softmax", move_selector=False)


def test_dmao_reshape_stays_on_the_device():
    with VirtualCuda() as vc:
        model = make_model().train().to("cuda")
        dmao = DMAO(model, DMAOConfig(update_every=1, rho=0.2, init="function_preserving", noise_std=0.01), 10)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = cuda_batch(model.config.vocab_size)
        model(**batch).loss.backward()
        dmao.observe(model, 0)
        optimizer.step()
        optimizer.zero_grad()
        report = dmao.reshape(model, optimizer, step=1)
        assert report["dropped"] and report["grown"]
        assert all(vc.is_cuda(p) for p in model.parameters())
        assert all(vc.is_cuda(v) for state in optimizer.state.values() for v in state.values() if v.dim())
        model(**batch).loss.backward()  # the reshaped model trains on
        optimizer.step()


def test_evaluation_moves_its_batches_to_the_model():
    processor = build_processor()
    model = make_model(vocab_size=len(processor.tokenizer), pad_token_id=processor.tokenizer.pad_token_id)
    for name, ids in nested_sizes(model).items():
        model.add_subnet(name, components=ids)
    g = torch.Generator().manual_seed(0)
    labels = [processor.tokenizer("hello world")["input_ids"], processor.tokenizer("a cat")["input_ids"]]
    eval_ds = Dataset.from_dict({"input_features": [torch.randn(t, 80, generator=g).numpy() for t in (100, 60)],
                                 "labels": labels})
    with VirtualCuda() as vc:
        model.to("cuda")
        results = evaluate_sizes(model, eval_ds, DataCollatorCTCWithPadding(processor.feature_extractor),
                                 processor.tokenizer)
        assert set(results) == {FULL, "small", "mid"} and all(r["utterances"] == 2 for r in results.values())
        texts = transcribe_batch(model, processor.feature_extractor, processor.tokenizer,
                                 [torch.zeros(8000).numpy()], subnet="small")
        assert len(texts) == 1 and all(vc.is_cuda(p) for p in model.parameters())
