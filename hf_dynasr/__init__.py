"""hf_dynasr: one CTC Conformer supernet, many deployable sizes, as ordinary Transformers checkpoints.

Importing the package registers `DynaSRConfig` with `AutoConfig`, `DynaSRModel` (the encoder) with `AutoModel` and `DynaSRForCTC` with
`AutoModelForCTC`, so `AutoModelForCTC.from_pretrained(path, subnet="40M")` and
`pipeline("automatic-speech-recognition", model=path)` work on hf_dynasr checkpoints; the pipeline reads audio
files (wav, flac, ogg, mp3, ...) and resamples arrays of any rate (`hf_dynasr.data.asr_pipeline`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCTC

from hf_dynasr.evaluation.budget import pick_subnet
from hf_dynasr.models.dynasr import (
    FULL,
    Component,
    ComponentIndex,
    DynaSRConfig,
    DynaSRForCTC,
    DynaSRModel,
    DynaSRPreTrainedModel,
)
from hf_dynasr.data.processing import build_feature_extractor, build_processor, build_tokenizer
from hf_dynasr.data.asr_pipeline import SpeechRecognitionPipeline, register as register_asr_pipeline

AutoConfig.register("dynasr", DynaSRConfig, exist_ok=True)
AutoModelForCTC.register(DynaSRConfig, DynaSRForCTC, exist_ok=True)
AutoModel.register(DynaSRConfig, DynaSRModel, exist_ok=True)
register_asr_pipeline()  # file paths and any sampling rate without the ffmpeg program or torchaudio

__version__ = "0.1.0"
__all__ = [
    "FULL",
    "Component",
    "ComponentIndex",
    "DynaSRConfig",
    "DynaSRForCTC",
    "DynaSRModel",
    "DynaSRPreTrainedModel",
    "SpeechRecognitionPipeline",
    "build_feature_extractor",
    "build_processor",
    "build_tokenizer",
    "pick_subnet",
]
