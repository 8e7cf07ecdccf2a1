"""E-Branchformer blocks (`block_type="ebranchformer"`, paper 3's TED-LIUM model): spec, extraction, padding,
costs and DMAO."""

import json

import pytest
import torch
from conftest import make_model
from safetensors.torch import load_file
from transformers import AutoModelForCTC

from hf_dynasr import DynaSRConfig, DynaSRForCTC
from hf_dynasr.models.dynasr.components_dynasr import ComponentIndex, component_params
from hf_dynasr.dmao import DMAO, DMAOConfig, architecture_table, unit_config

TOL = 1e-4
EBF = dict(block_type="ebranchformer")



def ebf_model(**overrides):
    """A tiny E-Branchformer whose matrices have std 0.1 instead of 0.02, so every branch and unit changes the
    logits by far more than TOL (with the default init a wrong cgMLP LayerNorm moves them by only ~1e-5)."""
    model = make_model(**EBF, **overrides)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


def _drop(index, *prefixes):
    return [c.id for c in index if not c.name.startswith(prefixes)]


def test_spec_keys_follow_the_block_type():
    config = DynaSRConfig(**EBF)  # paper 3 TED model: d=512, FFN 2048, cgMLP 3072 = 2 x 1536 units
    assert config.architecture_spec[0] == {"ffn1": 2048, "mhsa": 8, "cgmlp": 1536, "ffn2": 2048}
    assert config.cgmlp_intermediate_size == 3072 and config.cgmlp_chunk_size == 384
    assert len(ComponentIndex(config)) == 12 * (4 + 8 + 4 + 4)
    with pytest.raises(ValueError, match="exactly the keys .* for block_type='ebranchformer'"):
        DynaSRConfig(**EBF, num_hidden_layers=1, architecture_spec=[{"ffn1": 2048, "mhsa": 8, "conv": 512, "ffn2": 0}])
    with pytest.raises(ValueError, match="cgmlp_chunk_size"):
        DynaSRConfig(**EBF, num_hidden_layers=1, architecture_spec=[{"ffn1": 0, "mhsa": 8, "cgmlp": 100, "ffn2": 0}])
    with pytest.raises(ValueError, match="allowed: conformer, ebranchformer"):
        DynaSRConfig(block_type="branchformer")


def test_build_save_load_round_trip(features, tmp_path):
    spec = [
        {"ffn1": 64, "mhsa": 6, "cgmlp": 0, "ffn2": 0},  # cgMLP branch absent
        {"ffn1": 0, "mhsa": 0, "cgmlp": 48, "ffn2": 96},  # MHSA branch absent
        {"ffn1": 128, "mhsa": 1, "cgmlp": 120, "ffn2": 32},
    ]
    model = ebf_model(architecture_spec=spec)
    x, mask = features
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["block_type"] == "ebranchformer" and saved["architecture_spec"] == spec
    reloaded = AutoModelForCTC.from_pretrained(tmp_path).eval()
    assert reloaded.config.architecture_spec == spec
    layers = reloaded.dynasr.layers
    assert layers[0].cgmlp is None and layers[1].mhsa is None and layers[2].cgmlp.linear_in.out_features == 240
    assert torch.equal(reloaded(x, attention_mask=mask).logits, model(x, attention_mask=mask).logits)
    norm = layers[2].cgmlp.norm_weight  # custom parameters are real values, not uninitialised memory
    assert torch.isfinite(norm).all() and norm.abs().max() < 10


