"""A non-editable install works on its own: the wheel carries the model-card templates (package data
`hf_dynasr.model_cards`, from the top-level `model_cards/`), the remote-code model files and the local
`evaluate` metric.

The wheel is built offline from a copy of the sources (so nothing is written into the checkout), installed
with `pip install --target`, and used from a fresh interpreter whose working directory is outside the
repository, so the editable checkout cannot be what it imports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "hf_dynasr", "model_cards")  # what the build reads

CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import evaluate
    import torch
    from huggingface_hub import ModelCard

    import hf_dynasr
    from hf_dynasr import DynaSRConfig, DynaSRForCTC, build_processor
    from hf_dynasr.export import export_subnets, template_dir

    torch.manual_seed(0)
    model = DynaSRForCTC(DynaSRConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, frontend_type="conv2d4x", frontend_channels=16))
    n = len(model.component_index)
    model.add_subnet("small", components=list(range(0, n, 3)))
    model.save_pretrained("ckpt")
    build_processor().save_pretrained("ckpt")
    folders = export_subnets("ckpt", "export", sizes=["small"], include_supernet=False)
    card = ModelCard.load(Path(folders["small"]) / "README.md")
    metric = evaluate.load(str(Path(hf_dynasr.__file__).parent / "evaluation" / "wer_metric"))
    wer = metric.compute(predictions=["hello word"], references=["Hello, world!"])["wer"]
    print(json.dumps({"package": hf_dynasr.__file__, "templates": str(template_dir()), "folders": folders,
                      "card_text": card.text, "card_data": card.data.to_dict(), "wer": wer}))
""")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow  # builds a wheel and starts a fresh interpreter
def test_wheel_install_exports_a_size_with_its_model_card(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO_ROOT / name, src / name)
    pip_env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # offline
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src],
         env=pip_env)
    (wheel,) = wheels.glob("hf_dynasr-*.whl")
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel], env=pip_env)
    assert (site / "hf_dynasr" / "model_cards" / "size.md").is_file()

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_DYNASR_CARD_TEMPLATES")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    proc = _run([sys.executable, "-c", CHILD], cwd=work, env=env)
    info = json.loads(proc.stdout.strip().splitlines()[-1])

    assert Path(info["package"]).resolve().is_relative_to(site.resolve()), info["package"]
    assert Path(info["templates"]).resolve().is_relative_to(site.resolve()), info["templates"]
    assert set(info["folders"]) == {"small"}
    small = work / "export" / "small"
    assert {"config.json", "model.safetensors", "README.md", "modeling_dynasr.py"} <= {p.name for p in small.iterdir()}
    assert info["card_data"]["pipeline_tag"] == "automatic-speech-recognition"
    assert "hf_dynasr" in info["card_data"]["tags"]
    assert "{{" not in info["card_text"] and "small" in info["card_text"]  # rendered, not the raw template
    assert info["wer"] == 0.5  # the local evaluate metric ships too, scoring with the installed package
