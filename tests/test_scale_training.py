"""Training as it runs at scale, checked with CPU processes: the learning rate is a function of the optimizer
update whatever the number of processes and accumulation steps; distributed evaluation scores what one process
scores; mixed precision follows the launcher (bf16 autocast on the CPU, the CTC log-softmax in fp32, the
non-finite guard still on; fp16 refused on the CPU); the rank-synchronisation check is a bounded digest."""

import pytest
import torch
from conftest import run_train, train_in_process
from fault_injection import Faults
from test_training import DDP_LAUNCHER, SMOKE, _data_args, _results

from hf_dynasr.data import DataCollatorCTCWithPadding, load_speech_dataset, prepare_dataset
from hf_dynasr.data.processing import build_processor
from hf_dynasr.evaluation import evaluate_sizes
from hf_dynasr.models.dynasr import DynaSRForCTC
from hf_dynasr.trainer import TrainerCallback
from hf_dynasr.trainer.reports import ChoiceDigest, same_digests
from hf_dynasr.trainer.schedule import build_scheduler

STEPS = 6
SUPERNET = ["--subnets", '{"small": 0.5, "mid": 0.75}',
            "--selection", '{"method": "ortho_softmax", "criterion": "flops", "stage1_fraction": 0.5}']
# 7 evaluation utterances in batches of 2: rank 0 scores batches 0-1, rank 1 batches 2-3 (the last one short)
EVAL = ["--eval_split", "train", "--max_eval_utterances", "7", "--per_device_eval_batch_size", "2"]


def _common(corpus):
    return ["--config", SMOKE, *_data_args(corpus), "--max_steps", STEPS, "--save_steps", "0", "--logging_steps", "1",
            *SUPERNET, *EVAL]


def _expected_lr(steps=STEPS, peak=2e-3):
    """The smoke config's one-cycle schedule after 1..steps updates."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    schedule = build_scheduler(optimizer, "one_cycle", steps, warmup_fraction=0.2, decay_fraction=0.6)
    lrs = []
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        lrs.append(schedule.get_last_lr()[0])
    return lrs


@pytest.fixture(scope="module")
def ddp_run(smoke_corpus, tmp_path_factory):
    """One 2-process CPU DDP supernet run of STEPS updates (accelerate launch, gloo)."""
    out = tmp_path_factory.mktemp("scale") / "ddp"
    run_train([*_common(smoke_corpus), "--output_dir", out, "--num_processes", "2"], launcher=DDP_LAUNCHER,
              env={"ACCELERATE_USE_CPU": "1"})
    return out


def test_learning_rate_per_update_with_two_processes_or_accumulation(ddp_run, smoke_corpus, tmp_path):
    """Two processes and one process accumulating two batches per update log the same learning rate at every
    update: the schedule's, which reaches its end exactly at max_steps."""
    single = tmp_path / "single"
    run_train([*_common(smoke_corpus), "--output_dir", single, "--gradient_accumulation_steps", "2"])
    two, one = _results(ddp_run), _results(single)
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    expected = _expected_lr()
    for results in (two, one):
        assert [h["step"] for h in results["history"]] == list(range(1, STEPS + 1))
        assert [h["lr"] for h in results["history"]] == pytest.approx(expected, rel=1e-12)
    assert expected[-1] == pytest.approx(2e-3 * 1e-8 / 4e-4)  # the one-cycle's floor, reached at the last update
    assert min(expected[:-1]) > 100 * expected[-1]  # and not before


