"""The processor travels with the model: `save_pretrained` copies the processor files of the folder (or Hub repo)
the model was loaded from next to the saved weights, so `sup.extract_subnet("small").save_pretrained(out)` and
`sup.save_pretrained(out)` give folders that `pipeline("automatic-speech-recognition", model=out)` loads.

The source is `config.name_or_path`, which `from_pretrained` sets and `extract_subnet` keeps (the extracted
config is a copy). A file already in the target folder is kept (a processor saved there on purpose wins); a
model built in memory has no source, and its save says so in a log line (info: the trainer saves the processor
right after the model). Each file is written to a temporary
name and renamed, so an interrupted save never leaves half a file.
"""

from __future__ import annotations

import logging
import os
import shutil

from transformers.utils import cached_file

logger = logging.getLogger(__name__)

#: What `Wav2Vec2Processor.save_pretrained` writes (feature extractor and tokenizer), in either file layout.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "vocab.json",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.json")


def processor_sources(name_or_path: str | os.PathLike | None) -> dict[str, str]:
    """{file name: local path} of the processor files of a checkpoint folder or (cached) Hub repo."""
    source = os.fspath(name_or_path) if name_or_path else ""
    if not source:
        return {}
    if os.path.isdir(source):
        found = {name: os.path.join(source, name) for name in PROCESSOR_FILES}
        return {name: path for name, path in found.items() if os.path.isfile(path)}
    found = {}
    for name in PROCESSOR_FILES:
        try:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        except (OSError, ValueError):  # not a repo id (a deleted folder) or not reachable: nothing to copy
            return {}
        if path:
            found[name] = path
    return found


def copy_processor_files(name_or_path, save_directory: str | os.PathLike) -> list[str]:
    """Copy the processor files of `name_or_path` that `save_directory` lacks; -> the names copied."""
    target = os.fspath(save_directory)
    copied = []
    for name, path in processor_sources(name_or_path).items():
        dest = os.path.join(target, name)
        if os.path.exists(dest) or os.path.abspath(path) == os.path.abspath(dest):
            continue
        tmp = f"{dest}.tmp-{os.getpid()}"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        copied.append(name)
    return copied


class ProcessorFilesMixin:
    """`save_pretrained` that also copies the processor of the checkpoint the model came from (see module doc)."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if os.path.isfile(save_directory) or kwargs.get("is_main_process", True) is False:
            return result  # transformers refused a file path (its log says so); other ranks write nothing
        source = getattr(self.config, "name_or_path", None)
        copied = copy_processor_files(source, save_directory)
        if copied:
            logger.info("copied the processor files %s of %s to %s", ", ".join(copied), source, save_directory)
        elif not processor_sources(save_directory):
            logger.info("%s has no processor files (this model was not loaded from a folder that has them): "
                           "save one with processor.save_pretrained(%r) before using it in a pipeline",
                           save_directory, os.fspath(save_directory))
        return result
