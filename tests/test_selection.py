"""Subnet selection (hf_dynasr.selection): Simple-Top-k, Iterative-Zero-Out, OrthoSoftmax on real tiny models."""

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_dynasr import DynaSRConfig, DynaSRForCTC
from hf_dynasr.selection import (
    METHODS,
    IterativeZeroOutSelector,
    OrthoSoftmaxSelector,
    SelectionConfig,
    SimpleTopKSelector,
    build_selector,
    orthogonality_penalty,
    soft_top_k,
)

TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    frontend_type="conv2d4x", frontend_channels=16, hidden_dropout=0.0, activation_dropout=0.0,
    attention_dropout=0.0, reference_duration_s=1.0,
)
# fractions above the never-pruned rest (params ~0.15-0.16, FLOPs ~0.24 of this tiny model)
SIZES = {"params": {"small": 0.45, "mid": 0.72}, "flops": {"small": 0.5, "mid": 0.75}}
TOTAL_STEPS = 20  # stage 1 = 12 steps


@pytest.fixture(scope="module")
def supernets():
    """Per granularity: (config, the initial model, component costs) — costs are measured once."""
    out = {}
    for granularity in ("module", "component"):
        config = DynaSRConfig(granularity=granularity, **TINY)
        torch.manual_seed(0)
        model = DynaSRForCTC(config)
        out[granularity] = (config, model, model.component_costs())
    return out


def fresh_model(supernets, granularity):
    """A copy of the initial model; the copy keeps the measured costs (no FLOPs measured again)."""
    _, model, _ = supernets[granularity]
    return copy.deepcopy(model)


def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 40, 80, generator=g), torch.randint(1, 30, (2, 4), generator=g)


def check_masks(selector, masks):
    costs = selector.component_cost
    assert list(masks) == list(selector.sizes)  # ascending fractions
    for name, ids in masks.items():
        assert ids == sorted(set(ids)) and all(isinstance(i, int) and 0 <= i < len(costs) for i in ids)
        assert ids, name
        kept, target = selector.kept_cost(ids), selector.target(name)
        assert abs(kept - target) <= max(costs), (name, kept, target)
    names = list(masks)
    for small, large in zip(names, names[1:]):
        assert set(masks[small]) <= set(masks[large])


# --- the fake schedule on a real model ----------------------------------------------------------------
CASES = [(m, g, c, {}) for m, g, c in itertools.product(METHODS, ("module", "component"), ("params", "flops"))]
CASES.append(("simple_top_k", "module", "params", {"straight_through": True}))


@pytest.mark.parametrize("method,granularity,criterion,extra", CASES, ids=lambda v: str(v) if v != {} else "")
def test_stage1_schedule_gives_nested_budget_masks(supernets, method, granularity, criterion, extra):
    torch.manual_seed(0)
    model = fresh_model(supernets, granularity).train()
    sizes = SIZES[criterion]
    selector = build_selector(
        method, model.component_costs(), sizes, criterion=criterion, total_steps=TOTAL_STEPS,
        index=model.component_index, **extra,
    )
    n = len(model.component_index)
    for name in sizes:
        model.add_subnet(name, components=None, criterion=criterion, target=selector.target(name))
    optimizer = torch.optim.Adam([*model.parameters(), *selector.parameters()], lr=3e-2)
    features, labels = batch()
    names, score_grad = list(sizes), 0.0
    for step in range(selector.stage1_steps()):
        name = names[step % len(names)]
        gates = selector.gates(name, step)
        assert gates.shape == (n,) and 0.0 <= float(gates.detach().min()) <= float(gates.detach().max()) <= 1.0
        drop = selector.layerdrop_components(step)
        assert drop.shape == (n,) and drop.dtype == torch.bool
        loss = model(features, labels=labels, subnet=name, component_gates=gates).loss
        loss = loss + selector.regularizer(name, step)
        optimizer.zero_grad()
        loss.backward()
        score_grad += float(selector.scores.grad.abs().sum())
        optimizer.step()
        selector.end_of_step(step)
    assert score_grad > 0.0

    info = selector.selection_stats()  # at the end of stage 1
    if method == "simple_top_k":
        assert int(selector.k) == selector.k_min == info["k"]
    elif method == "iterative_zero_out":  # the smallest size's budget is reached at the end of stage 1
        assert int(selector.iteration) == selector.num_iterations
        alive = [i for i in range(n) if not selector.zeroed[i]]
        assert selector.kept_cost(alive) <= selector.target("small")
        assert torch.equal(selector.layerdrop_components(0), selector.zeroed)
    else:
        assert info["orth_scale"] == 1.0 and info["tau"] < selector.hparams["tau0"]

    masks = selector.final_masks()
    check_masks(selector, masks)
    for name, ids in masks.items():
        model.add_subnet(name, components=ids, criterion=criterion, target=selector.target(name))
    small = model.extract_subnet("small").eval()
    with torch.no_grad():
        logits = small(features).logits
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()


