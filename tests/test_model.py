"""DynaSRForCTC: subnets, extraction, save/load, padding, gates and input validation."""

import os

import pytest
import torch
from conftest import make_model
from safetensors.torch import load_file
from transformers import AutoModelForCTC

from hf_dynasr import FULL, DynaSRConfig, DynaSRForCTC

TOL = 1e-4


def _nested_sizes(model):
    """Three nested masks: small drops every module of block 0 and more, mid adds some back."""
    index = model.component_index
    small = [c.id for c in index if c.block > 0 and c.id % 3 != 0]
    mid = sorted(set(small) | {c.id for c in index if c.block == 0 and c.module in ("mhsa", "conv")})
    return {"small": small, "mid": mid}


@pytest.mark.parametrize(
    "granularity,conv_granularity", [("module", "module"), ("component", "module"), ("component", "chunk")]
)
def test_masked_supernet_equals_extracted_model(granularity, conv_granularity, features, tmp_path):
    model = make_model(granularity=granularity, conv_granularity=conv_granularity)
    x, mask = features
    sizes = _nested_sizes(model)
    for name, ids in sizes.items():
        entry = model.add_subnet(name, components=ids, criterion="manual")
        assert model.config.subnets[name]["components"] == ids
        assert entry["num_parameters"] < model.component_costs().total_params
    assert set(sizes["small"]) < set(sizes["mid"])  # nested
    full_out = model(x, attention_mask=mask).logits
    for name in sizes:
        model.set_subnet(name)
        masked = model(x, attention_mask=mask).logits
        small = model.extract_subnet(name).eval()
        extracted = small(x, attention_mask=mask).logits
        assert (masked - extracted).abs().max() <= TOL
        assert not torch.allclose(masked, full_out)
        # the extracted model is physically smaller, with exactly the recorded size
        assert small.num_parameters() == model.config.subnets[name]["num_parameters"]
        assert small.config.active_subnet == name
        assert sum(1 for _ in small.subnet_heads) == 0
        # block 0 lost whole modules: they are absent in the compact model, not zero-filled
        if name == "small":
            assert small.dynasr.layers[0].ffn1 is None
        small.save_pretrained(tmp_path / name)
    model.set_subnet(None)
    model.save_pretrained(tmp_path / "supernet")
    sizes_on_disk = {n: os.path.getsize(tmp_path / n / "model.safetensors") for n in ["small", "mid", "supernet"]}
    assert sizes_on_disk["small"] < sizes_on_disk["mid"] < sizes_on_disk["supernet"]
    assert sum(t.numel() for t in load_file(tmp_path / "small" / "model.safetensors").values()) == (
        model.config.subnets["small"]["num_parameters"]
    )


def test_save_load_round_trip_every_size(features, tmp_path):
    model = make_model()
    x, mask = features
    sizes = _nested_sizes(model)
    for name, ids in sizes.items():
        model.add_subnet(name, components=ids)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCTC.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, DynaSRForCTC) and reloaded.config.active_subnet is None
    assert torch.equal(reloaded(x, attention_mask=mask).logits, model(x, attention_mask=mask).logits)
    for name in sizes:
        compact = AutoModelForCTC.from_pretrained(tmp_path, subnet=name).eval()
        assert compact.config.active_subnet == name
        assert compact.num_parameters() == model.config.subnets[name]["num_parameters"]
        expected = model(x, attention_mask=mask, subnet=name).logits
        assert (compact(x, attention_mask=mask).logits - expected).abs().max() <= TOL
        # a compact checkpoint saved and loaded again stays the same size
        compact.save_pretrained(tmp_path / f"compact-{name}")
        again = AutoModelForCTC.from_pretrained(tmp_path / f"compact-{name}").eval()
        assert again.config.active_subnet == name and again.num_parameters() == compact.num_parameters()
        assert torch.equal(again(x, attention_mask=mask).logits, compact(x, attention_mask=mask).logits)


