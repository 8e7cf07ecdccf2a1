"""DMAO grow-and-drop (hf_dynasr.dmao, paper 3) on a tiny real Conformer with AdamW and CTC training steps."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_dynasr import ComponentIndex, DynaSRConfig, DynaSRForCTC
from hf_dynasr.dmao import DMAO, DMAOConfig, architecture_table, unit_config
from hf_dynasr.models.dynasr.components_dynasr import component_params
from hf_dynasr.models.dynasr.modules_dynasr import MODULE_CLASSES

TOTAL = 100



def tiny_config(**kw):
    args = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                conv_granularity="chunk", frontend_type="conv2d4x", frontend_channels=16,
                hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0)
    args.update(kw)
    return DynaSRConfig(**args)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 48, 80, generator=g)
    labels = torch.randint(1, 30, (2, 4), generator=g)
    labels[1, 3] = -100
    return feats, labels


def setup(seed=0, named=False, **kw):
    torch.manual_seed(seed)
    model = DynaSRForCTC(tiny_config(**kw)).train()
    opt = torch.optim.AdamW(model.named_parameters() if named else model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def train(model, opt, sched, dmao=None, steps=2, start=0):
    for step in range(start, start + steps):
        feats, labels = batch(step)
        model(feats, labels=labels).loss.backward()
        if dmao is not None:
            dmao.observe(model, step)
        opt.step()
        sched.step()
        opt.zero_grad()


def unit_cost_max(config):
    cfg = unit_config(config)
    return max(component_params(cfg, c) for c in ComponentIndex(cfg))


def snapshot(opt):
    return {id(p): {k: v.clone() for k, v in opt.state[p].items()} for g in opt.param_groups for p in g["params"]}


def assert_consistent(model):
    """Config spec matches the weights: same keys and shapes as a fresh model built from the config."""
    fresh = DynaSRForCTC(model.config)
    ref = {k: v.shape for k, v in fresh.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == ref


def assert_moments(model, opt, before_params, before_state, report, old_config):
    """Every rebuilt parameter's AdamW moments = old moments sliced like the weights (kept + copies)."""
    old_units = ComponentIndex(unit_config(old_config))
    names = {c.name: c for c in old_units}
    params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.parameters()}
    for key, srcs in report["sources"].items():
        b, module = int(key.split(".")[0][1:]), key.split(".")[1]
        layer_mod = getattr(model.dynasr.layers[b], module)
        if not srcs:
            assert layer_mod is None
            continue
        units = torch.tensor([u for s in srcs for u in range(names[s].start, names[s].stop)])
        plan = MODULE_CLASSES[module].slice_plan(units, old_config.architecture_spec[b][module], old_config)
        for pname, param in layer_mod.named_parameters():
            old_param = before_params[f"dynasr.layers.{b}.{module}.{pname}"]
            expect_w = old_param.detach()
            if pname in plan:
                expect_w = expect_w.index_select(plan[pname][0], plan[pname][1])
            assert torch.equal(param.detach(), expect_w), (key, pname)  # init="copy": exact copies
            old_state, state = before_state[id(old_param)], opt.state[param]
            assert state["exp_avg"].shape == param.shape and state["exp_avg_sq"].shape == param.shape
            assert torch.equal(state["step"], old_state["step"])
            for k in ("exp_avg", "exp_avg_sq"):
                expect = old_state[k]
                if pname in plan:
                    expect = expect.index_select(plan[pname][0], plan[pname][1])
                assert torch.equal(state[k], expect), (key, pname, k)