# --- properties -------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.permutations(list(range(7))), st.integers(1, 7))
def test_orthogonality_penalty_is_zero_for_distinct_one_hot_rows(perm, k):
    rows = torch.eye(7, dtype=torch.float64)[perm[:k]]
    assert float(orthogonality_penalty(rows)) == 0.0
    if k >= 2:  # a repeated pick is penalised
        rows[1] = rows[0]
        assert float(orthogonality_penalty(rows)) > 0.0


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.lists(st.lists(st.floats(-6, 6), min_size=5, max_size=5), min_size=k, max_size=k)
    ),
    st.integers(0, 4),
)
def test_orthogonality_penalty_is_positive_for_soft_rows(logits, one_hot_rows):
    rows = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1)  # no row is one-hot
    rows[: min(one_hot_rows, len(rows) - 1)] = torch.eye(5, dtype=torch.float64)[: min(one_hot_rows, len(rows) - 1)]
    assert float(orthogonality_penalty(rows)) > 0.0


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(
    st.integers(1, 24).flatmap(
        lambda n: st.tuples(st.lists(st.floats(-30, 30), min_size=n, max_size=n), st.integers(1, n))
    ),
    st.sampled_from([1.0, 0.5, 2.0]),
)
def test_soft_top_k_sums_to_k_and_lies_in_unit_interval(scores_and_k, temperature):
    scores, k = scores_and_k
    out = soft_top_k(torch.tensor(scores), k, temperature=temperature)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert abs(float(out.sum()) - k) <= 1e-4 * max(k, 1)


def test_soft_top_k_matches_the_paper_relaxation_where_it_stays_below_one():
    out = soft_top_k(torch.full((8,), 0.5), 3)
    torch.testing.assert_close(out, torch.full((8,), 3 / 8))
    # far-apart scores: the plain relaxation gives (1.5, .25, .25); capped to 1 with the rest redistributed
    torch.testing.assert_close(soft_top_k(torch.tensor([10.0, 0.0, 0.0]), 2), torch.tensor([1.0, 0.5, 0.5]))


# --- resume -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_a_selector_resumed_after_a_reshape_keeps_its_saved_state(supernets, method):
    """After stage 1 a selector built on a model of another component count (a DMAO reshape since the checkpoint)
    takes the saved tensors as they are, in place, and logs no stale selection numbers; in stage 1 the mismatch
    is refused."""
    _, _, before = supernets["component"]
    _, _, after = supernets["module"]
    assert len(before.params) != len(after.params)
    kwargs = dict(criterion="params", total_steps=6, stage1_fraction=0.5)
    saved = build_selector(method, before, SIZES["params"], **kwargs)
    early = copy.deepcopy(saved.state_dict())  # at step 0: stage 1
    for step in range(4):
        saved.end_of_step(step)
    resumed = build_selector(method, after, SIZES["params"], **kwargs)
    with pytest.raises(RuntimeError, match="size mismatch"):
        resumed.load_state_dict(early)
    scores = resumed.scores
    resumed.load_state_dict(saved.state_dict())
    assert resumed.scores is scores and torch.equal(resumed.scores, saved.scores)  # the optimizer's Parameter
    assert resumed.state_dict().keys() == saved.state_dict().keys()
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in resumed.state_dict().items())
    assert resumed.describe(4) == saved.describe(4) == {"step": 4, "stage": 2}
    assert set(saved.describe(0)) > {"step", "stage"}  # stage 1 logs the method's numbers