def test_distributed_evaluation_scores_like_one_process(ddp_run, smoke_corpus):
    """The final evaluation of the 2-process run (each rank scored its batches) equals one process evaluating
    final/ on the same utterances: every size, every count, no utterance dropped or counted twice."""
    results = _results(ddp_run)["eval"]
    final = ddp_run / "final"
    model = DynaSRForCTC.from_pretrained(final).eval()
    processor = build_processor()
    raw = load_speech_dataset(f"audiofolder:{smoke_corpus}", split="train").select(range(7))
    eval_ds, _ = prepare_dataset(raw, processor.feature_extractor, processor.tokenizer, min_duration_s=0.0,
                                 max_duration_s=None)
    collator = DataCollatorCTCWithPadding(processor.feature_extractor)
    alone = evaluate_sizes(model, eval_ds, collator, processor.tokenizer, batch_size=2)
    assert set(results) == set(alone) == {"full", "small", "mid"}
    for name, mine in alone.items():
        assert mine["utterances"] == 7 and mine["num_words"] > 0
        assert results[name] == mine, name  # wer, cer, every count, the first samples in the order of the set


def test_ranks_agree_through_a_bounded_digest(ddp_run):
    """Both ranks' digests of the nets every batch ran are equal, checked at each logging step and at the end;
    the record in training_results.json does not grow with the steps."""
    choices = _results(ddp_run)["subnet_choices"]
    assert set(choices) == {"batches", "checks", "rank_digests"}
    assert choices["batches"] == STEPS and choices["checks"] == STEPS + 1
    assert len(choices["rank_digests"]) == 2 and choices["rank_digests"][0] == choices["rank_digests"][1]


def test_different_choices_are_caught():
    a, b = ChoiceDigest(), ChoiceDigest()
    for step in range(3):
        a.update(step, ["full", "small"])
        b.update(step, ["full", "small" if step < 2 else "mid"])
    same_digests([a.digest] * 2, step=3)
    with pytest.raises(RuntimeError, match="by step 3 the processes chose different subnets"):
        same_digests([a.digest, b.digest], step=3)


class RecordCTC(TrainerCallback):
    """Wraps the model's ctc_loss at the first update: records, for every later CTC loss, the dtype of the
    logits, the dtype of the loss and whether autocast was on."""

    def __init__(self):
        self.seen, self.installed = [], False

    def on_gradients(self, step, model):
        if self.installed:
            return
        self.installed = True
        ctc_loss = model.ctc_loss

        def recording(logits, *args):
            loss = ctc_loss(logits, *args)
            self.seen.append((logits.dtype, loss.dtype, torch.is_autocast_enabled("cpu")))
            return loss

        model.ctc_loss = recording


def test_bf16_from_the_launcher_on_cpu_with_the_nonfinite_guard(smoke_corpus, tmp_path, monkeypatch):
    """ACCELERATE_MIXED_PRECISION=bf16 (what `accelerate launch --mixed_precision bf16` sets), no option: bf16
    autocast runs, the CTC loss is fp32, a NaN loss is skipped without stepping the schedule, losses finite."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = tmp_path / "bf16"
    recorder = RecordCTC()
    train_in_process(["--config", SMOKE, *_data_args(smoke_corpus), "--output_dir", out, "--max_steps", STEPS,
                      "--save_steps", "0", "--logging_steps", "1"],
                     callbacks=[Faults(nan_loss={2: 1}), recorder])
    results = _results(out)
    assert results["mixed_precision"] == "bf16"
    assert results["nonfinite_steps_skipped"] == 1 and results["steps"] == STEPS
    assert recorder.seen and all(seen == (torch.bfloat16, torch.float32, True) for seen in recorder.seen)
    history = results["history"]
    assert all(torch.isfinite(torch.tensor(h["loss/full"])) for h in history)
    assert [h["lr"] for h in history] == pytest.approx(_expected_lr(), rel=1e-12)  # the skipped batch: no step
    assert all(torch.isfinite(torch.tensor(r["cer"])) for r in results["eval"].values())


def test_fp16_on_cpu_is_refused_naming_bf16(smoke_corpus, tmp_path):
    with pytest.raises(SystemExit, match="fp16 needs a GPU.*--mixed_precision bf16"):
        train_in_process(["--config", SMOKE, *_data_args(smoke_corpus), "--output_dir", tmp_path / "fp16",
                          "--mixed_precision", "fp16"])
    assert not (tmp_path / "fp16" / "final").exists()