# --- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(rho=0.0), "rho"), (dict(rho=1.5), "rho"), (dict(events=[0.0]), "events"),
    (dict(events=[1.2]), "events"), (dict(unit_kinds=("ffn", "attn")), "allowed: ffn, mhsa, conv, cgmlp"),
    (dict(score="obd"), "allowed: taylor, grad, weight"), 
    (dict(init="random"), "allowed: copy, function_preserving, random_split"),
    (dict(copy_state="zero"), "allowed: parent, fresh"),
    (dict(adjust_dropout="yes"), "adjust_dropout must be true or false"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DMAOConfig(**kwargs)


def test_dmao_event_in_the_supernets_stage_1_is_refused():
    """A selector learning masks (stage 1) cannot follow a reshape of the components: refused at parse time,
    naming the events, the stage-1 fraction and the way out; an event after stage 1 is accepted."""
    from hf_dynasr.trainer.options import parse_args

    supernet = ["--subnets", '{"small": 0.5}', "--selection", '{"method": "ortho_softmax", "stage1_fraction": 0.5}']
    with pytest.raises(SystemExit, match=r"dmao event\(s\) at \[0.3\].*stage1_fraction 0.5.*after stage 1"):
        parse_args([*supernet, "--dmao", '{"events": [0.3]}'])
    assert parse_args([*supernet, "--dmao", '{"events": [0.7]}']).dmao == {"events": [0.7]}
    assert parse_args(["--dmao", '{"events": [0.3]}']).dmao == {"events": [0.3]}  # no sizes: no selector


def test_event_outside_training():
    cfg = DMAOConfig(events=[0.05])
    with pytest.raises(ValueError, match="outside training"):
        cfg.event_steps(10)
    assert DMAOConfig(events=[0.5, 0.15]).event_steps(100) == [15, 50]


# --- scores --------------------------------------------------------------------------------------------------
def test_scores_from_existing_grads_ema_and_state(monkeypatch):
    model, opt, sched = setup()
    dmao = DMAO(model, DMAOConfig(update_every=2, beta=0.3), TOTAL)
    calls = {"n": 0}
    original = torch.autograd.backward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting)
    feats, labels = batch()
    model(feats, labels=labels).loss.backward()
    dmao.observe(model, 0)
    assert calls["n"] == 1  # no extra backward
    w = model.dynasr.layers[0].ffn1.linear_in.weight
    first = (w.grad * w)[:32].abs().mean()  # unit b0.ffn1.c0: its 32 rows of linear_in
    head = model.dynasr.layers[1].mhsa.out_proj.weight
    h2 = (head.grad * head)[:, 32:48].abs().mean()  # head 2: its columns of out_proj
    conv = model.dynasr.layers[2].conv.pointwise_in.weight
    c1 = (conv.grad * conv)[16:32].abs().mean()  # conv chunk 1: its value rows
    names = {c.name: c.id for c in dmao.index}
    s = dmao.scores()
    torch.testing.assert_close(s[names["b0.ffn1.c0"]], first)
    torch.testing.assert_close(s[names["b1.mhsa.h2"]], h2)
    torch.testing.assert_close(s[names["b2.conv.c1"]], c1)
    dmao.observe(model, 1)  # not an update step
    assert torch.equal(dmao.scores(), s)
    with torch.no_grad():
        w.grad.mul_(3.0)
    dmao.observe(model, 2)
    torch.testing.assert_close(dmao.scores()[names["b0.ffn1.c0"]], 0.3 * first + 0.7 * 3 * first)
    other = DMAO(model, DMAOConfig(update_every=2, beta=0.3), TOTAL)
    other.load_state_dict(dmao.state_dict())
    assert torch.equal(other.scores(), dmao.scores()) and other.num_updates == 2


# --- reshape -------------------------------------------------------------------------------------------------
def test_reshape_copy_budget_optimizer_roundtrip(tmp_path):
    model, opt, sched = setup()
    dmao = DMAO(model, DMAOConfig(update_every=1, events=[0.03]), TOTAL)
    train(model, opt, sched, dmao, steps=3)
    assert dmao.reshape_due(3) and not dmao.reshape_due(2)
    old_config = DynaSRConfig.from_dict(model.config.to_dict())
    before_params, before_state = dict(model.named_parameters()), snapshot(opt)
    report = dmao.reshape(model, opt, step=3)
    json.dumps(report)
    assert not dmao.reshape_due(4)
    assert report["dropped"] and report["grown"] and report["after"] == model.config.architecture_spec
    assert 0 <= report["params_after"] - report["params_before"] < unit_cost_max(model.config)
    assert report["params_after"] == sum(p.numel() for p in model.parameters())
    assert_consistent(model)
    assert_moments(model, opt, before_params, before_state, report, old_config)
    assert len(dmao.scores()) == len(model.component_index) == len(dmao.index)
    lr = opt.param_groups[0]["lr"]
    train(model, opt, sched, dmao, steps=2, start=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr * 4 / 6)  # 1/(1+3) -> 1/(1+5)
    assert all(opt.state[p]["step"] == 5 for p in model.parameters())
    assert "ffn1" in architecture_table(report["after"], model.config)

    model.eval()
    feats, _ = batch(9)
    model.save_pretrained(tmp_path)
    loaded = DynaSRForCTC.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats).logits, model(feats).logits)
    ids = list(range(0, len(model.component_index), 2))
    model.add_subnet("small", ids)
    small = model.extract_subnet("small").eval()
    with torch.no_grad():
        torch.testing.assert_close(small(feats).logits, model(feats, subnet="small").logits, atol=1e-5, rtol=1e-4)


