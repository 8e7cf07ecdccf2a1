"""Gradient checkpointing (`model.gradient_checkpointing_enable()`, the training script's
`--gradient_checkpointing`): the encoder blocks recompute their activations in the backward pass, and the
loss and every gradient (parameters, stage-1 selector scores through the soft gates) equal those of the
plain model, dropout on, for the Conformer and the E-Branchformer block."""

import pytest
import torch
from conftest import make_model

from hf_dynasr import FULL, build_processor
from hf_dynasr.selection import SelectionConfig, build_selector
from hf_dynasr.trainer.options import parse_args
from hf_dynasr.trainer.setup import build_model
from hf_dynasr.trainer.supernet_step import plan_step, supernet_loss

DROPOUT = {"hidden_dropout": 0.1, "activation_dropout": 0.1, "attention_dropout": 0.1, "final_dropout": 0.1}
BLOCKS = ["conformer", "ebranchformer"]


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 160, 80, generator=g)
    mask = torch.ones(2, 160, dtype=torch.long)
    mask[1, 120:] = 0
    labels = torch.tensor([[5, 6, 7, 8, 9, -100], [8, 9, 10, 11, 12, 13]])
    return {"input_features": x, "attention_mask": mask, "labels": labels}


def _model(block_type):
    model = make_model(block_type=block_type, **DROPOUT).train()
    n = len(model.component_index)
    model.add_subnet("small", components=list(range(0, n, 2)))
    return model


def _recomputations(model):
    """Counts forward calls of the first block's FFN1: twice per step when its block is checkpointed."""
    calls = []
    model.dynasr.layers[0].ffn1.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _grads(*modules):
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()
            if p.grad is not None}


def _assert_same(plain, checkpointed):
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert torch.equal(grad, checkpointed[name]), name


def _twice(run):
    """(loss, grads, FFN1 forward calls) of `run(model)` without and with checkpointing, same seed."""
    results = []
    for checkpointing in (False, True):
        model, extra = run.build()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        calls = _recomputations(model)
        torch.manual_seed(123)  # the same dropout masks in both runs
        loss = run.loss(model, extra)
        loss.backward()
        results.append((loss.detach(), _grads(model, *extra), len(calls)))
    return results


class WholeOrSize:
    def __init__(self, block_type, subnet):
        self.block_type, self.subnet = block_type, subnet

    def build(self):
        return _model(self.block_type), ()

    def loss(self, model, extra):
        batch = _batch()
        return model(batch["input_features"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     subnet=self.subnet).loss


class Stage1Step:
    """A stage-1 supernet step: the whole network (with LayerDrop) and a size with the OrthoSoftmax selector's
    soft gates, whose scores get their gradient through the checkpointed blocks."""

    def __init__(self, block_type):
        self.block_type = block_type
        self.selection = SelectionConfig(layerdrop_stage1=0.3, loss_weight="focal")

    def build(self):
        model = make_model(block_type=self.block_type, **DROPOUT).train()
        sizes = {"small": 0.5}
        selector = build_selector("ortho_softmax", model.component_costs(), sizes, criterion="params",
                                  total_steps=10, index=model.component_index)
        for name in sizes:
            model.add_subnet(name, components=None, criterion="params", target=selector.target(name))
        return model, (selector,)

    def loss(self, model, extra):
        (selector,) = extra
        runs = plan_step(0, ["small"], stage1_steps=selector.stage1_steps(), seed=0, selector=selector)
        assert [r.subnet for r in runs] == [FULL, "small"] and runs[1].soft
        loss, _ = supernet_loss(model, model, _batch(), runs, 0, sizes=["small"], selection=self.selection, seed=0,
                                selector=selector)
        return loss


@pytest.mark.parametrize("block_type", BLOCKS)
@pytest.mark.parametrize("subnet", [None, "small"], ids=["whole_network", "masked_size"])
def test_checkpointing_gives_the_same_loss_and_gradients(block_type, subnet):
    (loss, grads, calls), (ckpt_loss, ckpt_grads, ckpt_calls) = _twice(WholeOrSize(block_type, subnet))
    assert (calls, ckpt_calls) == (1, 2)  # the block really was recomputed in the backward pass
    assert torch.equal(loss, ckpt_loss)
    _assert_same(grads, ckpt_grads)
    assert grads["0.dynasr.layers.0.ffn1.linear_in.weight"].abs().sum() > 0


@pytest.mark.parametrize("block_type", BLOCKS)
def test_stage1_step_with_soft_gates_gets_the_same_gradients(block_type):
    (loss, grads, calls), (ckpt_loss, ckpt_grads, ckpt_calls) = _twice(Stage1Step(block_type))
    assert (calls, ckpt_calls) == (2, 4)  # two nets per step, each recomputed
    assert torch.equal(loss, ckpt_loss)
    _assert_same(grads, ckpt_grads)
    assert grads["1.scores"].abs().sum() > 0  # the selector's scores learn through the gates


def test_dropout_is_on_and_replayed():
    """Without a replayed RNG the recomputed dropout masks would differ: the test above would then fail.
    Here: dropout really changes the loss between two seeds, so those tests compare noisy runs."""
    model = _model("conformer")
    batch = _batch()
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        losses.append(model(batch["input_features"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"]).loss)
    assert not torch.equal(losses[0], losses[1])


def test_enable_under_both_names_and_disable():
    model = _model("conformer")
    with pytest.warns(FutureWarning):  # transformers 5 renamed it activation_checkpointing_enable
        model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.dynasr.layers)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    assert not any(layer.gradient_checkpointing for layer in model.dynasr.layers)
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model.eval()  # inference: nothing to recompute
    calls = _recomputations(model)
    batch = _batch()
    with torch.no_grad():
        model(batch["input_features"], attention_mask=batch["attention_mask"])
    assert len(calls) == 1


def test_training_option_enables_it():
    tokenizer = build_processor().tokenizer
    for argv, expected in (([], False), (["--gradient_checkpointing"], True)):
        args = parse_args(["--config", "training/configs/smoke.yaml", *argv])
        assert args.gradient_checkpointing is expected
        model, _, _ = build_model(args, tokenizer, None, "params")
        assert model.is_activation_checkpointing is expected
