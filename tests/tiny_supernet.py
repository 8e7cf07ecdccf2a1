"""A tiny saved supernet with distinct per-size heads, shared by the export/Hub and lazy-loading tests.

Import the fixture into a test module (`from tiny_supernet import supernet`); module scope builds it once per module.
"""

import pytest
import torch

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            frontend_type="conv2d4x", frontend_channels=16)


def tiny_features(batch=2, frames=200, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 80, generator=g)
    mask = torch.ones(batch, frames, dtype=torch.long)
    if batch > 1:
        mask[1, frames * 2 // 3:] = 0
    return x, mask


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    from hf_dynasr import DynaSRConfig, DynaSRForCTC, build_processor

    torch.manual_seed(0)
    model = DynaSRForCTC(DynaSRConfig(**TINY)).eval()
    n = len(model.component_index)
    model.add_subnet("small", components=list(range(0, n, 3)))
    model.add_subnet("mid", components=list(range(0, n, 3)) + [1, 4, 7])
    with torch.no_grad():  # distinct heads, so a wrong head would show in the logits
        for i, head in enumerate(model.subnet_heads.values()):
            head.weight.add_(0.1 * (i + 1))
    path = tmp_path_factory.mktemp("ckpt") / "supernet_ckpt"
    model.save_pretrained(path)
    build_processor().save_pretrained(path)
    return path, model