@pytest.mark.parametrize("granularity", ["component", "module"])
def test_masked_supernet_equals_extracted_model(granularity, features, tmp_path):
    model = ebf_model(granularity=granularity)
    index, x, mask = model.component_index, *features
    # "mid": no cgMLP branch in block 0, no MHSA branch in block 1, half of block 2's cgMLP (component level)
    mid = _drop(index, "b0.cgmlp", "b1.mhsa", "b2.cgmlp.c1", "b2.cgmlp.c3", "b2.ffn1.c0")
    small = sorted(set(mid) & set(_drop(index, "b0.mhsa", "b1.ffn2")))  # and block 0 keeps no branch at all
    sizes = {"mid": mid, "small": small}
    for name, ids in sizes.items():
        model.add_subnet(name, components=ids)
    model.save_pretrained(tmp_path / "supernet")
    for name in sizes:
        masked = model(x, attention_mask=mask, subnet=name).logits
        compact = model.extract_subnet(name).eval()
        assert (compact(x, attention_mask=mask).logits - masked).abs().max() <= TOL
        assert compact.num_parameters() == model.config.subnets[name]["num_parameters"]
        assert compact.dynasr.layers[0].cgmlp is None and compact.dynasr.layers[1].mhsa is None
        lazy = AutoModelForCTC.from_pretrained(tmp_path / "supernet", subnet=name).eval()  # safetensors slices
        assert (lazy(x, attention_mask=mask).logits - masked).abs().max() <= TOL
        compact.save_pretrained(tmp_path / name)
        assert sum(t.numel() for t in load_file(tmp_path / name / "model.safetensors").values()) == (
            compact.num_parameters()
        )
    spec = model.extract_subnet("small").config.architecture_spec
    assert spec[0]["mhsa"] == spec[0]["cgmlp"] == 0 and "conv" not in spec[0]
    if granularity == "component":
        assert spec[2]["cgmlp"] == 48