def test_non_uniform_spec_builds_saves_and_loads(features, tmp_path):
    spec = [
        {"ffn1": 64, "mhsa": 6, "conv": 0, "ffn2": 0},
        {"ffn1": 0, "mhsa": 0, "conv": 32, "ffn2": 96},
        {"ffn1": 256, "mhsa": 1, "conv": 128, "ffn2": 32},
    ]
    model = make_model(architecture_spec=spec)
    x, mask = features
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCTC.from_pretrained(tmp_path).eval()
    assert reloaded.config.architecture_spec == spec
    assert reloaded.dynasr.layers[0].conv is None and reloaded.dynasr.layers[1].mhsa is None
    assert reloaded.dynasr.layers[0].mhsa.q_proj.out_features == 6 * 16
    assert torch.equal(reloaded(x, attention_mask=mask).logits, model(x, attention_mask=mask).logits)
    # custom parameters are real values after loading, not uninitialised memory
    norm = reloaded.dynasr.layers[2].conv.norm_weight
    assert torch.isfinite(norm).all() and norm.abs().max() < 10


def test_missing_custom_parameters_are_initialised_not_garbage(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    state = load_file(tmp_path / "model.safetensors")
    state = {k: v for k, v in state.items() if "norm_weight" not in k and "norm_bias" not in k}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = AutoModelForCTC.from_pretrained(tmp_path)
    for layer in reloaded.dynasr.layers:
        assert torch.equal(layer.conv.norm_weight, torch.ones_like(layer.conv.norm_weight))
        assert torch.equal(layer.conv.norm_bias, torch.zeros_like(layer.conv.norm_bias))


@pytest.mark.parametrize("frontend_type", ["conv2d4x", "vgg4x"])
def test_padded_batch_equals_each_utterance_alone(frontend_type, features):
    model = make_model(frontend_type=frontend_type)
    model.add_subnet("small", components=_nested_sizes(model)["small"])
    x, mask = features
    # an odd padded length and loud garbage in the padding: no frontend may read it
    x = torch.cat([x, torch.randn(2, 3, 80)], dim=1)
    mask = torch.cat([mask, mask[:, -1:].repeat(1, 3)], dim=1)
    x[1, 150:] = 1e3 * torch.randn(x.shape[1] - 150, 80)
    for subnet in (None, "small"):
        batched = model(x, attention_mask=mask, subnet=subnet).logits
        for b, length in enumerate(mask.sum(-1).tolist()):
            alone = model(x[b : b + 1, :length], subnet=subnet).logits
            assert alone.shape[1] == length // 4
            assert (batched[b, : length // 4] - alone[0]).abs().max() <= TOL


def test_inputs_embeds_runs_the_encoder_on_a_given_frontend_output(features):
    model = make_model()
    model.add_subnet("small", components=_nested_sizes(model)["small"])
    x, mask = features
    out = model(x, attention_mask=mask, output_hidden_states=True)
    embeds = out.hidden_states[0]  # [B, T', d]
    embeds_mask = model._get_feat_extract_output_lengths(mask.sum(-1))[:, None] > torch.arange(embeds.shape[1])
    for subnet in (None, "small"):
        ref = model(x, attention_mask=mask, subnet=subnet).logits
        got = model(inputs_embeds=embeds, attention_mask=embeds_mask, subnet=subnet).logits
        assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="exactly one of input_features"):
        model(x, attention_mask=mask, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of input_features"):
        model(attention_mask=mask)
    with pytest.raises(ValueError, match="with inputs_embeds, attention_mask marks its frames"):
        model(inputs_embeds=embeds, attention_mask=mask)
    with pytest.raises(ValueError, match="hidden_size=64"):
        model(inputs_embeds=x)


def test_supernet_loss_runs_the_frontend_once_with_the_same_gradients(features):
    from hf_dynasr.selection import SelectionConfig
    from hf_dynasr.trainer.supernet_step import NetRun, supernet_loss

    model = make_model().train()
    for name, ids in _nested_sizes(model).items():
        model.add_subnet(name, components=ids)
    x, mask = features
    batch = {"input_features": x, "attention_mask": mask, "labels": torch.tensor([[5, 6, 7, -100], [8, 9, 10, 11]])}
    calls = []
    model.dynasr.frontend.register_forward_hook(lambda *_: calls.append(1))
    loss, _ = supernet_loss(model, model, batch, [NetRun(FULL), NetRun("small"), NetRun("mid")], 0,
                            sizes=["small", "mid"], selection=SelectionConfig(loss_weight="paper1"), seed=0)
    loss.backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(calls) == 1
    model.zero_grad()
    separate = sum(w * model(x, attention_mask=mask, labels=batch["labels"], subnet=s).loss
                   for w, s in ((1.0, None), (0.3, "small"), (0.3, "mid")))
    separate.backward()
    assert len(calls) == 4
    assert shared.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in shared:
            assert torch.allclose(shared[name], p.grad, atol=1e-6, rtol=1e-4), name
    assert shared["dynasr.frontend.conv1.weight"].abs().sum() > 0


def test_gradients_reach_soft_gates(features):
    model = make_model().train()
    x, mask = features
    gates = torch.full((len(model.component_index),), 0.7, requires_grad=True)
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, 10, 11]])
    out = model(x, attention_mask=mask, labels=labels, component_gates=gates)
    out.loss.backward()
    assert gates.grad is not None and (gates.grad != 0).all()
    # per-sequence gates [B, N] work too (LayerDrop drops per sequence)
    gates2 = torch.ones(2, len(model.component_index), requires_grad=True)
    model(x, attention_mask=mask, labels=labels, component_gates=gates2).loss.backward()
    assert (gates2.grad.abs().sum(-1) > 0).all()


