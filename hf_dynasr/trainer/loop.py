"""The training loop: epochs of batches; per batch the supernet step (plan, forward, backward, update); after
each update the selector's schedule, DMAO, logging, evaluation and checkpoints.

    state = resume(run)                        # step 0, or where a checkpoint left off
    TrainingLoop(run, state, callbacks).train()
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from hf_dynasr.json_io import read_json, write_json
from hf_dynasr.models.dynasr import FULL
from hf_dynasr.trainer.anomaly import AnomalyDetector
from hf_dynasr.trainer.callbacks import TrainerCallback
from hf_dynasr.trainer.checkpointing import load_checkpoint, save_checkpoint, training_objects
from hf_dynasr.trainer.nonfinite import NonFiniteCounter, discard_loss, grads_finite, loss_finite
from hf_dynasr.trainer.reports import ChoiceDigest, run_eval
from hf_dynasr.trainer.resume_check import checkpoint_options
from hf_dynasr.trainer.run_folder import TIMING_FILE
from hf_dynasr.trainer.setup import Run, prepare_again
from hf_dynasr.trainer.signals import StopSignals, stop_message
from hf_dynasr.trainer.supernet_step import freeze_masks, plan_step, step_seed, supernet_loss

logger = logging.getLogger("hf_dynasr.train")
TIMING_KEYS = ("audio_s_per_s",)  # the fields of a history record that measure time


@dataclass
class LoopState:
    """Where the run stands. `step`: optimizer updates done; `batches_in_epoch`: batches of `epoch` consumed."""

    nonfinite: NonFiniteCounter
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    history: list = field(default_factory=list)  # the logged records
    choices: ChoiceDigest = field(default_factory=ChoiceDigest)  # the nets every batch ran, compared across ranks
    nets: str = ""  # the nets of the last batch, e.g. "full,small,mid" (logged)
    audio_seconds: float = 0.0
    start_time: float = field(default_factory=time.time)  # moved back by elapsed_before when resumed
    elapsed_before: float = 0.0  # training time (s) of the segments before a resume

    def record_eval(self, results: dict) -> None:
        """Dev WER/CER of every size into the history (the training curve's points): on this step's logged
        record, or a record of its own when the step logged none."""
        scores = {f"eval/{name}/{k}": r[k] for name, r in results.items() for k in ("wer", "cer") if k in r}
        if not scores:
            return
        if self.history and self.history[-1]["step"] == self.step:
            self.history[-1].update(scores)
        else:
            self.history.append({"step": self.step, **scores})

    def trainer_state(self) -> dict:
        """What a checkpoint's trainer_state.json records: the position, the counters, and what accumulates
        over resumed segments (history, subnet choices, audio seconds). Only what the run computes, so a
        checkpoint is the same bytes in every run that reaches it; the times are in the run folder's
        timing.json (`timing`)."""
        history = [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in self.history]
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "nonfinite_steps_skipped": self.nonfinite.total, "history": history,
                "subnet_choices": self.choices.state_dict(), "audio_seconds": self.audio_seconds}

    def timing(self, previous: dict) -> dict:
        """timing.json after a checkpoint at this step: the training time at each checkpoint step and the
        throughput of each logged step (`previous`: the file's content so far)."""
        wall = {**previous.get("wall_time_s", {}), str(self.step): time.time() - self.start_time}
        throughput = {**previous.get("audio_s_per_s", {}),
                      **{str(r["step"]): r["audio_s_per_s"] for r in self.history if "audio_s_per_s" in r}}
        return {"wall_time_s": wall, "audio_s_per_s": throughput}

    def load_trainer_state(self, saved: dict, timing: dict) -> None:
        """The state of a checkpoint's trainer_state.json, with the times of `timing` (timing.json)."""
        self.step, self.epoch, self.batches_in_epoch = saved["step"], saved["epoch"], saved["batches_in_epoch"]
        self.nonfinite.total = saved.get("nonfinite_steps_skipped", 0)
        throughput = timing.get("audio_s_per_s", {})
        self.history = [{**r, **({"audio_s_per_s": throughput[str(r["step"])]} if str(r["step"]) in throughput
                                 else {})} for r in saved.get("history", [])]
        if "subnet_choices" in saved:
            self.choices.load_state_dict(saved["subnet_choices"])
        self.audio_seconds = saved.get("audio_seconds", 0.0)
        self.elapsed_before = timing.get("wall_time_s", {}).get(str(self.step), 0.0)


def resume(run: Run) -> LoopState:
    """A fresh state, or the one of `run.resume_dir` after loading its weights, optimizer, scheduler, RNG states,
    selector and DMAO (the loop then skips the batches of the epoch that were already consumed)."""
    state = LoopState(NonFiniteCounter(run.args.max_nonfinite_steps))
    if run.resume_dir:
        load_checkpoint(run.resume_dir, run.accelerator, training_objects(run))
        timing_file = os.path.join(run.args.output_dir, TIMING_FILE)
        state.load_trainer_state(read_json(os.path.join(run.resume_dir, "trainer_state.json")),
                                 read_json(timing_file) if os.path.isfile(timing_file) else {})
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", run.resume_dir, state.step, state.epoch,
                    state.batches_in_epoch)
        if run.accelerator.is_main_process:
            forget_later_events(os.path.join(run.args.output_dir, "dmao_events.jsonl"), state.step)
    return state


def forget_later_events(path: str, step: int) -> None:
    """Drop the DMAO events after `step` from dmao_events.jsonl: the resumed run makes them again."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if (json.loads(line).get("step") or 0) <= step]
    if len(kept) != len(lines):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


class TrainingLoop:
    """Runs `run` from `state` to `max_steps` updates (stage 1, the stage boundary, stage 2)."""

    def __init__(self, run: Run, state: LoopState, callbacks: TrainerCallback):
        self.run, self.state, self.callbacks = run, state, callbacks
        self.anomaly = AnomalyDetector(run.unwrapped) if run.args.detect_anomaly else None
        self.progress = None
        self.signals = StopSignals()
        self.contributions = 0  # finite micro-batches whose gradients the coming update holds
        self.finite_losses = {}  # the losses of the last finite micro-batch (logged for its update)

    def train(self) -> None:
        """Train to max_steps; a SystemExit(128 + signal number) after a checkpoint when SIGINT/SIGTERM asks
        to stop (`signals`)."""
        run, state = self.run, self.state
        self.progress = tqdm(total=run.args.max_steps, initial=state.step,
                             disable=not run.accelerator.is_local_main_process, desc="train")
        state.start_time = time.time() - state.elapsed_before
        self.signals.install()
        try:
            while state.step < run.args.max_steps:
                for batch in self.epoch_batches():
                    losses = self.train_batch(batch)
                    if losses is None or not run.accelerator.sync_gradients:
                        continue  # skipped as non-finite, or more batches to accumulate
                    self.after_update(batch, losses)
                    self.stop_if_signalled()
                    if state.step >= run.args.max_steps:
                        break
                else:
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        finally:
            self.signals.restore()
            self.progress.close()
        run.data.write_report(run.accelerator, run.args.output_dir)

    def epoch_batches(self):
        """The batches of the current epoch that are still to come (the stream has one endless epoch)."""
        run, state = self.run, self.state
        if run.data.sampler is None:  # the stream: its workers drop the batches a resumed run consumed
            run.data.loader.dataset.skip_batches = state.batches_in_epoch
            loader = run.data.loader
        else:
            run.data.sampler.shuffle = not (run.args.sortagrad and state.epoch == 0)
            run.data.sampler.set_epoch(state.epoch)
            run.data.loader.set_epoch(state.epoch)
            loader = run.data.loader
            if state.batches_in_epoch:
                loader = run.accelerator.skip_first_batches(run.data.loader, state.batches_in_epoch)
        return run.data.batches(loader, run.accelerator, on_empty=self.skip_empty_batch)

    def skip_empty_batch(self) -> None:
        self.state.batches_in_epoch += 1  # consumed: a resumed run skips it too

    # --- one batch ----------------------------------------------------------------------------------------
    def train_batch(self, batch) -> dict | None:
        """Forward, backward and, at the last batch of an accumulation, the update. -> the nets' losses, or
        None when the batch was skipped as non-finite (on every process alike)."""
        run, state = self.run, self.state
        state.batches_in_epoch += 1
        if run.masks_pending() and state.step == run.stage1_steps:
            freeze_masks(run.unwrapped, run.selector, run.sizes, run.criterion)
        # every random draw of a batch (dropout, SpecAugment) is a function of (seed, position in the data,
        # process): a resumed run draws exactly what the uninterrupted one drew, whatever the loader consumed
        micro_batch = state.epoch * 10_000_000 + state.batches_in_epoch
        torch.manual_seed(step_seed(run.args.seed, micro_batch) * 1024 + run.accelerator.process_index)
        with run.accelerator.accumulate(run.model):
            loss, losses = self.forward(batch)
            nonfinite = self.backward(loss)
            sync = run.accelerator.sync_gradients
            where = self.anomaly.report() if self.anomaly else None
            if nonfinite == "loss" and not (sync and self.contributions):
                # nothing to update with yet: a micro-batch before the last of an accumulation is dropped alone
                # (the others keep their gradients); at the last one, or without accumulation, the update is skipped
                if sync:
                    run.optimizer.zero_grad(set_to_none=True)
                state.nonfinite.skip(state.step, nonfinite, losses, where, update_skipped=sync)
                return None
            if nonfinite == "gradient":  # the sum of the accumulated gradients: the whole update is skipped
                run.optimizer.zero_grad(set_to_none=True)
                self.contributions = 0
                state.nonfinite.skip(state.step, nonfinite, losses, where)
                return None
            if nonfinite == "loss":  # the last micro-batch dropped, the update made of the earlier ones
                state.nonfinite.skip(state.step, nonfinite, losses, where, update_skipped=False)
                losses = self.finite_losses
            else:
                state.nonfinite.finite()
                self.finite_losses = losses
            self.update()
            if sync:
                self.contributions = 0
        return losses

    def forward(self, batch) -> tuple[torch.Tensor, dict]:
        run, step = self.run, self.state.step
        runs = plan_step(step, run.size_names, stage1_steps=run.stage1_steps, seed=run.args.seed,
                         selector=run.selector, stage1_subnet=run.selection.stage1_subnet)
        self.state.nets = ",".join(r.subnet for r in runs)
        self.state.choices.update(step, [r.subnet for r in runs])
        if self.anomaly is not None:
            self.anomaly.reset()
        loss, losses = supernet_loss(run.model, run.unwrapped, batch, runs, step, sizes=run.size_names,
                                     selection=run.selection, seed=run.args.seed, selector=run.selector)
        return self.callbacks.on_loss(step, loss), losses

    def backward(self, loss: torch.Tensor) -> str | None:
        """The backward pass; -> None, or what was not finite on some process ("loss" or "gradient"). A
        non-finite loss adds nothing to the gradients (`nonfinite.discard_loss`): the gradients of the other
        micro-batches of an accumulation are kept."""
        run, accelerator = self.run, self.run.accelerator
        if not loss_finite(accelerator, loss):
            discard_loss(accelerator, loss, run.unwrapped, run.selector, keep=self.contributions > 0)
            if not (accelerator.sync_gradients and self.contributions):
                return "loss"
            nonfinite = "loss"
        else:
            accelerator.backward(loss)
            self.contributions += 1
            nonfinite = None
            for p in run.selector.parameters() if run.selector is not None else []:
                if p.grad is not None:  # the scores are outside DDP: average their gradients by hand
                    p.grad = accelerator.reduce(p.grad, "mean")
        if accelerator.sync_gradients:
            self.callbacks.on_gradients(self.state.step, run.unwrapped)
            if not grads_finite(accelerator, run.model, run.selector, run.args.max_grad_norm):
                return "gradient"
        return nonfinite

    def update(self) -> None:
        """The optimizer step (a no-op before the last batch of an accumulation) and, after a real update, one
        step of the schedule: the learning rate is a function of the update count, whatever the number of
        processes and accumulation steps (an update the fp16 loss scaler skipped does not count)."""
        run = self.run
        if run.dmao is not None and run.accelerator.sync_gradients:
            run.dmao.observe(run.unwrapped, self.state.step)
        run.optimizer.step()
        if run.accelerator.sync_gradients and not run.optimizer.step_was_skipped:
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)

    # --- after an update ----------------------------------------------------------------------------------
    def after_update(self, batch, losses: dict) -> None:
        run, state, args = self.run, self.state, self.run.args
        if run.selector is not None and state.step < run.stage1_steps:
            with torch.no_grad():
                run.selector.end_of_step(state.step)
        state.step += 1
        state.audio_seconds += float(batch["attention_mask"].sum()) * 0.01 * run.accelerator.num_processes
        self.progress.update(1)
        self.progress.set_postfix(ctc_full=f"{losses[f'loss/{FULL}']:.3f}")
        self.callbacks.on_step_end(state.step)
        if run.dmao is not None and run.dmao.reshape_due(state.step):
            self.reshape()
        if state.step % args.logging_steps == 0 or state.step == args.max_steps:
            state.choices.check(run.accelerator, state.step)
            self.log(losses)
        if args.eval_steps and state.step % args.eval_steps == 0 and state.step < args.max_steps:
            state.record_eval(run_eval(run.accelerator, run.unwrapped, run.data, state.step,
                                       args.per_device_eval_batch_size))
        if args.save_steps and state.step % args.save_steps == 0:
            self.checkpoint()

    def stop_if_signalled(self) -> None:
        """At an update boundary: when any process received SIGINT/SIGTERM, checkpoint (unless this update's
        checkpoint was just written) and exit with status 128 + the signal number."""
        signum = self.signals.agreed(self.run.accelerator)
        if not signum:
            return
        run, step = self.run, self.state.step
        saved = run.args.save_steps and step % run.args.save_steps == 0
        folder = os.path.join(run.checkpoint_dir, f"step_{step}") if saved else self.checkpoint()
        if run.accelerator.is_main_process:
            logger.error(stop_message(signum, step, folder))
        raise SystemExit(128 + signum)

    def reshape(self) -> None:
        """A DMAO event (paper 3, arXiv:2506.13180): reshape the model, carry the optimizer state over, record
        the event in dmao_events.jsonl; under DDP wrap the new parameters again."""
        run, step = self.run, self.state.step
        run.dmao.reduce_scores(run.accelerator)
        report = run.dmao.reshape(run.unwrapped, run.optimizer, step=step)
        if run.accelerator.is_main_process:
            with open(os.path.join(run.args.output_dir, "dmao_events.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(report) + "\n")
        if run.accelerator.num_processes > 1:
            prepare_again(run)
        if self.anomaly is not None:
            self.anomaly.attach(run.unwrapped)  # the reshape replaced modules

    def log(self, losses: dict) -> None:
        run, state = self.run, self.state
        record = {"step": state.step, "lr": run.scheduler.get_last_lr()[0], "nets": state.nets, **losses,
                  "audio_s_per_s": state.audio_seconds / max(1e-9, time.time() - state.start_time)}
        if run.selector is not None:
            record.update({f"selector/{k}": v for k, v in run.selector.describe(state.step).items()})
        run.accelerator.log(record, step=state.step)
        logger.info("step %d: %s", state.step, ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k != "step"))
        state.history.append(record)

    def checkpoint(self) -> str:
        """Checkpoint step_<step> (the choices compared across processes first, so the digest it carries is
        agreed); -> its folder."""
        run, step = self.run, self.state.step
        self.state.choices.check(run.accelerator, step)
        state = {**self.state.trainer_state(), **checkpoint_options(run.args, run.accelerator)}
        if run.accelerator.is_main_process:  # before the checkpoint exists, so a resume from it finds its time
            timing_file = os.path.join(run.args.output_dir, TIMING_FILE)
            write_json(timing_file, self.state.timing(read_json(timing_file) if os.path.isfile(timing_file) else {}))
        return save_checkpoint(run.accelerator, run.checkpoint_dir, step, state, training_objects(run),
                               run.args.save_total_limit,
                               before_rename=lambda folder: self.callbacks.on_checkpoint_written(step, folder))