def test_padded_batch_equals_each_utterance_alone(features):
    model = ebf_model()
    model.add_subnet("small", components=_drop(model.component_index, "b0.cgmlp", "b1.mhsa", "b2.cgmlp.c2"))
    x, mask = features
    for subnet in (None, "small"):
        batched = model(x, attention_mask=mask, subnet=subnet).logits
        for b, length in enumerate(mask.sum(-1).tolist()):
            alone = model(x[b : b + 1, :length], subnet=subnet).logits
            assert (batched[b, : length // 4] - alone[0]).abs().max() <= TOL


def test_soft_gates_of_zero_equal_removal(features):
    """Also checks the chunk-wise LayerNorm of the cgMLP gates: zero-gating one chunk of block 1 must not
    change the other chunks."""
    model = ebf_model()
    x, mask = features
    keep = _drop(model.component_index, "b1.cgmlp.c0", "b2.cgmlp")
    model.add_subnet("part", components=keep)
    gates = torch.zeros(len(model.component_index))
    gates[keep] = 1.0
    gated = model(x, attention_mask=mask, component_gates=gates).logits
    removed = model(x, attention_mask=mask, subnet="part").logits
    assert (gated - removed).abs().max() <= TOL < (model(x, attention_mask=mask).logits - removed).abs().max()


def test_component_costs_add_up_and_match_measurements():
    model = make_model(**EBF)
    costs, cfg = model.component_costs(), model.config
    assert costs.total_params == model.num_parameters()
    # rest = frontend + block LayerNorms + merges + module-shared params (pre-LN, output bias) + head
    rest = sum(p.numel() for p in model.dynasr.frontend.parameters()) + model.lm_head.weight.numel() + cfg.vocab_size
    for layer in model.dynasr.layers:
        rest += sum(p.numel() for p in [*layer.layer_norm.parameters(), *layer.merge.parameters()])
        for module in (layer.ffn1, layer.mhsa, layer.cgmlp, layer.ffn2):
            rest += sum(p.numel() for p in module.layer_norm.parameters()) + cfg.hidden_size
    assert costs.rest_params == rest
    assert costs.total_flops == DynaSRForCTC.measure_flops(cfg)
    cgmlp = [c for c in model.component_index if c.module == "cgmlp"]
    assert {c.kind for c in cgmlp} == {"cgmlp_chunk"} and len(cgmlp) == 4 * cfg.num_hidden_layers
    unit_params = sum(p.numel() for p in model.dynasr.layers[0].cgmlp.parameters()) - 3 * cfg.hidden_size
    assert sum(costs.params[c.id] for c in cgmlp if c.block == 0) == unit_params
    for cid in (cgmlp[0].id, cgmlp[-1].id, 0):  # a component's cost equals the measured drop without it
        model.add_subnet(f"minus{cid}", components=[c.id for c in model.component_index if c.id != cid])
        entry = model.config.subnets[f"minus{cid}"]
        assert costs.total_params - entry["num_parameters"] == costs.params[cid]
        assert costs.total_flops - entry["flops"] == costs.flops[cid]


def test_dmao_reshape_with_cgmlp_units_keeps_budget_and_round_trips(tmp_path):
    """Drop block 0's whole cgMLP branch (silenced first) and grow copies of cgMLP / FFN / head units with
    function-preserving init: the output is unchanged, the budget is kept, and the model saves, loads and
    extracts like any other."""
    model = ebf_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    feats = torch.randn(2, 48, 80, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(1, 30, (2, 4), generator=torch.Generator().manual_seed(1))
    dmao = DMAO(model, DMAOConfig(update_every=1, init="function_preserving", events=[0.5]), 10)
    model(feats, labels=labels).loss.backward()
    dmao.observe(model, 0)
    opt.step()
    opt.zero_grad()

    index, ucfg = dmao.index, unit_config(model.config)
    cost = {c.id: component_params(ucfg, c) for c in index}
    b0 = [c.id for c in index if c.name.startswith("b0.cgmlp")]
    state = dmao.state_dict()
    state["scores"] = torch.rand(len(index), generator=torch.Generator().manual_seed(2)) + 1.0
    state["scores"][b0] = 0.0
    state["scores"][index.ids(["b1.cgmlp.c1"])] = 10.0
    dmao.load_state_dict(state)
    budget = sum(cost.values())
    dmao.cfg.rho = (sum(cost[i] for i in b0) + 3 * ucfg.hidden_size - 1) / budget  # exactly block 0's cgMLP
    cg = model.dynasr.layers[0].cgmlp
    with torch.no_grad():  # silence it, so removing it leaves the output unchanged
        cg.linear_out.weight.zero_()
        cg.linear_out.bias.zero_()
    model.eval()
    with torch.no_grad():
        before = model(feats).logits
    report = dmao.reshape(model, opt, step=5)
    json.dumps(report)
    with torch.no_grad():
        after = model(feats).logits
    assert (after - before).abs().max() <= 1e-5
    assert sorted(report["dropped"]) == [f"b0.cgmlp.c{j}" for j in range(4)] and report["grown"][0] == "b1.cgmlp.c1"
    assert model.dynasr.layers[0].cgmlp is None and model.config.architecture_spec[0]["cgmlp"] == 0
    assert model.config.architecture_spec[1]["cgmlp"] >= 96 + 24
    assert 0 <= report["params_after"] - report["params_before"] < max(cost.values())
    assert report["params_after"] == model.num_parameters()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert "cgmlp" in architecture_table(report["after"], model.config)
    fresh = DynaSRForCTC(model.config)  # the spec describes the weights
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.train()
    model(feats, labels=labels).loss.backward()  # trains on after the event
    dmao.observe(model, 6)
    opt.step()
    opt.zero_grad()

    model.eval()
    model.save_pretrained(tmp_path)
    loaded = DynaSRForCTC.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(feats).logits, model(feats).logits)
    again = DMAO(loaded, DMAOConfig(update_every=1, events=[0.5]), 10)
    again.load_state_dict(dmao.state_dict())
    assert torch.equal(again.scores(), dmao.scores())
    loaded.add_subnet("evens", components=list(range(0, len(loaded.component_index), 2)))
    with torch.no_grad():
        masked = loaded(feats, subnet="evens").logits
        assert (loaded.extract_subnet("evens").eval()(feats).logits - masked).abs().max() <= TOL