def test_soft_gates_of_zero_equal_removal_and_of_one_equal_the_plain_model(features):
    model = make_model()
    x, mask = features
    n = len(model.component_index)
    assert torch.allclose(model(x, mask, component_gates=torch.ones(n)).logits, model(x, mask).logits, atol=1e-6)
    keep = _nested_sizes(model)["small"]
    model.add_subnet("small", components=keep)
    gates = torch.zeros(n)
    gates[keep] = 1.0
    # same CTC head as the hard subnet, so the soft mask must reproduce it
    soft = model(x, mask, subnet="small", component_gates=gates[keep].new_ones(n) * gates).logits
    hard = model(x, mask, subnet="small").logits
    assert (soft - hard).abs().max() <= TOL


def test_component_costs_add_up_and_match_measurements():
    model = make_model(granularity="component", conv_granularity="chunk")
    costs = model.component_costs()
    cfg = model.config
    assert costs.total_params == model.num_parameters()
    # the rest is exactly frontend + per-block LayerNorms + module-shared params (LN, output bias) + head
    frontend = sum(p.numel() for p in model.dynasr.frontend.parameters())
    block_norms = sum(p.numel() for layer in model.dynasr.layers for p in layer.layer_norm.parameters())
    shared = 0
    for layer in model.dynasr.layers:
        for module in (layer.ffn1, layer.mhsa, layer.conv, layer.ffn2):
            shared += sum(p.numel() for p in module.layer_norm.parameters()) + cfg.hidden_size
    head = sum(p.numel() for p in model.lm_head.parameters())
    assert costs.rest_params == frontend + block_norms + shared + head
    assert costs.total_flops == DynaSRForCTC.measure_flops(cfg)
    # a component's FLOPs equal the measured drop when that component alone is removed
    index = model.component_index
    for cid in (0, 8, len(index) - 1):
        keep = [c.id for c in index if c.id != cid]
        model.add_subnet(f"minus{cid}", components=keep)
        entry = model.config.subnets[f"minus{cid}"]
        assert costs.total_flops - entry["flops"] == costs.flops[cid]
        assert costs.total_params - entry["num_parameters"] == costs.params[cid]


def test_component_index_granularities(tiny_config):
    model = make_model(granularity="module")
    assert len(model.component_index) == 4 * tiny_config.num_hidden_layers
    model = make_model()  # component-wise, conv whole: 4 + 4 FFN chunks, 4 heads, 1 conv per block
    assert len(model.component_index) == (4 + 4 + 4 + 1) * tiny_config.num_hidden_layers
    names = [c.name for c in model.component_index]
    assert names[:6] == ["b0.ffn1.c0", "b0.ffn1.c1", "b0.ffn1.c2", "b0.ffn1.c3", "b0.mhsa.h0", "b0.mhsa.h1"]
    assert model.component_index.ids(["b0.mhsa.h1", 0]) == [0, 5]


