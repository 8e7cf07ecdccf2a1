"""Property tests: random architecture specs and masks on tiny models.

- extraction equals the masked forward (<= 1e-4) and has exactly the recorded size;
- DynaSRConfig to_dict / from_dict (and JSON) round-trips;
- any spec that validates builds, saves and loads (whole model, and a size loaded lazily).
Tiny dims (d=16, chunks of 4 units), few examples each, no example database written.
"""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hf_dynasr import DynaSRConfig, DynaSRForCTC

SETTINGS = settings(max_examples=15, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
BASE = dict(hidden_size=16, num_attention_heads=2, intermediate_size=16, conv_channels=16, conv_kernel_size=3,
            frontend_type="conv2d4x", frontend_channels=8, hidden_dropout=0.0, activation_dropout=0.0,
            attention_dropout=0.0, reference_duration_s=1.0)  # ffn_chunk_size = conv_chunk_size = 4
TOL = 1e-4



def _block(ffn=st.integers(0, 6).map(lambda n: 4 * n), heads=st.integers(0, 3),
           conv=st.integers(0, 5).map(lambda n: 4 * n)):
    return st.fixed_dictionaries({"ffn1": ffn, "mhsa": heads, "conv": conv, "ffn2": ffn})


@st.composite
def configs(draw, block=None):
    """Valid configs: 1-2 blocks of random module sizes (multiples of the chunk sizes, zeros allowed)."""
    spec = draw(st.lists(block or _block(), min_size=1, max_size=2))
    return DynaSRConfig(**BASE, num_hidden_layers=len(spec), architecture_spec=spec,
                        granularity=draw(st.sampled_from(["module", "component"])),
                        conv_granularity=draw(st.sampled_from(["module", "chunk"])))


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 40, 80, generator=g)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 28:] = 0
    return x, mask


def _model(config, seed):
    torch.manual_seed(seed)
    model = DynaSRForCTC(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong slice shows in the logits
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@SETTINGS
@given(config=configs(), data=st.data(), seed=st.integers(0, 2**16))
def test_extraction_equals_masked_forward(config, data, seed):
    model = _model(config, seed)
    n = len(model.component_index)
    with pytest.raises(ValueError, match="keeps no component"):  # an empty mask is refused, never a net of nothing
        model.add_subnet("empty", components=[])
    if n == 0:  # every module of every block is absent: no component to keep
        return
    ids = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
    entry = model.add_subnet("s", components=ids, criterion="manual")
    x, mask = _features(seed)
    with torch.no_grad():
        masked = model(x, mask, subnet="s").logits
        compact = model.extract_subnet("s").eval()
        extracted = compact(x, mask).logits
    assert masked.shape == extracted.shape
    assert (masked - extracted).abs().max() <= TOL
    assert compact.num_parameters() == entry["num_parameters"]


@SETTINGS
@given(config=configs(), data=st.data())
def test_config_round_trips(config, data):
    n = config.num_components
    ids = sorted(data.draw(st.sets(st.integers(0, max(0, n - 1)), max_size=n))) if n else []
    config.subnets = {"s": {"components": ids, "criterion": "manual", "target": None}}
    config.active_subnet = data.draw(st.sampled_from([None, "s"]))
    as_dict = config.to_dict()
    again = DynaSRConfig.from_dict(as_dict)
    assert again.to_dict() == as_dict
    assert DynaSRConfig.from_dict(json.loads(config.to_json_string())).to_dict() == as_dict
    assert again.architecture_spec == config.architecture_spec and again.subnets == config.subnets


# Raw sizes, not always multiples of the chunk sizes: invalid specs must be refused, valid ones must work.
_RAW = _block(ffn=st.sampled_from([0, 3, 4, 8, 12, 20]), heads=st.integers(0, 3), conv=st.sampled_from([0, 4, 6, 12]))


@settings(SETTINGS, max_examples=30)  # about half the raw specs are refused
@given(spec=st.lists(_RAW, min_size=1, max_size=2), data=st.data(), seed=st.integers(0, 2**16))
def test_any_valid_spec_builds_saves_and_loads(spec, data, seed):
    try:
        config = DynaSRConfig(**BASE, num_hidden_layers=len(spec), architecture_spec=spec,
                              conv_granularity=data.draw(st.sampled_from(["module", "chunk"])))
    except ValueError as err:
        assert "not a multiple of its chunk size" in str(err)
        event("refused")
        return
    event("valid")
    model = _model(config, seed)
    n = len(model.component_index)
    if n:
        model.add_subnet("s", components=sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))))
    x, mask = _features(seed)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        loaded = DynaSRForCTC.from_pretrained(tmp).eval()
        assert loaded.config.architecture_spec == spec
        state, reloaded = model.state_dict(), loaded.state_dict()
        assert state.keys() == reloaded.keys() and all(torch.equal(state[k], reloaded[k]) for k in state)
        with torch.no_grad():
            assert torch.equal(loaded(x, mask).logits, model(x, mask).logits)
            if n:
                lazy = DynaSRForCTC.from_pretrained(tmp, subnet="s")
                assert (lazy(x, mask).logits - model(x, mask, subnet="s").logits).abs().max() <= TOL
