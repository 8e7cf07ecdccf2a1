"""Training runs with injected faults, for tests/test_robustness.py: `hf_dynasr.trainer.main()` runs in a forked
child of the test process (a real process that a callback can SIGKILL, without the start-up of a fresh
interpreter), and `Faults` is the callback that kills it or poisons a loss or a gradient."""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import time
import traceback

import torch

from hf_dynasr.trainer import TrainerCallback, main


class Faults(TrainerCallback):
    """Faults injected into a run. N = the step counter (optimizer updates done so far); K = how many batches
    in a row (a skipped batch keeps the step at N).

    kill_after_step=N     SIGKILL the process right after update N (before checkpoint N)
    kill_in_checkpoint=N  SIGKILL it while checkpoint N sits complete in .tmp-step_N, not renamed
    nan_loss={N: K}       the loss of K batches at step N becomes NaN
    nan_grad={N: K}       one gradient of K batches at step N becomes NaN
    """

    def __init__(self, *, kill_after_step=None, kill_in_checkpoint=None, nan_loss=None, nan_grad=None):
        self.kill_after_step, self.kill_in_checkpoint = kill_after_step, kill_in_checkpoint
        self.nan_loss, self.nan_grad = nan_loss or {}, nan_grad or {}
        self.fired = collections.Counter()

    def fires(self, kind: str, table: dict, step: int) -> bool:
        if step not in table:
            return False
        self.fired[kind, step] += 1
        return self.fired[kind, step] <= table[step]

    def on_loss(self, step, loss):
        return loss * float("nan") if self.fires("loss", self.nan_loss, step) else loss

    def on_gradients(self, step, model):
        if self.fires("grad", self.nan_grad, step):
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))

    def on_step_end(self, step):
        if step == self.kill_after_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint_written(self, step, folder):
        if step == self.kill_in_checkpoint:
            os.kill(os.getpid(), signal.SIGKILL)


def train(args, log, faults=None, timeout=300):
    """Run main(args) with `faults` in a forked child; -> (exit code, log text). A SIGKILLed child gives -9."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                                format="%(levelname)s %(name)s: %(message)s")
            torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork()
            from accelerate.state import AcceleratorState, GradientState

            # accelerate's process-wide singletons may hold the parent's state; accelerate has no public reset
            # (its own AccelerateTestCase resets them this way)
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
            try:
                main([str(a) for a in args], callbacks=[faults] if faults else None)
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
                if not isinstance(exit_.code, int) and exit_.code is not None:
                    print(exit_.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"the training run did not finish in {timeout} s:\n{open(log).read()[-3000:]}")
        time.sleep(0.05)
    with open(log, encoding="utf-8") as f:
        return os.waitstatus_to_exitcode(status), f.read()
