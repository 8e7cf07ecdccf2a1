#!/usr/bin/env python
"""Build a word n-gram LM (ARPA) and a lexicon for CTC beam search decoding from training transcriptions.

    python scripts/build_lm.py --text data/demo_corpus --order 3 --output_dir lm      # train/metadata.csv
    python scripts/build_lm.py --text corpus.txt --output_dir lm --tool python        # one sentence per line
    python scripts/evaluate.py --checkpoint ckpt --data audiofolder:data/demo_corpus --lm lm

Writes OUTPUT_DIR/lm.arpa, lexicon.txt (flashlight format: `word w o r d |`) and lm_config.json (order,
tool, vocabulary size, tokens, default lm_weight / word_score / beam_size). --tool auto uses KenLM's lmplz
if present, else IRSTLM (apt-get install -y irstlm), else a pure-Python interpolated Kneser-Ney estimator.
Text is normalised like training targets; a corpus folder with split subfolders uses --split (train).
"""

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from hf_dynasr.lm.decoding import build_lm

    tokens = None
    if args.processor:
        from transformers import AutoProcessor

        tokens = AutoProcessor.from_pretrained(args.processor).tokenizer
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


if __name__ == "__main__":
    sys.exit(main())
