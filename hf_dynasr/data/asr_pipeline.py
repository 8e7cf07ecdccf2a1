"""Audio input for `pipeline("automatic-speech-recognition")` without the `ffmpeg` program or torchaudio.

transformers' ASR pipeline reads a file path or encoded bytes by running the `ffmpeg` program and resamples a
`{"raw" | "array", "sampling_rate"}` input of another rate with torchaudio, which has no wheel for the torch this
project pins. `SpeechRecognitionPipeline` steps in exactly where the stock pipeline would raise: a file or bytes
with no `ffmpeg` on the PATH is decoded by `hf_dynasr.data.audio.load_audio` (soundfile, then torchcodec: wav,
flac, ogg, mp3, m4a, ...), and a dict or torchcodec `AudioDecoder` at another rate without torchaudio is resampled
by `hf_dynasr.data.audio.resample` (band-limited windowed sinc). Every other input goes to the stock code
unchanged, so importing hf_dynasr (which installs this class for the task, `register`) changes nothing for an
input the stock pipeline already handles, whatever the model.
"""

from __future__ import annotations

import os
import shutil

from transformers.pipelines import PIPELINE_REGISTRY, AutomaticSpeechRecognitionPipeline
from transformers.utils import is_torchaudio_available

from hf_dynasr.data.audio import load_audio

TASK = "automatic-speech-recognition"

__all__ = ["TASK", "SpeechRecognitionPipeline", "register"]


class SpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """The stock ASR pipeline, with decoding and resampling that need neither `ffmpeg` nor torchaudio."""

    def preprocess(self, inputs, chunk_length_s=0, stride_length_s=None):
        return super().preprocess(self._decoded(inputs), chunk_length_s=chunk_length_s,
                                  stride_length_s=stride_length_s)

    def _decoded(self, inputs):
        """`inputs` as the stock pipeline can take it: decoded and resampled to the feature extractor's rate where
        the stock code would need the `ffmpeg` program or torchaudio; otherwise `inputs` itself."""
        rate = self.feature_extractor.sampling_rate
        is_url = isinstance(inputs, str) and inputs.startswith(("http://", "https://"))
        if isinstance(inputs, (str, os.PathLike, bytes, bytearray)) and not is_url and shutil.which("ffmpeg") is None:
            return load_audio(os.fspath(inputs) if isinstance(inputs, os.PathLike) else inputs, rate)
        if is_torchaudio_available():
            return inputs
        if hasattr(inputs, "get_all_samples"):  # a torchcodec AudioDecoder (datasets' decoded audio)
            return load_audio(inputs, rate)
        if isinstance(inputs, dict) and "sampling_rate" in inputs and inputs["sampling_rate"] != rate:
            return self._resampled(dict(inputs), rate)
        return inputs

    @staticmethod
    def _resampled(inputs: dict, rate: int) -> dict:
        """A `{"raw" | "array", "sampling_rate", "stride"?}` dict at `rate`; the stride (in samples) is scaled as
        the stock pipeline scales it after its own resampling. Other keys are kept."""
        audio = inputs.pop("raw", None)
        if audio is None:
            inputs.pop("path", None)
            audio = inputs.pop("array", None)
        if audio is None:
            return inputs  # the stock pipeline names what is missing
        orig = int(inputs.pop("sampling_rate"))
        if hasattr(audio, "detach"):
            audio = audio.detach().cpu().numpy()
        inputs["raw"] = load_audio({"array": audio, "sampling_rate": orig}, rate)
        inputs["sampling_rate"] = rate
        stride = inputs.get("stride")
        if stride is not None:
            inputs["stride"] = tuple(round(s * rate / orig) for s in stride)
        return inputs


def register() -> None:
    """Make `pipeline("automatic-speech-recognition", ...)` build a `SpeechRecognitionPipeline`; the task's
    default model, model classes and type stay as transformers registered them."""
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    if entry["impl"] is not SpeechRecognitionPipeline:
        PIPELINE_REGISTRY.supported_tasks[TASK] = {**entry, "impl": SpeechRecognitionPipeline}
