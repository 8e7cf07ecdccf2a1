"""`dynasr-build-lm` (= `python scripts/build_lm.py`): the command line of `hf_dynasr.lm.build_lm`."""

from __future__ import annotations

import argparse
import logging
import sys

from transformers import AutoProcessor

from hf_dynasr.lm import build_lm

BUILD_LM_USAGE = """Build a word n-gram LM (ARPA) and a lexicon for CTC beam search decoding from training transcriptions.

    python scripts/build_lm.py --text data/demo_corpus --order 3 --output_dir lm      # train/metadata.csv
    python scripts/build_lm.py --text corpus.txt --output_dir lm --tool python        # one sentence per line
    python scripts/evaluate_model.py --checkpoint ckpt --data audiofolder:data/demo_corpus --lm lm

Writes OUTPUT_DIR/lm.arpa, lexicon.txt (flashlight format: `word w o r d |`) and lm_config.json (order,
tool, vocabulary size, tokens, default lm_weight / word_score / beam_size). --tool auto uses KenLM's lmplz
if present, else IRSTLM (apt-get install -y irstlm), else a pure-Python interpolated Kneser-Ney estimator.
Text is normalised like training targets; a corpus folder with split subfolders uses --split (train).
`dynasr-build-lm` is the same command.
"""


def build_lm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=BUILD_LM_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="audiofolder corpus dir, metadata .csv/.tsv/.jsonl, or a text file")
    p.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--tool", choices=("auto", "kenlm", "irstlm", "python"), default="auto")
    p.add_argument("--split", default="train", help="split subfolder of a corpus dir (default: train)")
    p.add_argument("--text_column", default=None, help="transcription column of a metadata file")
    p.add_argument("--processor", default=None,
                   help="checkpoint/processor dir whose tokenizer vocabulary to use (default: hf_dynasr's a-z ' |)")
    p.add_argument("--irstlm_smoothing", default="witten-bell",
                   choices=("witten-bell", "kneser-ney", "improved-kneser-ney", "shift-beta", "improved-shift-beta"))
    p.add_argument("--lm_weight", type=float, default=None, help="default LM weight stored in lm_config.json")
    p.add_argument("--word_score", type=float, default=None, help="default word score stored in lm_config.json")
    p.add_argument("--beam_size", type=int, default=None, help="default beam size stored in lm_config.json")
    return p


def build_lm_main(argv: list[str] | None = None) -> int:
    """Build the LM and lexicon and print a one-line summary; 2 when the text cannot be read or the build fails."""
    args = build_lm_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    tokens = AutoProcessor.from_pretrained(args.processor).tokenizer if args.processor else None
    decoding = {k: v for k, v in (("lm_weight", args.lm_weight), ("word_score", args.word_score),
                                  ("beam_size", args.beam_size)) if v is not None}
    try:
        config = build_lm(args.text, args.output_dir, order=args.order, tool=args.tool, split=args.split,
                          text_column=args.text_column, tokens=tokens, irstlm_smoothing=args.irstlm_smoothing,
                          decoding=decoding)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}-grams {v}" for k, v in config["ngram_counts"].items())
    print(f"{config['order']}-gram LM ({config['tool']}, {config['smoothing']}) from {config['num_sentences']} "
          f"sentences, {config['num_words']} words: vocabulary {config['vocabulary_size']}; {counts}; "
          f"{config['build_seconds']:.1f} s")
    print(f"wrote {args.output_dir}/lm.arpa, lexicon.txt, lm_config.json")
    return 0
