"""SIGINT / SIGTERM during training: the first signal asks the loop to stop at the end of the current optimizer
update, write a checkpoint and exit with status 128 + the signal number and a message saying how to resume;
a second one ends the process at once (the default action of that signal).

The request is agreed at every update boundary (`StopSignals.agreed`: the largest signal number over all
processes), so every rank stops after the same update and takes part in the same checkpoint, whichever rank
the signal reached. `accelerate launch` forwards a signal it receives to every worker; a terminal's Ctrl-C
reaches the launcher and the workers both, so a repeat within `REPEAT_GRACE_S` of the first counts as the same
request, not as the second signal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import torch

logger = logging.getLogger("hf_dynasr.train")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_GRACE_S = 2.0


class StopSignals:
    """Installs the handlers (`install`, main thread only) and puts the previous ones back (`restore`)."""

    def __init__(self):
        self.signum = 0  # the first signal received by this process, 0 = none
        self.received_at = 0.0
        self.previous = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training outside the main thread: SIGINT/SIGTERM will not write a checkpoint")
            return
        for signum in SIGNALS:
            self.previous[signum] = signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def handle(self, signum, frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self.received_at = signum, now
            logger.warning("%s received: stopping after the current update with a checkpoint (send it again to "
                           "stop at once, without one)", signal.Signals(signum).name)
        elif now - self.received_at > REPEAT_GRACE_S:
            logger.error("%s received again: stopping at once", signal.Signals(signum).name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def agreed(self, accelerator) -> int:
        """The signal that stops the run (0 = none), the same on every process. A collective: all ranks call it
        at the same update boundary."""
        if accelerator.num_processes == 1:
            return self.signum
        local = torch.tensor([self.signum], dtype=torch.long, device=accelerator.device)
        return int(accelerator.gather(local).max().item())


def stop_message(signum: int, step: int, checkpoint: str) -> str:
    return (f"stopped by {signal.Signals(signum).name} after update {step}; checkpoint {checkpoint} written. Run "
            "the same command with --resume_from_checkpoint latest to continue")