@pytest.mark.parametrize("method", list(METHODS))
def test_state_dict_round_trip_mid_schedule(supernets, method):
    config, _, costs = supernets["component"]
    sizes = SIZES["params"]
    kwargs = dict(criterion="params", total_steps=30, num_iterations=4) if method == "iterative_zero_out" else \
        dict(criterion="params", total_steps=30)
    weights = torch.linspace(-1.0, 1.0, len(costs.params))

    def run(selector, steps):
        for step in steps:
            name = list(sizes)[step % 2]
            loss = (selector.gates(name, step) * weights).sum() + selector.regularizer(name, step)
            selector.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in selector.parameters():
                    p -= 0.5 * p.grad
            selector.end_of_step(step)

    a = build_selector(method, costs, sizes, **kwargs)
    run(a, range(10))
    state = copy.deepcopy(a.state_dict())
    b = build_selector(method, costs, sizes, **kwargs)
    with pytest.raises(ValueError, match="state_dict"):
        b.gates("small", 10)  # a resume without the selector state is caught
    b.load_state_dict(state)
    assert "step_count" in state
    assert {"simple_top_k": "k", "iterative_zero_out": "zeroed", "ortho_softmax": "tau"}[method] in state
    if method == "iterative_zero_out":
        assert int(state["iteration"]) >= 1 and bool(state["zeroed"].any())  # a zero-out happened before
    for name in sizes:
        assert torch.equal(a.gates(name, 10), b.gates(name, 10))
        assert torch.equal(a.regularizer(name, 10), b.regularizer(name, 10))
    assert torch.equal(a.layerdrop_components(10), b.layerdrop_components(10))
    assert a.describe(10) == b.describe(10)
    run(a, range(10, a.stage1_steps()))
    run(b, range(10, b.stage1_steps()))
    assert a.final_masks() == b.final_masks()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


# --- OrthoSoftmax specifics ---------------------------------------------------------------------------
def test_ortho_softmax_fills_colliding_argmaxes_deterministically(supernets):
    _, _, costs = supernets["component"]
    selector = OrthoSoftmaxSelector(costs, SIZES["params"], total_steps=10, init_noise=0.0)
    with torch.no_grad():
        selector.scores.zero_()
        selector.scores[:, 5] = 3.0  # every row's argmax is component 5
    masks = selector.final_masks()
    check_masks(selector, masks)
    assert 5 in masks["small"]  # the first row keeps it, later rows take their next best distinct picks


def test_ortho_softmax_converged_rows_give_the_paper_selection(supernets):
    _, _, costs = supernets["module"]
    n = len(costs.params)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    selector = OrthoSoftmaxSelector(costs, SIZES["params"], total_steps=10)
    with torch.no_grad():
        selector.scores.copy_(torch.eye(n)[perm] * 50.0)
        selector.tau.fill_(0.01)
    probs = selector.probabilities().detach()
    assert float(orthogonality_penalty(probs)) == 0.0
    masks = selector.final_masks()
    for name, p in selector.sizes.items():
        k = selector.prefix_length(probs, p)  # the paper's K(p) on the soft rows
        assert masks[name] == sorted(perm[:k].tolist())


# --- bad input ----------------------------------------------------------------------------------------
def test_bad_inputs_raise_with_the_allowed_values(supernets):
    _, _, costs = supernets["module"]
    with pytest.raises(ValueError, match="simple_top_k, iterative_zero_out, ortho_softmax"):
        build_selector("lottery", costs, {"small": 0.5}, total_steps=10)
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
            build_selector("ortho_softmax", costs, {"small": bad}, total_steps=10)
    with pytest.raises(ValueError, match="never-pruned rest"):
        build_selector("simple_top_k", costs, {"small": 0.01}, total_steps=10)
    with pytest.raises(ValueError, match="params, flops"):
        build_selector("iterative_zero_out", costs, {"small": 0.5}, criterion="latency", total_steps=10)
    with pytest.raises(ValueError, match="allowed: init_score"):
        build_selector("simple_top_k", costs, {"small": 0.5}, total_steps=10, tau0=1.0)
    with pytest.raises(ValueError, match="L2, L2_sqrt, L1"):
        build_selector("ortho_softmax", costs, {"small": 0.5}, total_steps=10, orth_norm="L3")
    selector = build_selector("simple_top_k", costs, {"small": 0.5}, total_steps=10)
    assert isinstance(selector, SimpleTopKSelector)
    with pytest.raises(ValueError, match="sizes: small"):
        selector.gates("tiny", 0)
    with pytest.raises(ValueError, match="end_of_step"):
        selector.gates("small", 3)
    assert isinstance(build_selector("iterative_zero_out", costs, {"a": 0.5}, total_steps=5), IterativeZeroOutSelector)


