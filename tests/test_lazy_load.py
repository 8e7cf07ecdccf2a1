"""Lazy subnet loading (only the tensors a size needs are read) and pick_subnet.

Real tiny models and real safetensors files (tests/tiny_supernet.py).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import mismatched_copy
from tiny_supernet import TINY, supernet  # noqa: F401  (supernet is a fixture)
from tiny_supernet import tiny_features as _features


class _ReadSpy:
    """Wraps the lazy loader's one file-read function to record every tensor read and the bytes it read."""

    def __init__(self, monkeypatch):
        import hf_dynasr.models.dynasr.safetensors_dynasr as reader

        self.keys, self.bytes = [], 0
        real = reader.pread_into

        def spy(fd, view, offset, path, key):
            self.bytes += len(view)
            self.keys.append(key)
            return real(fd, view, offset, path, key)

        monkeypatch.setattr(reader, "pread_into", spy)


def test_lazy_load_reads_only_what_the_size_needs(supernet, monkeypatch):
    from hf_dynasr import DynaSRForCTC

    path, model = supernet
    spy = _ReadSpy(monkeypatch)
    lazy = DynaSRForCTC.from_pretrained(path, subnet="small")
    extracted = model.extract_subnet("small").eval()
    x, mask = _features()
    with torch.no_grad():
        assert torch.equal(lazy(x, mask).logits, extracted(x, mask).logits)
    needed = sum(t.numel() * t.element_size() for t in extracted.state_dict().values())
    assert spy.bytes == needed < 0.6 * (path / "model.safetensors").stat().st_size
    assert not any(k.startswith("subnet_heads.mid") or k == "lm_head.weight" for k in spy.keys)
    assert any(k.startswith("subnet_heads.small") for k in spy.keys)
    assert "dynasr.layers.0.conv.pointwise_in.weight" not in spy.keys  # block 0 conv is not in "small"
    assert lazy.config.active_subnet == "small" and not lazy.training
    half = DynaSRForCTC.from_pretrained(path, subnet="small", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_lazy_load_sharded_checkpoint(supernet, tmp_path):
    from hf_dynasr import DynaSRForCTC

    _, model = supernet
    model.save_pretrained(tmp_path, max_shard_size="150KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    lazy = DynaSRForCTC.from_pretrained(tmp_path, subnet="mid")
    assert hasattr(lazy, "lazy_load_info")
    x, mask = _features()
    with torch.no_grad():
        assert torch.equal(lazy(x, mask).logits, model.extract_subnet("mid")(x, mask).logits)


def test_lazy_load_errors(supernet, tmp_path):
    from hf_dynasr import DynaSRForCTC
    from hf_dynasr.models.dynasr.safetensors_dynasr import CheckpointFormatError, runs

    path, model = supernet
    assert runs([0, 1, 2, 7, 8, 3]) == [(0, 3), (7, 9), (3, 4)]
    with pytest.raises(ValueError, match=r"unknown subnet 'huge'; available: (mid, small|small, mid), full"):
        DynaSRForCTC.from_pretrained(path, subnet="huge")

    broken = tmp_path / "truncated"
    shutil.copytree(path, broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(OSError, match="truncated or corrupted") as err:
        DynaSRForCTC.from_pretrained(broken, subnet="small")
    assert str(weights) in str(err.value)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(path / "config.json", pickled / "config.json")
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="pickle"):
        DynaSRForCTC.from_pretrained(pickled, subnet="small")

    mismatch = mismatched_copy(path, tmp_path / "mismatch")
    with pytest.raises(ValueError, match=r"dynasr\.layers\.1\.ffn2\.linear_in\.weight.*\[128, 64\].*\[96, 64\]"):
        DynaSRForCTC.from_pretrained(mismatch, subnet="small")


# --- pick_subnet ------------------------------------------------------------------------------------------


def test_pick_subnet(supernet, tmp_path):
    from hf_dynasr.evaluation.budget import pick_subnet

    path, model = supernet
    small, mid = (model.config.subnets[n] for n in ("small", "mid"))
    assert pick_subnet(path, max_params=mid["num_parameters"] - 1) == "small"
    assert pick_subnet(path, max_params=mid["num_parameters"]) == "mid"
    assert pick_subnet(model, max_params=1e9) == "full"
    assert pick_subnet(path, max_flops=mid["flops"] + 1) == "mid"
    assert pick_subnet(path, max_params=1e9, max_flops=small["flops"]) == "small"
    with pytest.raises(ValueError, match=r"smallest size is 'small'.*parameters 72\.33k"):
        pick_subnet(path, max_params=1000)
    with pytest.raises(FileNotFoundError, match="--latency-table"):
        pick_subnet(path, max_latency_ms=100)

    timed = tmp_path / "timed"
    shutil.copytree(path, timed)
    (timed / "latency_table.json").write_text(json.dumps({"sizes": {
        "small": {"latency_ms": 10.0}, "mid": {"latency_ms": 20.0}, "full": {"latency_ms": 40.0}}}))
    assert pick_subnet(timed, max_latency_ms=25) == "mid"
    assert pick_subnet(timed, max_latency_ms=25, max_params=small["num_parameters"]) == "small"
    with pytest.raises(ValueError, match=r"'small'.*latency ms 10\.0"):
        pick_subnet(timed, max_latency_ms=5)

    from hf_dynasr import DynaSRConfig, DynaSRForCTC

    plain = tmp_path / "plain"
    DynaSRForCTC(DynaSRConfig(**TINY)).save_pretrained(plain)
    with pytest.raises(ValueError, match="no named subnets"):
        pick_subnet(plain, max_params=1e9)