def silence(model, dmao, names):
    """Zero the outgoing weights of these units and make them the lowest-scored, so dropping them does
    not change the output and any difference comes from growth alone."""
    state = dmao.state_dict()
    for comp in dmao.index:
        if comp.name not in names:
            continue
        state["scores"][comp.id] = -1.0
        module = getattr(model.dynasr.layers[comp.block], comp.module)
        size = model.config.architecture_spec[comp.block][comp.module]
        plan = MODULE_CLASSES[comp.module].slice_plan(torch.arange(comp.start, comp.stop), size, model.config)
        with torch.no_grad():
            for pname, (dim, idx, outgoing) in plan.items():
                if outgoing:
                    module.get_parameter(pname).index_fill_(dim, idx, 0.0)
    dmao.load_state_dict(state)


def test_function_preserving_and_copy_scores():
    model, opt, sched = setup(seed=1)
    dmao = DMAO(model, DMAOConfig(update_every=1, init="function_preserving", rho=0.1), TOTAL)
    train(model, opt, sched, dmao, steps=2)
    silent = {"b0.ffn2.c0", "b0.ffn2.c1", "b0.ffn2.c2", "b1.mhsa.h0", "b2.conv.c0"}
    silence(model, dmao, silent)
    state = dmao.state_dict()
    top = {"b2.ffn1.c3", "b0.mhsa.h1", "b1.conv.c2"}  # grow one unit of each kind first
    for comp in dmao.index:
        if comp.name in top:
            state["scores"][comp.id] = 100.0
    dmao.load_state_dict(state)
    feats, _ = batch(5)
    model.eval()
    with torch.no_grad():
        before = model(feats).logits
    old_scores, old_names = dmao.scores(), [c.name for c in dmao.index]
    report = dmao.reshape(model, opt)
    with torch.no_grad():
        after = model(feats).logits
    assert set(report["dropped"]) == silent and top <= set(report["grown"])
    assert (after - before).abs().max() <= 1e-5
    # kept units keep their scores; copies inherit their parent's
    new = dmao.scores()
    for key, srcs in report["sources"].items():
        comps = [c for c in dmao.index if c.name.startswith(key + ".")]
        for comp, src in zip(comps, srcs):
            assert new[comp.id] == old_scores[old_names.index(src)]
    model.train()
    train(model, opt, sched, dmao, steps=1, start=2)


def test_module_losing_all_units_is_skipped_and_subnets_remapped():
    model, opt, sched = setup(conv_granularity="module", named=True)  # model index coarser than DMAO's
    model.add_subnet("most", list(range(len(model.component_index) - 3)))
    dmao = DMAO(model, DMAOConfig(update_every=1, rho=0.1, noise_std=0.01), TOTAL)
    train(model, opt, sched, dmao, steps=1)
    state = dmao.state_dict()
    scores = torch.ones(len(dmao.index)) + torch.arange(len(dmao.index)) * 1e-3
    for c in dmao.index.by_module[(1, "mhsa")]:
        scores[c.id] = 0.0
    state["scores"] = scores
    dmao.load_state_dict(state)
    report = dmao.reshape(model, opt)
    assert model.dynasr.layers[1].mhsa is None and model.config.architecture_spec[1]["mhsa"] == 0
    assert model.config.granularity == "component" and model.config.conv_granularity == "module"
    assert report["sources"]["b1.mhsa"] == []
    key = next(k for k, v in report["sources"].items() if len(set(v)) < len(v) and k.split(".")[1] != "mhsa")
    srcs, module = report["sources"][key], getattr(model.dynasr.layers[int(key[1])], key.split(".")[1])
    copy_pos = next(j for j, s in enumerate(srcs) if srcs.index(s) < j)
    width = model.config.ffn_chunk_size if "ffn" in key else model.config.conv_chunk_size
    weight = (module.linear_in if "ffn" in key else module.pointwise_in).weight.detach()
    parent, child = (weight[p * width:(p + 1) * width] for p in (srcs.index(srcs[copy_pos]), copy_pos))
    assert 0 < (child - parent).abs().max() < 0.1  # noise_std=0.01 on the copy only
    assert_consistent(model)
    names = {id(p): n for n, p in model.named_parameters()}
    group = opt.param_groups[0]
    assert group["param_names"] == [names[id(p)] for p in group["params"]]
    train(model, opt, sched, dmao, steps=2, start=1)
    entry = model.config.subnets["most"]
    assert entry["components"] and entry["num_parameters"] < sum(p.numel() for p in model.parameters())
    model.eval()
    feats, _ = batch(3)
    with torch.no_grad():
        torch.testing.assert_close(model.extract_subnet("most").eval()(feats).logits,
                                   model(feats, subnet="most").logits, atol=1e-5, rtol=1e-4)