def test_schedules_are_fractions_of_the_run(supernets):
    _, _, costs = supernets["module"]  # N = 8
    topk = SimpleTopKSelector(costs, {"small": 0.45}, total_steps=100)  # stage 1 = 60 steps
    ks = []
    for step in range(topk.stage1_steps()):
        ks.append(int(topk.k))
        topk.end_of_step(step)
    assert ks[0] == 8 - 1 and ks[-1] == topk.k_min and ks == sorted(ks, reverse=True)
    assert len(set(ks)) == 8 - topk.k_min  # one annealing iteration per k value, r = 1
    zero = IterativeZeroOutSelector(costs, {"small": 0.45}, total_steps=100, num_iterations=4,
                                    first_iteration_fraction=0.5)
    assert zero.iteration_ends == [30, 40, 50, 60]
    ortho = OrthoSoftmaxSelector(costs, {"small": 0.45}, total_steps=100)
    assert ortho.tau_at(60) == pytest.approx(2.0 * 0.999992**439_200)  # the paper's LBS stage-1 end value
    assert ortho.orth_scale(30) == pytest.approx(0.5) and ortho.orth_scale(60) == 1.0


# --- the typed selection options ----------------------------------------------------------------------------
def test_selection_config_defaults_method_options_and_validation():
    config = SelectionConfig.from_dict(None)
    assert (config.method, config.criterion, config.stage1_fraction, config.loss_weight, config.layerdrop_stage1,
            config.layerdrop_stage2, config.method_options) == ("ortho_softmax", "params", 0.6, "paper1", 0.0, 0.1, {})
    config = SelectionConfig.from_dict({"method": "simple_top_k", "stage1_fraction": 0.4, "k_min": 3})
    assert config.stage1_fraction == 0.4 and config.method_options == {"k_min": 3} and config.learns_masks
    assert config.allowed_keys() == ("method", "criterion", "stage1_fraction", "loss_weight", "layerdrop_stage1",
                                     "layerdrop_stage2", "stage1_subnet", "distillation_weight", "adaptive_ffn_dropout",
                                     "paper_rest_share",
                                     *SimpleTopKSelector.DEFAULTS)
    with pytest.raises(ValueError, match=r"unknown selection option\(s\) \['tau0'\] for method 'simple_top_k'; "
                                         r"allowed keys: method, criterion, .*, init_score, anneal_step"):
        SelectionConfig.from_dict({"method": "simple_top_k", "tau0": 1.0})
    with pytest.raises(ValueError, match=r"\['num_iterations'\] for method 'fixed'; allowed keys: method, .*, "
                                         r"layerdrop_stage2, stage1_subnet, distillation_weight, adaptive_ffn_dropout, "
                                         r"paper_rest_share$"):
        SelectionConfig.from_dict({"method": "fixed", "num_iterations": 4})
    bad = {"method": "simple_top_k, iterative_zero_out, ortho_softmax, fixed", "criterion": "params, flops, count",
           "loss_weight": "paper1, focal"}
    for key, allowed in bad.items():
        with pytest.raises(ValueError, match=f"unknown selection.{key} 'x'; allowed: {allowed}"):
            SelectionConfig(**{key: "x"})
    for value in (0.0, 1.5, True):
        with pytest.raises(ValueError, match=r"stage1_fraction must be in \(0, 1\]"):
            SelectionConfig(stage1_fraction=value)
    with pytest.raises(ValueError, match=r"selection.layerdrop_stage2 must be in \[0, 1\)"):
        SelectionConfig(layerdrop_stage2=1.0)
    assert not SelectionConfig(method="fixed").learns_masks