# --- bad input ---------------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors(features, tmp_path):
    model = make_model()
    x, mask = features
    with pytest.raises(ValueError, match=r"\[batch, frames, 80\]"):
        model(torch.randn(1, 100, 40))
    with pytest.raises(ValueError, match="empty"):
        model(torch.randn(1, 0, 80))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(x, attention_mask=mask[:, :100])
    with pytest.raises(ValueError, match="at least 4 valid frames"):
        model(torch.randn(1, 3, 80))
    with pytest.raises(ValueError, match=r"label ids must be in \[0, 30\)"):
        model(x, mask, labels=torch.tensor([[3, 99], [4, 5]]))
    with pytest.raises(ValueError, match="pad labels with -100"):
        model(x, mask, labels=torch.tensor([[3, 0], [4, 5]]))
    model.add_subnet("20M", components=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown subnet '45M'; available: 20M, full"):
        model.set_subnet("45M")
    with pytest.raises(ValueError, match="unknown subnet '45M'; available: 20M, full"):
        model(x, subnet="45M")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown subnet '45M'; available: 20M, full"):
        AutoModelForCTC.from_pretrained(tmp_path, subnet="45M")
    with pytest.raises(ValueError, match="does not divide hidden_size=64"):
        DynaSRConfig(hidden_size=64, num_attention_heads=5)
    with pytest.raises(ValueError, match="components .*do not exist.*ids 0..38"):
        DynaSRConfig(**{**model.config.to_dict(), "subnets": {"x": {"components": [0, 999]}}})
    with pytest.raises(ValueError, match="component id 1000 does not exist; valid ids are 0..38"):
        model.add_subnet("bad", components=[1000])
    with pytest.raises(ValueError, match="allowed: vgg4x, conv2d4x"):
        DynaSRConfig(frontend_type="resnet")
    with pytest.raises(ValueError, match="architecture_spec has 1 blocks but num_hidden_layers=2"):
        DynaSRConfig(num_hidden_layers=2, architecture_spec=[{"ffn1": 0, "mhsa": 0, "conv": 0, "ffn2": 0}])
    with pytest.raises(ValueError, match="not a multiple of its chunk size"):
        DynaSRConfig(num_hidden_layers=1, architecture_spec=[{"ffn1": 100, "mhsa": 1, "conv": 512, "ffn2": 0}])
    with pytest.raises(ValueError, match="reserved"):
        model.add_subnet("full", components=[0])


def test_intermediate_ctc_loss_mixes_block_outputs_through_the_size_head(features):
    """loss = (1 - w) * final CTC + w * mean CTC of the listed blocks' outputs through the same head (InterCTC);
    logits and inference are unchanged."""
    x, mask = features
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, 10, 11]])
    plain = make_model()
    model = make_model(interctc_layers=[1], interctc_weight=0.4)
    out = model(x, attention_mask=mask, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(out.logits, plain(x, attention_mask=mask).logits)
    lengths = model._get_feat_extract_output_lengths(mask.sum(-1))
    final = model.ctc_loss(out.logits, lengths, labels)
    inter = model.ctc_loss(model.lm_head(out.hidden_states[1]), lengths, labels)
    torch.testing.assert_close(out.loss, 0.6 * final + 0.4 * inter)
    assert model(x, attention_mask=mask, labels=labels).hidden_states is None  # only returned when asked
    # the size's own head serves its intermediate loss too
    model.add_subnet("small", components=list(range(len(model.component_index) // 2)))
    head = model.subnet_heads["small"]
    with torch.no_grad():  # it starts as a copy of the full head; make the two tell apart
        head.bias.add_(torch.linspace(-1.0, 1.0, head.bias.numel()))
    half = model(x, attention_mask=mask, labels=labels, subnet="small", output_hidden_states=True)
    through_full_head = model.ctc_loss(model.lm_head(half.hidden_states[1]), lengths, labels)
    assert not torch.allclose(through_full_head, model.ctc_loss(head(half.hidden_states[1]), lengths, labels))
    expected = 0.6 * model.ctc_loss(half.logits, lengths, labels) + \
        0.4 * model.ctc_loss(head(half.hidden_states[1]), lengths, labels)
    torch.testing.assert_close(half.loss, expected)


@pytest.mark.parametrize("bad, message", [
    ({"interctc_layers": [3]}, "allowed: 1..2"),
    ({"interctc_layers": [0]}, "not intermediate blocks"),
    ({"interctc_weight": 0.3}, "needs interctc_layers"),
    ({"interctc_layers": [1], "interctc_weight": 1.0}, r"must be in \[0, 1\)"),
])
def test_intermediate_ctc_config_errors_name_the_allowed_values(bad, message):
    with pytest.raises(ValueError, match=message):
        make_model(**bad)
