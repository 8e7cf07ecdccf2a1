"""The checks transformers' own common model tests make (tests/test_modeling_common.py there), written for DynaSR:
save/load round trips, loading info, missing keys, initialisation of every weight, batching equivalence,
determinism, hidden-state and attention outputs, return_dict, gradient to every parameter, the attention
backends (eager / sdpa / flex) and the relative positional encoding."""

import json

import pytest
import torch
from conftest import make_model
from transformers import AutoModel, AutoModelForCTC

import hf_dynasr  # noqa: F401  (registers the Auto classes)
from hf_dynasr import DynaSRForCTC, DynaSRModel
from hf_dynasr.models.dynasr.attention_dynasr import relative_positions, relative_shift
from hf_dynasr.models.dynasr.modeling_dynasr import DynaSREncoderOutput


def with_sizes(**overrides):
    """A tiny supernet with two nested sizes (a head and FFN chunks removed)."""
    model = make_model(**overrides)
    index = model.component_index
    every = set(range(len(index)))
    model.add_subnet("mid", components=sorted(every - set(index.ids(["b1.mhsa.h3"]))))
    model.add_subnet("small", components=sorted(every - set(index.ids(["b1.mhsa.h3", "b0.mhsa.h0", "b0.ffn1.c1",
                                                                       "b1.ffn2.c0"]))))
    return model


def padded_batch(frames=(120, 80, 45), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(frames), max(frames), 80)
    mask = torch.zeros(len(frames), max(frames), dtype=torch.long)
    for i, t in enumerate(frames):
        x[i, :t] = torch.randn(t, 80, generator=g)
        mask[i, :t] = 1
    return x, mask


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = with_sizes(position_encoding="relative")
    path = tmp_path_factory.mktemp("common") / "ckpt"
    model.save_pretrained(path)
    return path, model


