"""ARPA n-gram estimation for hf_dynasr's LM folders: KenLM's `lmplz`, IRSTLM, or a pure-Python interpolated
Kneser-Ney estimator (`write_kneser_ney_arpa`), and the n-gram counts of an ARPA header (`arpa_ngram_counts`).

`available_tools` lists the estimators installed here, preferred first; `hf_dynasr.lm.build.build_lm` picks one.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

TOOLS = ("auto", "kenlm", "irstlm", "python")


# =========================================================================================================
# external estimators
# =========================================================================================================


def _irstlm_bin() -> Path | None:
    for cand in (os.environ.get("IRSTLM") and Path(os.environ["IRSTLM"]) / "bin", Path("/usr/lib/irstlm/bin"),
                 shutil.which("build-lm.sh") and Path(shutil.which("build-lm.sh")).parent):
        if cand and (Path(cand) / "build-lm.sh").is_file() and (Path(cand) / "compile-lm").is_file():
            return Path(cand)
    return None


def available_tools() -> list[str]:
    """LM estimators usable here, preferred first (the pure-Python one is always available)."""
    return [*(["kenlm"] if shutil.which("lmplz") else []), *(["irstlm"] if _irstlm_bin() else []), "python"]


def choose_tool(tool: str) -> str:
    """The estimator to use for `tool` ("auto": the preferred one installed here); raises when it is missing."""
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {TOOLS}, got {tool!r}")
    tools = available_tools()
    if tool == "auto":
        return tools[0]
    if tool not in tools:
        hint = "apt-get install -y irstlm" if tool == "irstlm" else "install KenLM's lmplz (build kenlm)"
        raise RuntimeError(f"LM tool {tool!r} is not installed here ({hint}); available: {', '.join(tools)}")
    return tool


def estimate_arpa(sentences: Sequence[Sequence[str]], order: int, path, tool: str,
                  irstlm_smoothing: str = "witten-bell") -> str:
    """Write an `order`-gram ARPA file of `sentences` (word lists) to `path` with the installed `tool`
    ("kenlm", "irstlm" or "python"); returns the smoothing method."""
    if tool == "python":
        write_kneser_ney_arpa(sentences, order, path)
        return "interpolated-kneser-ney"
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hf_dynasr_lm_") as work:
        work = Path(work)
        text_file = work / "text.txt"
        text_file.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
        tmp_arpa = work / "lm.arpa"
        smoothing = _build_kenlm(text_file, order, tmp_arpa, work, log) if tool == "kenlm" else \
            _build_irstlm(text_file, order, tmp_arpa, work, log, irstlm_smoothing)
        shutil.move(os.fspath(tmp_arpa), path)
    logger.debug("\n".join(log))
    return smoothing


def _run(cmd, log, **kwargs) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    log.append(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")


def _build_kenlm(text_file: Path, order: int, arpa: Path, work: Path, log) -> str:
    _run(["lmplz", "-o", str(order), "--text", str(text_file), "--arpa", str(arpa), "--discount_fallback",
          "-S", "20%", "-T", str(work)], log)
    return "modified-kneser-ney"


def _build_irstlm(text_file: Path, order: int, arpa: Path, work: Path, log, smoothing: str) -> str:
    bindir = _irstlm_bin()
    bounded = work / "bounded.txt"  # what add-start-end.sh does
    with open(text_file, encoding="utf-8") as src, open(bounded, "w", encoding="utf-8") as dst:
        for line in src:
            dst.write(f"<s> {line.strip()} </s>\n")
    ilm = work / "lm.ilm.gz"
    env = {**os.environ, "IRSTLM": str(bindir.parent)}
    _run([str(bindir / "build-lm.sh"), "-i", str(bounded), "-n", str(order), "-o", str(ilm), "-k", "1",
          "-s", smoothing, "-t", str(work / "stat"), "-l", str(work / "build-lm.log")], log, env=env, cwd=work)
    if not ilm.is_file():
        tail = (work / "build-lm.log").read_text(errors="replace")[-2000:] if (work / "build-lm.log").is_file() else ""
        raise RuntimeError(f"IRSTLM build-lm.sh wrote no LM:\n{tail}")
    _run([str(bindir / "compile-lm"), "--text=yes", str(ilm), str(arpa)], log, env=env, cwd=work)
    return smoothing


# =========================================================================================================
# pure-Python interpolated Kneser-Ney
# =========================================================================================================


def _discount(counts: Mapping) -> float:
    """Absolute discount D = n1 / (n1 + 2 n2) of one order's counts (0.5 when undefined on tiny data)."""
    hist = Counter(c for c in counts.values())
    n1, n2 = hist.get(1, 0), hist.get(2, 0)
    d = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    return min(max(d, 0.1), 0.9)


