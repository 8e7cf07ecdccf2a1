"""The papers' settings as options (issue: the papers as published): sizes by module count, paper 1's stage-1 rule,
re-derived FLOPs budgets, block order, the schedule floor, and the paper recipes using the paper values."""

import os

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from conftest import REPO, make_model

from hf_dynasr import FULL, ComponentIndex, DynaSRConfig, DynaSRForCTC
from hf_dynasr.dmao import DMAOConfig
from hf_dynasr.models.dynasr.costs_dynasr import component_costs
from hf_dynasr.selection import SelectionConfig, build_selector
from hf_dynasr.trainer.dry_run import dry_run
from hf_dynasr.trainer.options import parse_args
from hf_dynasr.trainer.schedule import one_cycle_lambda
from hf_dynasr.trainer.supernet_step import NetRun, plan_step, rederive_fraction, size_fractions, supernet_loss

CONFIGS = os.path.join(REPO, "training", "configs")


@pytest.fixture(scope="module")
def module_supernet():
    """A tiny module-wise supernet (3 blocks = 12 modules) and its costs, measured once."""
    model = make_model(granularity="module")
    return model, model.component_costs()


# --- sizes by module count (paper 1) --------------------------------------------------------------------------
def test_count_criterion_gives_paper_1_module_counts(module_supernet):
    model, costs = module_supernet
    per_module, total = costs.of("count")
    assert per_module == (1,) * 12 and total == 12
    sizes, criterion = size_fractions({"small": {"target": 4, "criterion": "count"},
                                       "medium": {"target": 8, "criterion": "count"}}, costs, "params")
    assert criterion == "count" and sizes == {"small": 4 / 12, "medium": 8 / 12}
    for method in ("simple_top_k", "iterative_zero_out"):
        selector = build_selector(method, costs, sizes, criterion="count", total_steps=20,
                                  index=model.component_index)
        scores = torch.linspace(1.0, 0.0, 12)[torch.randperm(12, generator=torch.Generator().manual_seed(1))]
        with torch.no_grad():
            selector.scores.copy_(scores)
        masks = selector.final_masks()
        assert [len(masks["small"]), len(masks["medium"])] == [4, 8]  # exactly 4 and 8 modules
        assert set(masks["small"]) <= set(masks["medium"])  # nested
        assert masks["small"] == sorted(torch.argsort(scores, descending=True)[:4].tolist())
        if method == "simple_top_k":
            assert selector.k_min == 4  # the smallest size's module count
    entry = model.add_subnet("small", components=masks["small"], criterion="count", target=4 / 12)
    assert entry["criterion"] == "count" and len(model.config.subnets["small"]["components"]) == 4


def test_simple_top_k_anneals_k_by_r(module_supernet):
    """k(t) = max(N - r - floor(t / T_iter) r, k_min) with r = anneal_step (paper 1: r = 4 on TED with 3 sizes)."""
    model, costs = module_supernet
    selector = build_selector("simple_top_k", costs, {"small": 4 / 12}, criterion="count", total_steps=10,
                              stage1_fraction=1.0, anneal_step=4, index=model.component_index)
    ks = []
    for step in range(10):
        ks.append(int(selector.k))
        selector.end_of_step(step)
    assert ks[0] == 8 and ks[-1] == 4 and set(ks) == {8, 4}  # 12 - 4, then k_min; steps of r = 4


# --- paper 1's stage-1 rule --------------------------------------------------------------------------------
class _Gates:
    def gates(self, name, step):
        return torch.ones(3)


@pytest.mark.parametrize("rule, expect", [("annealed", {"small"}), ("random", {"small", "mid", "large"})])
def test_stage1_subnet_rule(rule, expect):
    """"annealed" (paper 1): stage 1 always trains the smallest size (the selector's annealed subnet) beside the
    whole network; "random" (paper 2) draws a size each step. Stage 2 is the sandwich rule either way."""
    sizes = ["small", "mid", "large"]
    picked = {plan_step(step, sizes, stage1_steps=50, seed=0, selector=_Gates(), stage1_subnet=rule)[1].subnet
              for step in range(50)}
    assert picked == expect
    stage2 = plan_step(60, sizes, stage1_steps=50, seed=0, selector=_Gates(), stage1_subnet=rule)
    assert [r.subnet for r in stage2][:2] == ["full", "small"] and not any(r.soft for r in stage2)


