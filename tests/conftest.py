"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE is forced on."""

import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny test models: a second thread costs more than it gives


# --- model fixtures ---
TINY = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    frontend_type="conv2d4x",
    frontend_channels=16,
    hidden_dropout=0.0,
    activation_dropout=0.0,
    attention_dropout=0.0,
)


@pytest.fixture
def tiny_config():
    from hf_dynasr import DynaSRConfig

    return DynaSRConfig(**TINY)


def make_model(**overrides):
    from hf_dynasr import DynaSRConfig, DynaSRForCTC

    torch.manual_seed(0)
    return DynaSRForCTC(DynaSRConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def features():
    """Two utterances of 200 and 150 frames, padded: (input_features [2, 200, 80], attention_mask [2, 200])."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 200, 80, generator=g)
    mask = torch.ones(2, 200, dtype=torch.long)
    mask[1, 150:] = 0
    x[1, 150:] = 0.0
    return x, mask


# --- data fixtures ---
import shutil  # noqa: E402
import subprocess  # noqa: E402

#: Short sentences synthesized once per session with espeak-ng (22050 Hz mono WAV, about 1 s each).
CLIP_TEXTS = ("hello world", "open the door", "good morning", "a red cat", "come back soon", "she sells shells")


@pytest.fixture(scope="session")
def speech_clips(tmp_path_factory):
    """{text: path} of real speech clips made with espeak-ng (skips if espeak-ng is not installed)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install -y espeak-ng)")
    folder = tmp_path_factory.mktemp("speech_clips")
    clips = {}
    for i, text in enumerate(CLIP_TEXTS):
        path = folder / f"clip{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "190", "-w", str(path), text], check=True)
        clips[text] = path
    return clips


# --- training fixtures ---
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory):
    """A 40-utterance espeak/flite corpus (train/dev/test) made by scripts/synthesize_corpus.py."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smoke_corpus")
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "synthesize_corpus.py"), "--output_dir", str(out),
                    "--num_utterances", "40", "--seed", "0", "--dev_fraction", "0.1", "--test_fraction", "0.1"],
                   check=True, capture_output=True)
    return out


def corpus_subset(smoke_corpus, root, sizes):
    """A copy at `root` of the first N utterances of each split of the smoke corpus (`sizes`: {split: N})."""
    for split, n in sizes.items():
        (root / split).mkdir()
        lines = (smoke_corpus / split / "metadata.csv").read_text().splitlines()[: n + 1]
        (root / split / "metadata.csv").write_text("\n".join(lines) + "\n")
        for line in lines[1:]:
            name = line.split(",")[0]
            shutil.copy(smoke_corpus / split / name, root / split / name)
    return root


def run_train(args, *, launcher=None, env=None, check=True):
    """Run training/train.py in a subprocess (python, or a launcher prefix such as accelerate launch)."""
    import subprocess
    import sys

    cmd = (launcher or [sys.executable]) + [os.path.join(REPO, "training", "train.py")] + [str(a) for a in args]
    env = {"OMP_NUM_THREADS": "1", **os.environ, **(env or {})}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def train_in_process(args, callbacks=None):
    """Run `hf_dynasr.trainer.main` in this interpreter (no start-up cost), with accelerate's state reset before
    (another test may have built an Accelerator, whose settings, e.g. mixed precision, would carry over) and after."""
    from accelerate.state import AcceleratorState

    from hf_dynasr.trainer import main

    # accelerate keeps its state in process-wide singletons and offers no public reset; its own test cases
    # (accelerate.test_utils.AccelerateTestCase) reset them this way between runs
    AcceleratorState._reset_state(True)
    try:
        main([str(a) for a in args], callbacks=callbacks)
    finally:
        AcceleratorState._reset_state(True)


def build_data_args(corpus, tmp_path) -> list[str]:
    """Options for `build_data` tests: the smoke config on `corpus` (train and eval), 3 evaluation utterances."""
    return ["--config", os.path.join(REPO, "training", "configs", "smoke.yaml"), "--train_data",
            f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}", "--output_dir", str(tmp_path / "run"),
            "--max_eval_utterances", "3"]


@contextlib.contextmanager
def cpu_accelerator():
    """A fresh CPU `Accelerator`, accelerate's process-wide state reset before and after (see `train_in_process`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    try:
        yield Accelerator(cpu=True)
    finally:
        AcceleratorState._reset_state(True)


def train_and_resume(common, tmp_path, step: int = 3):
    """Train `common` (arguments without --output_dir, saving a checkpoint at `step`) into tmp_path/whole, then
    again into tmp_path/part resumed from that checkpoint; assert both end with the same weights bit for bit.
    Returns the whole run's folder."""
    from safetensors.torch import load_file

    whole, part = tmp_path / "whole", tmp_path / "part"
    train_in_process([*common, "--output_dir", whole])
    shutil.copytree(whole / "checkpoints" / f"step_{step}", part / "checkpoints" / f"step_{step}")
    shutil.copy(whole / "training_args.json", part / "training_args.json")
    train_in_process([*common, "--output_dir", part, "--resume_from_checkpoint", "latest"])
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (whole, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return whole


def mismatched_copy(path, dest):
    """A copy of the checkpoint folder `path` at `dest` whose config says block 1's ffn2 has 96 units while its
    weights have 128: a config that does not match the weights, for the loaders' error messages."""
    import json

    shutil.copytree(path, dest)
    config = json.loads((dest / "config.json").read_text())
    config["architecture_spec"][1]["ffn2"] = 96
    (dest / "config.json").write_text(json.dumps(config))
    return dest
