"""What a training run reports besides its losses: the dev WER/CER of every size, and the two things every
process must agree on (the nets each step runs, and the weights)."""

from __future__ import annotations

import hashlib
import logging

import torch

from hf_dynasr.evaluation.sizes import evaluate_sizes

logger = logging.getLogger("hf_dynasr.train")


def run_eval(accelerator, unwrapped, data, step: int, batch_size: int = 16) -> dict:
    """WER/CER of every size on the evaluation set, logged at `step`. Call on every process: each scores its
    share of the batches (`evaluate_sizes`), every process gets the scores of the whole set."""
    results = {}
    if len(data.eval_ds):
        results = evaluate_sizes(unwrapped, data.eval_ds, data.collator, data.processor.tokenizer,
                                 batch_size=batch_size, accelerator=accelerator)
    if accelerator.is_main_process and results:
        accelerator.log({f"eval/{name}/{k}": v for name, r in results.items() for k, v in r.items()
                         if isinstance(v, (int, float))}, step=step)
        for name, r in results.items():
            logger.info("step %d eval %-8s WER %.3f CER %.3f (%s params)", step, name, r["wer"], r["cer"],
                        f"{r['num_parameters']:,}")
    return results


class ChoiceDigest:
    """A running digest of the nets every batch ran, per process. The choice must depend only on (seed, step),
    so the digests of all processes are equal; `check` compares them (at logging steps, checkpoints and the end:
    one small collective, nothing that grows with the number of steps). The digest is a hash chain (each batch
    hashes the previous digest with its nets), so a checkpoint carries it (`state_dict`) and a resumed run
    continues it to the value the uninterrupted run reaches."""

    def __init__(self):
        self.chain = ""  # hex SHA-256 of the previous link, "" before the first batch
        self.batches = 0  # batches digested (over every segment of a resumed run)
        self.checks = 0  # comparisons across processes that passed

    def update(self, step: int, nets: list[str]) -> None:
        self.chain = hashlib.sha256(f"{self.chain}|{step}:{','.join(nets)}".encode()).hexdigest()
        self.batches += 1

    @property
    def digest(self) -> str:
        return (self.chain or hashlib.sha256(b"").hexdigest())[:15]  # 60 bits: fits the int64 `check` gathers

    def state_dict(self) -> dict:
        return {"chain": self.chain, "batches": self.batches, "checks": self.checks}

    def load_state_dict(self, saved: dict) -> None:
        self.chain, self.batches, self.checks = saved["chain"], saved["batches"], saved["checks"]

    def check(self, accelerator, step: int) -> list[str]:
        """The digests of every process (one per process); a RuntimeError if they differ."""
        local = torch.tensor([[int(self.digest, 16), self.batches]], dtype=torch.long, device=accelerator.device)
        digests = [f"{digest:015x}/{batches}" for digest, batches in accelerator.gather(local).tolist()]
        same_digests(digests, step)
        self.checks += 1
        return digests

    def to_dict(self, digests: list[str]) -> dict:
        """The record of training_results.json: the per-process digests of the last check and the counts."""
        return {"batches": self.batches, "checks": self.checks, "rank_digests": digests}


def same_digests(digests: list[str], step: int) -> None:
    """A RuntimeError naming the step unless every process's digest is the same."""
    if len(set(digests)) > 1:
        raise RuntimeError(f"by step {step} the processes chose different subnets (per-process digest/batches: "
                           f"{digests}); the choice must depend only on (seed, step)")


def weight_checksums(accelerator, unwrapped) -> list:
    """Per process: a float64 checksum of every parameter; DDP ranks must agree exactly."""
    with torch.no_grad():
        local = sum(p.double().sum() * (i + 1) + p.double().pow(2).sum() for i, p in enumerate(unwrapped.parameters()))
    gathered = accelerator.gather(local.reshape(1)).tolist()
    if len(set(gathered)) > 1:
        logger.error("weights differ across processes: %s", gathered)
    return gathered