def test_stage1_subnet_is_validated():
    with pytest.raises(ValueError, match="stage1_subnet 'first'.*allowed: random, annealed"):
        SelectionConfig(stage1_subnet="first")


# --- paper-compatible FLOPs budgets (paper 2) -------------------------------------------------------------
def test_paper_fractions_rederived_keep_the_papers_prunable_share(module_supernet):
    _, costs = module_supernet
    per, total = costs.of("flops")
    rest = 1 - sum(per) / total
    # paper 2 LibriSpeech: rest 110 of 620; its 0.45 size keeps (0.45 - 0.177) / 0.823 of the prunable FLOPs
    kept = (0.45 - 0.177) / (1 - 0.177)
    fraction = rederive_fraction(0.45, 0.177, rest)
    assert fraction == pytest.approx(rest + (1 - rest) * kept)
    assert (fraction - rest) / (1 - rest) == pytest.approx(kept)
    assert rederive_fraction(1.0, 0.3, rest) == pytest.approx(1.0)
    sizes, _ = size_fractions({"small": {"fraction": 0.45, "criterion": "flops"}}, costs, "flops",
                              paper_rest_share=0.177)
    assert sizes["small"] == pytest.approx(fraction)
    # an absolute target is not a paper fraction: kept as given
    absolute, _ = size_fractions({"small": {"target": total // 2, "criterion": "flops"}}, costs, "flops",
                                 paper_rest_share=0.177)
    assert absolute["small"] == pytest.approx((total // 2) / total)
    with pytest.raises(ValueError, match="not above the paper's never-pruned share 0.3"):
        rederive_fraction(0.25, 0.3, rest)
    with pytest.raises(ValueError, match="paper_rest_share must be None or in"):
        SelectionConfig(paper_rest_share=1.2)


# --- block order ---------------------------------------------------------------------------------------------
def test_block_order_conv_first(features):
    """"conv_mhsa" computes Conv before MHSA with the same weights and names (the component index is unchanged);
    a masked subnet still equals its extracted model."""
    x, mask = features
    plain, swapped = make_model(), make_model(block_order="conv_mhsa")
    assert plain.state_dict().keys() == swapped.state_dict().keys()
    swapped.load_state_dict(plain.state_dict())
    assert [c.name for c in plain.component_index] == [c.name for c in swapped.component_index]
    with torch.no_grad():
        a, b = plain(x, attention_mask=mask).logits, swapped(x, attention_mask=mask).logits
    assert (a - b).abs().max() > 1e-3
    calls = []
    layer = swapped.dynasr.layers[0]
    for name in ("mhsa", "conv"):
        getattr(layer, name).register_forward_hook(lambda *_, n=name: calls.append(n))
    with torch.no_grad():
        swapped(x, attention_mask=mask)
    assert calls == ["conv", "mhsa"]
    n = len(swapped.component_index)
    swapped.add_subnet("small", components=list(range(0, n, 2)))
    with torch.no_grad():
        torch.testing.assert_close(swapped.extract_subnet("small").eval()(x, attention_mask=mask).logits,
                                   swapped(x, attention_mask=mask, subnet="small").logits, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="block_order='conv_first'.*allowed: mhsa_conv, conv_mhsa"):
        make_model(block_order="conv_first")


# --- schedule floor ----------------------------------------------------------------------------------------
def test_one_cycle_floor():
    """The LR falls back to the floor (peak/100, or peak/10 on TED-LIUM in papers 2 and 3) before the final ramp."""
    for floor in (0.01, 0.1):
        factor = one_cycle_lambda(100, 0.45, 0.45, start_factor=floor, end_factor=floor)
        assert factor(0) == pytest.approx(floor) and factor(45) == pytest.approx(1.0)
        assert factor(90) == pytest.approx(floor) and factor(99) < floor


# --- the paper recipes use the paper values ---------------------------------------------------------------
def _recipe(name):
    with open(os.path.join(CONFIGS, name)) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("name, selection, model, top", [
    ("tedlium2.yaml", {"orth_norm": "L2_sqrt", "paper_rest_share": 0.275, "tau0": 1.0,
                       "adaptive_ffn_dropout": True}, {}, {"lr_floor": 0.1}),
    ("librispeech_960h.yaml", {"orth_norm": "L2_sqrt", "paper_rest_share": 0.177, "tau0": 2.0,
                               "adaptive_ffn_dropout": True}, {}, {}),
    ("tedlium2_simple_top_k.yaml", {"criterion": "count", "stage1_subnet": "annealed", "anneal_step": 4,
                                    "layerdrop_stage2": 0.4, "loss_weight": "paper1"},
     {"block_order": "conv_mhsa", "granularity": "module"}, {}),
    ("librispeech_960h_simple_top_k.yaml", {"criterion": "count", "stage1_subnet": "annealed", "anneal_step": 1,
                                            "straight_through": True, "loss_weight": "paper1"},
     {"granularity": "module", "hidden_size": 512}, {"lr_floor": 0.01}),
    ("librispeech_960h_iterative_zero_out.yaml", {"method": "iterative_zero_out", "criterion": "count",
                                                  "stage1_subnet": "annealed", "num_iterations": 16,
                                                  "stage1_fraction": 0.6},
     {"granularity": "module", "hidden_size": 512}, {}),
])
def test_paper_recipes_use_the_paper_values(name, selection, model, top):
    recipe = _recipe(name)
    config = SelectionConfig.from_dict(recipe["selection"])  # parses: every option known and in range
    values = {**vars(config), **config.method_options}
    assert {k: values[k] for k in selection} == selection
    assert {k: recipe["model"][k] for k in model} == model
    assert {k: recipe[k] for k in top} == top
    if config.criterion == "count":
        assert [recipe["subnets"][s]["target"] for s in ("small", "medium")] == [16, 32]  # of 48 modules


def test_dmao_recipe_uses_conv_before_mhsa():
    recipe = _recipe("librispeech_960h_dmao.yaml")
    assert recipe["model"]["block_order"] == "conv_mhsa" and recipe["dmao"]["update_every"] == 1000


def test_ebranchformer_dmao_recipe_builds_the_papers_model():
    """Paper 3's TED-LIUM recipe: a 12-block E-Branchformer d=512 of about 100M parameters, one event at 20 % with
    rho 0.2 and adjust_dropout, the LR falling to peak/10."""
    recipe = _recipe("tedlium2_ebranchformer_dmao.yaml")
    config = DynaSRConfig(**recipe["model"])
    with torch.device("meta"):
        params = sum(p.numel() for p in DynaSRForCTC(config).parameters())
    assert config.block_type == "ebranchformer" and 95e6 < params < 110e6
    dmao = DMAOConfig(**recipe["dmao"])
    assert (dmao.events, dmao.rho, dmao.adjust_dropout, dmao.init) == ([0.2], 0.2, True, "copy")
    assert recipe["lr_floor"] == 0.1 and recipe["learning_rate"] == 5.0e-4


# --- the one-unit conv LayerNorm -----------------------------------------------------------------------------
def test_conv_module_of_one_component_normalises_all_its_channels(features, tmp_path):
    """conv_norm "auto": a conv module that is one component has the papers' single LayerNorm over all channels;
    chunked conv modules (DMAO's units) keep the per-chunk norm; a config saved without the key loads as "chunk"."""
    x, mask = features
    whole = make_model(conv_granularity="module")
    chunked = make_model(conv_granularity="chunk")
    conv = whole.dynasr.layers[0].conv
    channels = conv.depthwise.out_channels
    assert conv.chunk == channels and chunked.dynasr.layers[0].conv.chunk == whole.config.conv_chunk_size
    h = torch.randn(2, 7, channels)
    with torch.no_grad():
        conv.norm_weight.uniform_(0.5, 1.5)
        conv.norm_bias.uniform_(-0.5, 0.5)
        expected = torch.nn.functional.layer_norm(h, (channels,), conv.norm_weight, conv.norm_bias, conv.eps)
        torch.testing.assert_close(conv.chunk_norm(h, None), expected)
        assert not torch.allclose(chunked.dynasr.layers[0].conv.chunk_norm(h, None), expected, atol=1e-3)
    # a subnet that drops whole conv modules still equals its extracted model
    kept = [c.id for c in whole.component_index if c.block != 1 or c.module != "conv"]
    whole.add_subnet("small", components=kept[:-3])
    with torch.no_grad():
        torch.testing.assert_close(whole.extract_subnet("small").eval()(x, attention_mask=mask).logits,
                                   whole(x, attention_mask=mask, subnet="small").logits, atol=1e-5, rtol=1e-4)
    old = whole.config.to_dict()
    del old["conv_norm"]
    legacy = DynaSRConfig.from_dict(old)
    assert legacy.conv_norm == "chunk" and DynaSRForCTC(legacy).dynasr.layers[0].conv.chunk == legacy.conv_chunk_size
    with pytest.raises(ValueError, match="conv_norm='group'.*allowed: auto, chunk"):
        make_model(conv_norm="group")


# --- paper 2's adaptive FFN dropout ---------------------------------------------------------------------------
def test_adaptive_ffn_dropout_scales_a_subnets_ffn_dropout_while_it_runs(features):
    x, mask = features
    model = make_model(hidden_dropout=0.1, activation_dropout=0.2).train()
    index = model.component_index
    # keep 1 of the 4 FFN1 chunks of block 0, all other components
    drop = [c.id for c in index if c.block == 0 and c.module == "ffn1"][1:]
    model.add_subnet("small", components=[c.id for c in index if c.id not in drop])
    seen = {}

    def record(name):
        def hook(module, *_):
            seen.setdefault(name, []).append((module.dropout.p, module.activation_dropout.p))
        return hook

    model.dynasr.layers[0].ffn1.register_forward_hook(record("b0.ffn1"))
    model.dynasr.layers[1].ffn1.register_forward_hook(record("b1.ffn1"))
    batch = {"input_features": x, "attention_mask": mask, "labels": torch.tensor([[5, 6, 7, -100], [8, 9, 10, 11]])}
    for adaptive in (True, False):
        seen.clear()
        supernet_loss(model, model, batch, [NetRun(FULL), NetRun("small")], 0, sizes=["small"], seed=0,
                      selection=SelectionConfig(adaptive_ffn_dropout=adaptive))
        small = (0.1 / 4, 0.2 / 4) if adaptive else (0.1, 0.2)
        assert seen["b0.ffn1"] == [pytest.approx((0.1, 0.2)), pytest.approx(small)]  # whole network, then small
        assert seen["b1.ffn1"] == [pytest.approx((0.1, 0.2))] * 2  # a module the subnet keeps whole
    assert (model.dynasr.layers[0].ffn1.dropout.p, model.dynasr.layers[0].ffn1.activation_dropout.p) == (0.1, 0.2)
    model.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="adaptive_ffn_dropout does not work with gradient checkpointing"):
        supernet_loss(model, model, batch, [NetRun(FULL), NetRun("small")], 0, sizes=["small"], seed=0,
                      selection=SelectionConfig(adaptive_ffn_dropout=True))


def test_adaptive_ffn_dropout_with_gradient_checkpointing_is_refused_before_training(tmp_path):
    args = parse_args(["--config", os.path.join(CONFIGS, "smoke.yaml"), "--dry_run", "--gradient_checkpointing",
                       "--output_dir", str(tmp_path / "run"), "--subnets", '{"small": 0.5}',
                       "--selection", '{"method": "ortho_softmax", "adaptive_ffn_dropout": true}'])
    try:
        with pytest.raises(SystemExit, match="adaptive_ffn_dropout does not work with --gradient_checkpointing"):
            dry_run(args)
    finally:
        AcceleratorState._reset_state(True)  # accelerate's process-wide singletons (as tests/test_dry_run.py)
    assert not (tmp_path / "run").exists()


# --- FLOPs costs ---------------------------------------------------------------------------------------------
def test_component_flops_follow_the_position_encoding():
    """Per-component FLOPs are cached per module shape; two configs that differ only in the position encoding
    (relative attention costs more per head) must not share an entry: total = rest + components with rest >= 0."""
    heads = {}
    for encoding in ("relative", "none"):
        config = DynaSRConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                              frontend_type="conv2d4x", frontend_channels=16, reference_duration_s=2.0,
                              position_encoding=encoding)
        costs = component_costs(DynaSRForCTC, config)
        assert costs.rest_flops > 0, encoding
        heads[encoding] = next(f for c, f in zip(ComponentIndex(config), costs.flops) if c.kind == "head")
    assert heads["relative"] > heads["none"]