def test_accelerated_optimizer_and_reduce():
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt, sched = setup(seed=2)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    dmao = DMAO(model, DMAOConfig(update_every=1, unit_kinds=("ffn",)), TOTAL)
    train(model, opt, sched, dmao, steps=2)
    scores = dmao.scores()
    dmao.reduce_scores(accelerator)
    torch.testing.assert_close(dmao.scores(), scores)
    report = dmao.reshape(model, opt)
    assert all(n.split(".")[1] in ("ffn1", "ffn2") for n in report["dropped"] + report["grown"])
    inner = {id(p) for g in opt.optimizer.param_groups for p in g["params"]}
    assert inner == {id(p) for p in accelerator.unwrap_model(model).parameters()}
    train(model, opt, sched, dmao, steps=1, start=2)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), rho=st.floats(0.05, 0.9),
       kinds=st.sampled_from([("ffn", "mhsa", "conv"), ("conv",), ("mhsa", "ffn")]))
def test_budget_property(seed, rho, kinds):
    """Any scores, any rho: budget <= params after < budget + one unit; spec matches the weights; runs."""
    torch.manual_seed(0)
    model = DynaSRForCTC(tiny_config(num_hidden_layers=2)).eval()
    dmao = DMAO(model, DMAOConfig(rho=rho, unit_kinds=kinds), TOTAL)
    state = dmao.state_dict()
    state["scores"] = torch.rand(len(dmao.index), generator=torch.Generator().manual_seed(seed))
    dmao.load_state_dict(state)
    report = dmao.reshape(model)
    assert 0 <= report["params_after"] - report["params_before"] < unit_cost_max(model.config)
    assert_consistent(model)
    with torch.no_grad():
        assert torch.isfinite(model(batch()[0]).logits).all()


# --- symmetry breaking ------------------------------------------------------------------------------------
def grown_gap(steps=3, **cfg):
    """Max |copy - parent| over the incoming rows (linear_in) of a grown FFN chunk after `steps` training steps
    with every dropout off (tiny_config)."""
    model, opt, sched = setup(seed=2)
    dmao = DMAO(model, DMAOConfig(update_every=1, rho=0.05, **cfg), TOTAL)
    train(model, opt, sched, dmao, steps=2)
    state = dmao.state_dict()
    names = {c.name: c.id for c in dmao.index}
    state["scores"][names["b1.ffn1.c0"]] = 100.0  # grown first
    dmao.load_state_dict(state)
    report = dmao.reshape(model, opt)
    assert "b1.ffn1.c0" in report["grown"]
    srcs = report["sources"]["b1.ffn1"]
    copy_pos = next(j for j, s in enumerate(srcs) if s == "b1.ffn1.c0" and srcs.index(s) < j)
    train(model, opt, sched, dmao, steps=steps, start=2)
    width = model.config.ffn_chunk_size
    weight = model.dynasr.layers[1].ffn1.linear_in.weight.detach()
    parent, child = (weight[p * width:(p + 1) * width] for p in (srcs.index("b1.ffn1.c0"), copy_pos))
    return float((child - parent).abs().max())


def test_exact_copies_stay_clones_without_dropout():
    """The paper's init (exact copies, parent moments): with no dropout the copy keeps its parent's weights."""
    assert grown_gap(steps=0) == 0.0  # the copy starts as its parent
    assert grown_gap() < 1e-6


@pytest.mark.parametrize("cfg", [dict(init="random_split"), dict(copy_state="fresh"), dict(noise_std=1e-3)])
def test_symmetry_breaking_copies_diverge_without_dropout(cfg):
    """Each symmetry-breaking option makes a grown unit's weights differ from its parent's after a few steps
    with all dropout off (the incoming rows of "random_split" and "fresh" copies start equal to the parent's)."""
    assert grown_gap(**cfg) > 1e-4, cfg


