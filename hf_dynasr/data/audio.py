"""Audio decoding for hf_dynasr.data: any source to mono float32 at a target rate, band-limited resampling.

``load_audio`` reads a path, encoded bytes, a ``{"path", "bytes"}`` or ``{"array", "sampling_rate"}`` dict
or a ``datasets`` decoded audio object (soundfile first, torchcodec as a fallback for other containers),
downmixes to mono and resamples with a windowed-sinc filter (``resample``, no torchaudio needed).
``prepare_dataset`` (``hf_dynasr.data.prepare``) decodes every row through it.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import soundfile as sf
import torch

from hf_dynasr.data.processing import SAMPLING_RATE

__all__ = ["AudioDecodeError", "TruncatedAudioError", "load_audio", "resample"]


class AudioDecodeError(RuntimeError):
    """The audio exists but cannot be decoded (corrupt, not a regular file, or a format no installed decoder
    reads)."""


class TruncatedAudioError(AudioDecodeError):
    """The file holds fewer frames than its header declares (an interrupted copy or download): what can be
    decoded is only the start of the utterance its transcript describes."""


def load_audio(source: Any, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Decode ``source`` to mono float32 at ``sampling_rate``.

    ``source``: a path, encoded bytes, a ``{"path", "bytes"}`` dict (``Audio(decode=False)`` rows), a
    ``{"array", "sampling_rate"}`` dict, or a ``datasets`` decoded audio object. Raises
    ``FileNotFoundError`` if there is no bytes and the path does not exist, ``AudioDecodeError`` if it
    cannot be decoded or the path is not a regular file (reading a FIFO would block forever),
    ``TruncatedAudioError`` if a WAV holds fewer frames than its header declares. Empty audio gives an empty
    array (no error).
    """
    data, orig_sr = _read_audio(source)
    data = _pcm_to_float(np.asarray(data))
    # in-memory arrays may be [channels, samples]; a 0-sample file reads as [0, 1] and must stay empty
    if data.ndim == 2 and 0 < data.shape[0] < data.shape[1] and data.shape[0] <= 8:
        data = data.T
    mono = data.mean(axis=1) if data.ndim == 2 else data
    return resample(mono, int(orig_sr), sampling_rate)


def _pcm_to_float(data: np.ndarray) -> np.ndarray:
    """Integer PCM (an int16 array, or a list of ints from a datasets table) -> float32 in [-1, 1)."""
    if data.dtype.kind not in "iu":
        return data.astype(np.float32, copy=False)
    if data.dtype == np.uint8:  # 8-bit WAV is offset binary
        return (data.astype(np.float32) - 128.0) / 128.0
    bits = 8 * data.dtype.itemsize
    if bits == 64:  # python ints lost their width: 16-bit PCM unless the values need more
        bits = 16 if data.size == 0 or np.abs(data).max() <= 32768 else 32
    return (data / float(2 ** (bits - 1))).astype(np.float32)


def _read_audio(source: Any) -> tuple[np.ndarray, int]:
    """-> (samples [n] or [n, channels], sampling rate)."""
    data = path = None
    if isinstance(source, Mapping):
        if source.get("array") is not None:
            return np.asarray(source["array"]), int(source["sampling_rate"])
        data, path = source.get("bytes"), source.get("path")
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
    elif hasattr(source, "get_all_samples"):  # datasets/torchcodec AudioDecoder
        try:
            samples = source.get_all_samples()
        except Exception as exc:
            raise AudioDecodeError(f"{type(exc).__name__}: {exc}") from exc
        return samples.data.numpy().T, int(samples.sample_rate)
    else:
        raise TypeError(f"cannot read audio from {type(source).__name__}")
    if data is None:
        if not path:
            raise FileNotFoundError("no audio bytes and no path")
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        if not os.path.isfile(path):  # a FIFO would block the read forever; a device or folder is no audio
            raise AudioDecodeError(f"{path} is not a regular file")
    try:
        array, sr = sf.read(io.BytesIO(data) if data is not None else path, dtype="float32", always_2d=True)
    except Exception as sf_error:
        try:  # other containers (mp3 on old libsndfile, m4a, ...) via FFmpeg
            from torchcodec.decoders import AudioDecoder
        except Exception:
            raise AudioDecodeError(f"soundfile: {sf_error} (torchcodec unavailable)") from sf_error
        try:
            samples = AudioDecoder(data if data is not None else path).get_all_samples()
        except Exception as exc:
            raise AudioDecodeError(f"soundfile: {sf_error}; torchcodec: {str(exc).splitlines()[0]}") from exc
        return samples.data.numpy().T, int(samples.sample_rate)
    declared = _wav_declared_frames(io.BytesIO(data) if data is not None else path)
    if declared is not None and array.shape[0] < declared:
        # libsndfile reads a cut WAV without an error, up to its end
        raise TruncatedAudioError(f"truncated: the WAV header declares {declared} frames, the file holds "
                                  f"{array.shape[0]}")
    return array, sr


_UNKNOWN_DATA_SIZE = 0x7FFFF000  # streaming writers put 0xFFFFFFFF (or a large dummy) before the length is known


def _wav_declared_frames(source) -> int | None:
    """Frames the ``data`` chunk of a RIFF/RIFX WAV header declares; None for other formats, an unknown length
    (a streamed WAV) or an unparsable header."""
    with source if not isinstance(source, str) else open(source, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None
        order = "<" if head[:4] == b"RIFF" else ">"
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = f.read(size + (size & 1))
                block_align = struct.unpack(order + "H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif kind == b"data":
                if not block_align or size == 0 or size >= _UNKNOWN_DATA_SIZE:
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), io.SEEK_CUR)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
    """Hann-windowed sinc polyphase kernel (the same construction as torchaudio.functional.resample)."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.to(torch.float32), width


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal (no torchaudio needed)."""
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == new_sr or x.size == 0:
        return x if orig_sr == new_sr else np.zeros(0, np.float32)
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = _sinc_kernel(orig, new)
    wav = torch.nn.functional.pad(torch.from_numpy(x)[None, None], (width, width + orig))
    out = torch.nn.functional.conv1d(wav, kernel, stride=orig).transpose(1, 2).reshape(-1)
    return out[: math.ceil(new * x.size / orig)].numpy()