def test_save_load_round_trip_keeps_outputs_and_config(saved, tmp_path):
    path, model = saved
    x, mask = padded_batch()
    reloaded = DynaSRForCTC.from_pretrained(path).eval()
    saved_config = {k: v for k, v in reloaded.config.to_dict().items() if k != "_name_or_path"}
    assert saved_config == {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    for size in ("full", "mid", "small"):
        torch.testing.assert_close(reloaded(x, mask, subnet=size).logits, model(x, mask, subnet=size).logits)
    small = model.extract_subnet("small")
    small.save_pretrained(tmp_path / "small")
    again = AutoModelForCTC.from_pretrained(tmp_path / "small").eval()
    torch.testing.assert_close(again(x, mask).logits, model(x, mask, subnet="small").logits)


def test_output_loading_info_whole_lazy_and_base(saved):
    path, model = saved
    loaded, info = DynaSRForCTC.from_pretrained(path, output_loading_info=True)
    assert isinstance(loaded, DynaSRForCTC) and loaded.config.active_subnet is None
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    compact, info = DynaSRForCTC.from_pretrained(path, subnet="small", output_loading_info=True)  # lazy path
    assert compact.config.active_subnet == "small" and not info["missing_keys"]
    compact, info = DynaSRForCTC.from_pretrained(path, subnet="small", output_loading_info=True,
                                                 attn_implementation="eager")  # regular path + extraction
    assert compact.config.active_subnet == "small" and compact.config._attn_implementation == "eager"
    # the encoder alone from a CTC checkpoint: the CTC output layers are reported, not silently dropped
    encoder, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert isinstance(encoder, DynaSRModel)
    assert "lm_head.weight" in info["unexpected_keys"] and not info["missing_keys"]


def test_missing_weight_is_refused_with_its_name(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = saved
    state = load_file(path / "model.safetensors")
    dropped = "dynasr.layers.0.mhsa.pos_bias_u"
    del state[dropped]
    (tmp_path / "ckpt").mkdir()
    save_file(state, tmp_path / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "ckpt" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(Exception, match=r"pos_bias_u"):
        DynaSRForCTC.from_pretrained(tmp_path / "ckpt")


def test_every_weight_is_initialised_by_init_weights():
    model = make_model()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    for module in model.modules():  # forget that post_init ran, as transformers' loader does for missing weights
        module.__dict__.pop("_is_hf_initialized", None)
    for param in model.parameters():
        param.__dict__.pop("_is_hf_initialized", None)
    model.initialize_weights()
    left = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not left, f"_init_weights does not set {left}"


@pytest.mark.parametrize("position_encoding", ["relative", "none"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_batching_equivalence_every_size(position_encoding, implementation):
    model = with_sizes(position_encoding=position_encoding)
    model.set_attn_implementation(implementation)
    x, mask = padded_batch()
    for size in ("full", "mid", "small"):
        batched = model(x, mask, subnet=size).logits  # [3, T', V]
        for i, frames in enumerate(mask.sum(-1).tolist()):
            alone = model(x[i:i + 1, :frames], subnet=size).logits
            torch.testing.assert_close(batched[i:i + 1, :alone.shape[1]], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("position_encoding", ["relative", "none"])
def test_attention_backends_agree_for_every_size_masked_and_extracted(position_encoding):
    model = with_sizes(position_encoding=position_encoding)
    x, mask = padded_batch()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            outputs[implementation] = {size: model(x, mask, subnet=size).logits for size in ("full", "mid", "small")}
    for size, logits in outputs["sdpa"].items():
        torch.testing.assert_close(logits, outputs["eager"][size], atol=2e-5, rtol=1e-4)
    compact = model.extract_subnet("small")
    assert compact.config._attn_implementation == "sdpa"
    torch.testing.assert_close(compact(x, mask).logits, outputs["eager"]["small"], atol=2e-5, rtol=1e-4)


def test_flex_attention_agrees_with_eager_for_every_size():
    model = with_sizes(position_encoding="relative")
    x, mask = padded_batch()
    with torch.no_grad():
        want = {size: model(x, mask, subnet=size).logits for size in ("full", "mid", "small")}
        model.set_attn_implementation("flex_attention")
        # static shapes: torch 2.13's CPU inductor failed to compile the dynamic-shape flex kernel that a second
        # head count triggers (a C++ compile error); each size compiles its own kernel instead
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            for size, logits in want.items():
                torch.testing.assert_close(model(x, mask, subnet=size).logits, logits, atol=2e-5, rtol=1e-4)


def test_flags_declare_the_supported_backends():
    assert DynaSRForCTC._supports_sdpa and DynaSRForCTC._supports_flex_attn and not DynaSRForCTC._supports_flash_attn
    assert make_model().config._attn_implementation == "sdpa"  # the default
    assert make_model().config.position_encoding == "none"  # the default, chosen by measurement (README)
    with pytest.raises(ValueError, match="does not support Flash Attention 2"):
        make_model().set_attn_implementation("flash_attention_2")


def test_determinism_in_eval_and_dropout_in_training():
    model = make_model(hidden_dropout=0.1, attention_dropout=0.1)
    x, mask = padded_batch()
    torch.testing.assert_close(model(x, mask).logits, model(x, mask).logits, atol=0, rtol=0)
    model.train()
    assert not torch.equal(model(x, mask).logits, model(x, mask).logits)
    assert torch.equal(make_model().lm_head.weight, make_model().lm_head.weight)  # same seed, same init


def test_hidden_states_attentions_and_return_dict():
    model = with_sizes(position_encoding="relative")
    model.set_attn_implementation("eager")
    x, mask = padded_batch()
    out = model(x, mask, subnet="small", output_hidden_states=True, output_attentions=True)
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1  # the frontend output, then each block's output
    assert all(h.shape == (3, x.shape[1] // 4, model.config.hidden_size) for h in out.hidden_states)
    assert len(out.attentions) == layers
    frames = x.shape[1] // 4
    assert out.attentions[0].shape == (3, 3, frames, frames)  # "small" keeps 3 heads of block 0
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(3, 3, frames))
    valid = mask.sum(-1) // 4
    assert out.attentions[0][2, :, :, valid[2]:].abs().max() == 0  # padded keys get no weight
    assert model(x, mask).hidden_states is None and model(x, mask).attentions is None
    model.config.output_hidden_states = True  # the config default is honoured
    assert len(model(x, mask).hidden_states) == layers + 1
    model.config.output_hidden_states = False
    as_tuple = model(x, mask, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], model(x, mask).logits)
    model.config.return_dict = False
    assert isinstance(model(x, mask), tuple)
    model.config.return_dict = True
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        model(x, mask, output_attentions=True)


def test_base_model_takes_attention_mask_and_returns_the_subsampled_mask(saved):
    path, model = saved
    x, mask = padded_batch()
    encoder = AutoModel.from_pretrained(path).eval()
    out = encoder(input_features=x, attention_mask=mask)
    assert isinstance(out, DynaSREncoderOutput)
    assert out.attention_mask.tolist() == (torch.arange(x.shape[1] // 4)[None] < (mask.sum(-1) // 4)[:, None]).long().tolist()
    torch.testing.assert_close(out.last_hidden_state, model.dynasr(x, mask).last_hidden_state)
    assert isinstance(encoder(x, mask, return_dict=False), tuple)


def test_gradient_reaches_every_parameter():
    model = with_sizes(position_encoding="relative").train()
    x, mask = padded_batch()
    labels = torch.randint(1, model.config.vocab_size, (3, 6), generator=torch.Generator().manual_seed(0))
    loss = sum(model(x, mask, labels=labels, subnet=size).loss for size in ("full", "mid", "small"))
    loss.backward()
    # pos_bias_u/v start at zero like Parakeet's, so their gradient is what moves them off it
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reaches {silent}"


def test_relative_shift_gives_each_pair_its_distance():
    time, heads = 5, 2
    distances = torch.arange(time - 1, -time, -1)  # the order of relative_positions: T-1 .. -(T-1)
    scores = distances.float().view(1, 1, 1, -1).expand(1, heads, time, -1).contiguous()  # score = distance
    shifted = relative_shift(scores)
    want = (torch.arange(time)[:, None] - torch.arange(time)[None, :]).float()  # i - j
    torch.testing.assert_close(shifted[0, 0], want)
    enc = relative_positions(time, 8, torch.zeros(1))
    assert enc.shape == (1, 2 * time - 1, 8)
    torch.testing.assert_close(enc[0, time - 1], torch.tensor([0.0, 1.0] * 4))  # distance 0: sin 0, cos 0


def test_relative_positions_make_attention_order_aware():
    # without positions a frame's attention output is the same wherever the frame stands among the same
    # frames (self-attention is permutation-equivariant); relative positions make it depend on the order
    for position_encoding, order_aware in (("none", False), ("relative", True)):
        model = make_model(position_encoding=position_encoding)
        with torch.no_grad():
            for layer in model.dynasr.layers:
                if position_encoding == "relative":
                    layer.mhsa.pos_bias_v.normal_()  # trained values; zero at init
        attention = model.dynasr.layers[0].mhsa
        hidden = torch.randn(1, 12, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        keep = torch.ones(1, 12, dtype=torch.bool)
        from hf_dynasr.models.dynasr.gating_dynasr import ModuleRoute

        perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
        out, _ = attention(hidden, keep, ModuleRoute())
        permuted, _ = attention(hidden[:, perm], keep, ModuleRoute())
        same = torch.allclose(permuted, out[:, perm], atol=1e-5)
        assert same != order_aware, position_encoding


def test_old_checkpoint_without_the_key_loads_as_none(tmp_path):
    model = make_model(position_encoding="none")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["position_encoding"]  # as written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = DynaSRForCTC.from_pretrained(tmp_path).eval()
    assert reloaded.config.position_encoding == "none"
    x, mask = padded_batch()
    torch.testing.assert_close(reloaded(x, mask).logits, model(x, mask).logits)


def test_position_encoding_is_validated():
    with pytest.raises(ValueError, match="position_encoding='rotary' is not supported; allowed: relative, none"):
        make_model(position_encoding="rotary")