def test_random_split_shares_sum_to_the_parent():
    """random_split: a grown FFN chunk's outgoing columns (parent + copy) add up to the parent's before growth."""
    model, opt, sched = setup(seed=3)
    dmao = DMAO(model, DMAOConfig(update_every=1, rho=0.05, init="random_split"), TOTAL)
    train(model, opt, sched, dmao, steps=1)
    state = dmao.state_dict()
    state["scores"][next(c.id for c in dmao.index if c.name == "b0.ffn2.c1")] = 100.0
    dmao.load_state_dict(state)
    width = model.config.ffn_chunk_size
    old = model.dynasr.layers[0].ffn2.linear_out.weight.detach()[:, width:2 * width].clone()
    report = dmao.reshape(model, opt)
    srcs = report["sources"]["b0.ffn2"]
    copy_pos = next(j for j, s in enumerate(srcs) if s == "b0.ffn2.c1" and srcs.index(s) < j)
    new = model.dynasr.layers[0].ffn2.linear_out.weight.detach()
    parent, child = new[:, srcs.index("b0.ffn2.c1") * width:][:, :width], new[:, copy_pos * width:][:, :width]
    torch.testing.assert_close(parent + child, old)
    share = parent / old
    assert share.min() > 1 / 4 - 1e-6 and share.max() < 3 / 4 + 1e-6 and share.std() > 0.01


def test_adjust_dropout_scales_with_module_size_and_survives_a_resume(tmp_path):
    """adjust_dropout (paper 3's TED-LIUM config): an FFN / MHSA module's dropout is the config's rate times its
    size over the nominal size after an event; a model saved after the event and given a new DMAO (a resume)
    gets the same rates; without the option the rates stay the config's."""
    rates = {"hidden_dropout": 0.1, "activation_dropout": 0.2, "attention_dropout": 0.1}
    model, opt, sched = setup(seed=4, **rates)
    dmao = DMAO(model, DMAOConfig(update_every=1, rho=0.1, adjust_dropout=True), TOTAL)
    train(model, opt, sched, dmao, steps=1)
    state = dmao.state_dict()
    names = {c.name: c.id for c in dmao.index}
    state["scores"] = torch.ones(len(dmao.index))
    state["scores"][names["b2.ffn1.c0"]] = 100.0  # grown
    for c in ("b0.ffn2.c0", "b0.ffn2.c1", "b1.mhsa.h0"):
        state["scores"][names[c]] = 0.0  # dropped
    dmao.load_state_dict(state)
    dmao.reshape(model, opt)
    spec = model.config.architecture_spec
    assert spec[2]["ffn1"] > 128 and spec[0]["ffn2"] < 128 and spec[1]["mhsa"] == 3

    def rates_of(m):
        layers = m.dynasr.layers
        return (layers[2].ffn1.dropout.p, layers[2].ffn1.activation_dropout.p, layers[0].ffn2.activation_dropout.p,
                layers[1].mhsa.attention_dropout, layers[0].mhsa.dropout.p)

    got = rates_of(model)
    expect = (0.1 * spec[2]["ffn1"] / 128, 0.2 * spec[2]["ffn1"] / 128, 0.2 * spec[0]["ffn2"] / 128, 0.1 * 3 / 4,
              0.1 * spec[0]["mhsa"] / 4)
    assert got == pytest.approx(expect)
    model.save_pretrained(tmp_path / "after")
    resumed = DynaSRForCTC.from_pretrained(tmp_path / "after").train()
    assert rates_of(resumed) != pytest.approx(expect)  # the config alone gives the nominal rates
    DMAO(resumed, DMAOConfig(update_every=1, rho=0.1, adjust_dropout=True), TOTAL)
    assert rates_of(resumed) == pytest.approx(expect)
    plain, opt2, sched2 = setup(seed=4, **rates)
    other = DMAO(plain, DMAOConfig(update_every=1, rho=0.1), TOTAL)
    train(plain, opt2, sched2, other, steps=1)
    other.load_state_dict(state)
    other.reshape(plain, opt2)
    assert rates_of(plain) == pytest.approx((0.1, 0.2, 0.2, 0.1, 0.1))


def test_conv_of_one_component_with_a_single_norm_is_logged(caplog):
    """A conv module that is one component has one LayerNorm over all channels (conv_norm auto): DMAO says that
    moving its chunks changes the others' normalisation and how to normalise each chunk apart."""
    with caplog.at_level("INFO", logger="hf_dynasr.dmao.grow_and_drop"):
        DMAO(setup(conv_granularity="module")[0], DMAOConfig(), TOTAL)
    assert "set conv_granularity or conv_norm to chunk" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_dynasr.dmao.grow_and_drop"):
        DMAO(setup(conv_granularity="module", conv_norm="chunk")[0], DMAOConfig(), TOTAL)
        DMAO(setup()[0], DMAOConfig(), TOTAL)  # conv chunks are components
    assert "conv_norm" not in caplog.text