def write_kneser_ney_arpa(sentences: Sequence[Sequence[str]], order: int, path) -> dict:
    """Estimate an interpolated Kneser-Ney n-gram (one absolute discount per order) and write it as ARPA.

    Sentences are padded with one `<s>` and `</s>`; lower orders use continuation counts (n-grams starting
    with `<s>` keep raw counts), the unigram distribution is interpolated with a uniform one over the
    vocabulary plus `<unk>`. Each seen n-gram stores its interpolated probability and each context the
    backoff weight D * N1+(h .) / c(h), so the ARPA backoff model is the interpolated model exactly: every
    context's distribution sums to 1. Returns {order: number of n-grams}."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if not sentences:
        raise ValueError("no training sentences: the text is empty after normalisation")
    adjusted, vocab = _kneser_ney_counts(sentences, order)
    prob, backoff = _interpolated_probabilities(adjusted, vocab, order)
    return _write_arpa(prob, backoff, vocab, order, path)


def _kneser_ney_counts(sentences: Sequence[Sequence[str]], order: int) -> tuple[list[dict], list[str]]:
    """Per order k (index k): raw counts of the highest order, continuation counts below; and the vocabulary."""
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    for words in sentences:
        toks = ("<s>", *words, "</s>")
        for k in range(1, order + 1):
            for i in range(len(toks) - k + 1):
                raw[k][toks[i:i + k]] += 1
    adjusted: list[dict] = [{} for _ in range(order + 1)]
    adjusted[order] = dict(raw[order])
    for k in range(order - 1, 0, -1):  # continuation counts: distinct left neighbours in order k + 1
        left = Counter(g[1:] for g in raw[k + 1])
        adjusted[k] = {g: (c if g[0] == "<s>" else left[g]) for g, c in raw[k].items()}
    adjusted[1].pop(("<s>",), None)
    vocab = sorted({g[0] for g in raw[1]} - {"<s>"} | {"<unk>"})
    adjusted[1].setdefault(("<unk>",), 0)
    return adjusted, vocab


def _interpolated_probabilities(adjusted: list[dict], vocab: list[str], order: int) -> tuple[list[dict], list[dict]]:
    """Per order: {n-gram: interpolated probability} and {context: backoff weight}."""
    prob: list[dict] = [{} for _ in range(order + 1)]
    backoff: list[dict] = [{} for _ in range(order + 1)]
    d1 = _discount({g: c for g, c in adjusted[1].items() if c})
    total1 = sum(adjusted[1].values())
    types1 = sum(1 for c in adjusted[1].values() if c)
    for w in vocab:
        prob[1][(w,)] = max(adjusted[1].get((w,), 0) - d1, 0) / total1 + d1 * types1 / total1 / len(vocab)
    for k in range(2, order + 1):
        d = _discount(adjusted[k])
        totals, types = Counter(), Counter()
        for g, c in adjusted[k].items():
            totals[g[:-1]] += c
            types[g[:-1]] += 1
        for g, c in adjusted[k].items():
            h = g[:-1]
            gamma = d * types[h] / totals[h]
            prob[k][g] = max(c - d, 0) / totals[h] + gamma * prob[k - 1][g[1:]]
        for h in totals:
            backoff[k - 1][h] = d * types[h] / totals[h]

    return prob, backoff


def _write_arpa(prob: list[dict], backoff: list[dict], vocab: list[str], order: int, path) -> dict:
    """Write the n-grams as an ARPA file (atomically); returns {order: number of n-grams}."""
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    counts = {1: len(vocab) + 1, **{k: len(prob[k]) for k in range(2, order + 1)}}
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for k in range(1, order + 1):
            f.write(f"ngram {k}={counts[k]}\n")
        for k in range(1, order + 1):
            f.write(f"\n\\{k}-grams:\n")
            entries = sorted(prob[k].items())
            if k == 1:
                entries = sorted([(("<s>",), None), *entries])
            for g, p in entries:
                logp = -99.0 if p is None else math.log10(p)
                line = f"{logp:.6f}\t{' '.join(g)}"
                if k < order and g != ("</s>",):
                    bo = backoff[k].get(g)
                    line += f"\t{math.log10(bo):.6f}" if bo else "\t0"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    os.replace(tmp, path)
    return counts


def arpa_ngram_counts(path) -> dict[int, int]:
    """{order: count} from an ARPA file's \\data\\ header."""
    counts = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"\s*ngram\s+(\d+)\s*=\s*(\d+)", line)
            if m:
                counts[int(m.group(1))] = int(m.group(2))
            elif line.startswith("\\1-grams"):
                break
    if not counts:
        raise ValueError(f"{path} is not an ARPA file (no \\data\\ header)")
    return counts
