"""In-place distillation (selection.distillation_weight; once-for-all / BigNAS, not in the papers): in stage 2 the
subnets also learn the whole network's detached frame posteriors of the same step, on a real tiny supernet."""

import pytest
import torch
from conftest import make_model

from hf_dynasr import FULL
from hf_dynasr.models.dynasr.frontend_dynasr import frame_mask, subsampled_lengths
from hf_dynasr.selection import SelectionConfig, build_selector
from hf_dynasr.trainer.supernet_step import NetRun, distillation_loss, supernet_loss

LABELS = torch.tensor([[5, 6, 7, -100], [8, 9, 10, 11]])


def tiny_supernet():
    model = make_model().train()  # no dropout (conftest.TINY): the same forward every call
    n = len(model.component_index)
    small = list(range(0, n, 2))
    model.add_subnet("small", components=small)
    return model, small


def step_grads(model, features, runs, weight):
    x, mask = features
    batch = {"input_features": x, "attention_mask": mask, "labels": LABELS}
    model.zero_grad()
    loss, losses = supernet_loss(model, model, batch, runs, 0, sizes=["small"], seed=0,
                                 selection=SelectionConfig(loss_weight="paper1", distillation_weight=weight))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, losses


def test_distillation_loss_is_the_frame_kl_on_valid_frames_and_detaches_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 6, 30, generator=g, requires_grad=True)
    student = torch.randn(2, 6, 30, generator=g, requires_grad=True)
    frames = torch.ones(2, 6, dtype=torch.bool)
    frames[1, 4:] = False
    assert float(distillation_loss(teacher.detach(), teacher, frames)) == pytest.approx(0.0, abs=1e-6)
    loss = distillation_loss(student, teacher, frames)
    p, log_p, log_q = teacher.softmax(-1), teacher.log_softmax(-1), student.log_softmax(-1)
    expected = (p * (log_p - log_q)).sum(-1)[frames].mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert student.grad[1, 4:].abs().max() == 0  # padded frames add nothing
    moved = student.detach().clone()
    moved[1, 4:] += 5.0
    torch.testing.assert_close(distillation_loss(moved, teacher, frames), loss.detach())


def test_distillation_gradient_reaches_the_subnet_only_through_its_own_forward(features):
    """The distillation term's gradient (weight 1 minus weight 0) equals that of KL(whole || small) computed with
    the whole network's logits as constants: the components only the whole network uses and the whole
    network's CTC head get none of it; the subnet's own head and kept components do."""
    model, small = tiny_supernet()
    runs = [NetRun(FULL), NetRun("small")]
    with_kd, losses = step_grads(model, features, runs, 1.0)
    without, plain_losses = step_grads(model, features, runs, 0.0)
    assert "distill/small" in losses and losses["distill/small"] > 0 and "distill/small" not in plain_losses
    assert losses["loss/small"] == plain_losses["loss/small"]
    term = {n: with_kd[n] - without.get(n, torch.zeros_like(with_kd[n])) for n in with_kd}

    x, mask = features
    model.zero_grad()
    with torch.no_grad():
        teacher = model(x, attention_mask=mask).logits
    out = model(x, attention_mask=mask, subnet="small")
    frames = frame_mask(subsampled_lengths(mask.long().sum(-1)), teacher.shape[1])
    distillation_loss(out.logits, teacher, frames).backward()
    reference = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in term.items():
        # a difference of two whole-step gradients: float cancellation of ~1e-6 against terms of ~1e-3
        torch.testing.assert_close(grad, reference.get(name, torch.zeros_like(grad)), atol=1e-5, rtol=1e-3,
                                   msg=name)
    assert term["lm_head.weight"].abs().max() == 0  # the whole network's CTC head
    small_head = [n for n in term if n.startswith("subnet_heads.small")]
    assert small_head and all(term[n].abs().max() > 0 for n in small_head)
    dropped = [c for c in model.component_index if c.id not in small and c.module == "ffn1"]
    assert dropped
    for comp in dropped:  # FFN rows only the whole network uses
        rows = term[f"dynasr.layers.{comp.block}.ffn1.linear_in.weight"][comp.start:comp.stop]
        assert rows.abs().max() == 0, comp.name


def test_no_distillation_in_stage_1(features):
    """Stage 1 (a soft-gated size beside the whole network) has no distillation term, whatever the weight."""
    model, _ = tiny_supernet()
    selector = build_selector("simple_top_k", model.component_costs(), {"small": 0.5}, criterion="params",
                              total_steps=10, index=model.component_index)
    x, mask = features
    batch = {"input_features": x, "attention_mask": mask, "labels": LABELS}
    runs = [NetRun(FULL), NetRun("small", selector.gates("small", 0), soft=True)]
    _, losses = supernet_loss(model, model, batch, runs, 0, sizes=["small"], seed=0, selector=selector,
                              selection=SelectionConfig(loss_weight="paper1", distillation_weight=1.0))
    assert "loss/small" in losses and not any(k.startswith("distill/") for k in losses)


def test_distillation_weight_is_validated():
    with pytest.raises(ValueError, match=r"distillation_weight must be a number >= 0 \(0 = off\)"):
        SelectionConfig(distillation_weight=-0.5)
    with pytest.raises(ValueError, match="distillation_weight"):
        SelectionConfig(distillation_weight="high")
    assert SelectionConfig().distillation_weight == 0.0  # the papers: off
