#!/usr/bin/env python
"""Transcribe audio files with an exported ONNX size and onnxruntime.

    python scripts/transcribe_onnx.py export/small/model.onnx speech.wav

See --help for every option.
"""

import sys

from hf_dynasr.export.cli import transcribe_onnx_main

if __name__ == "__main__":
    sys.exit(transcribe_onnx_main())
