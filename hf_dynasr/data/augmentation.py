"""On-the-fly waveform augmentation for training: the recording conditions a synthetic corpus lacks.

:class:`Augmenter` turns one decoded 16 kHz utterance into a perturbed copy, in a DataLoader worker, with a
random generator seeded by the run's seed and the utterance's place in the data stream (so a resumed run
perturbs every utterance exactly as the uninterrupted one). The corpus on disk is never touched; evaluation
sets are never augmented (only the training datasets of ``hf_dynasr.data.streaming`` take an augmenter).

The families, each on with its own probability (:class:`AugmentationConfig`), applied in this order:

* ``speed``: speed perturbation by a factor from ``speed_factors`` (0.9 / 1.0 / 1.1, as in Ko et al. 2015,
  "Audio augmentation for speech recognition", and the Kaldi/ESPnet recipes): resampling, so tempo and pitch
  change together and the duration is divided by the factor.
* ``silence``: leading and trailing silence and pauses inserted at quiet points between words; the
  "silence" is low-level coloured noise at ``silence_level_db`` below the speech, never digital zeros
  (a model that only met trimmed TTS inserts words in pauses and noise).
* ``reverb``: convolution with a synthetic room impulse response (a direct path, then exponentially decaying
  Gaussian noise with an RT60 from ``reverb_rt60_s`` at a direct-to-reverberant ratio from ``reverb_drr_db``).
* ``noise``: additive noise at an SNR from ``noise_snr_db``: white, pink or brown noise made here, or babble
  mixed from 3-5 other utterances of the same batch (pink noise when the batch has no other utterance).
* ``telephone``: a telephone channel: resampled through 8 kHz, with probability ``telephone_mu_law`` 8-bit
  mu-law (G.711) coding, back to 16 kHz and band-passed to 300-3400 Hz.
* ``gain``: a random gain in ``gain_db``, then the samples clipped to [-1, 1].

SpecAugment (``--spec_augment``) masks the features inside the model and stays available beside these.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from hf_dynasr.data.audio import resample
from hf_dynasr.data.processing import SAMPLING_RATE

__all__ = [
    "FAMILIES",
    "NOISE_KINDS",
    "AugmentationConfig",
    "Augmenter",
    "add_noise",
    "babble",
    "band_pass",
    "coloured_noise",
    "insert_silence",
    "mu_law_round_trip",
    "reverberate",
    "speed_perturb",
    "telephone_channel",
]

FAMILIES = ("speed", "silence", "reverb", "noise", "telephone", "gain")  # the order they are applied in
NOISE_KINDS = ("white", "pink", "brown", "babble")
_NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # the ITU-T G.712 telephone pass band
TELEPHONE_RATE = 8000


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Which augmentations a training run applies and how strongly (``--augmentation``, a dict in YAML).

    Each ``<family>_prob`` is the probability that an utterance gets that family (0 = off, the default for all);
    ranges are ``[low, high]`` drawn uniformly. See the module docstring for what each family does."""

    speed_prob: float = 0.0
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    silence_prob: float = 0.0
    silence_edge_s: tuple[float, float] = (0.05, 0.6)  # leading and trailing each
    silence_max_pauses: int = 2  # pauses inserted between words, 0..this many
    silence_pause_s: tuple[float, float] = (0.1, 0.5)
    silence_level_db: tuple[float, float] = (-60.0, -40.0)  # noise level relative to the speech RMS
    reverb_prob: float = 0.0
    reverb_rt60_s: tuple[float, float] = (0.2, 0.7)
    reverb_drr_db: tuple[float, float] = (0.0, 10.0)
    noise_prob: float = 0.0
    noise_snr_db: tuple[float, float] = (5.0, 25.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    telephone_prob: float = 0.0
    telephone_mu_law: float = 0.5  # probability of mu-law coding within the telephone channel
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-12.0, 6.0)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        for name in [f.name for f in dataclasses.fields(self) if f.name.endswith("_prob")] + ["telephone_mu_law"]:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"augmentation {name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("silence_edge_s", "silence_pause_s", "silence_level_db", "reverb_rt60_s", "reverb_drr_db",
                     "noise_snr_db", "gain_db"):
            value = getattr(self, name)
            if len(value) != 2 or not value[0] <= value[1]:
                raise ValueError(f"augmentation {name} must be [low, high] with low <= high, got {list(value)}")
        if min(self.silence_edge_s + self.silence_pause_s) < 0 or self.reverb_rt60_s[0] <= 0:
            raise ValueError("augmentation silence_edge_s and silence_pause_s must be >= 0 and reverb_rt60_s > 0")
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise ValueError(f"augmentation speed_factors must be positive factors, got {list(self.speed_factors)}")
        if int(self.silence_max_pauses) < 0:
            raise ValueError(f"augmentation silence_max_pauses must be >= 0, got {self.silence_max_pauses}")
        unknown = sorted(set(self.noise_kinds) - set(NOISE_KINDS))
        if unknown or not self.noise_kinds:
            raise ValueError(f"augmentation noise_kinds {list(self.noise_kinds)}: allowed {', '.join(NOISE_KINDS)}")

    @classmethod
    def from_dict(cls, values: dict | None) -> AugmentationConfig:
        """The config of a dict (YAML / JSON); ValueError naming unknown keys and listing the allowed ones."""
        values = dict(values or {})
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(**values)

    @property
    def enabled(self) -> bool:
        """Whether any family is on."""
        return any(getattr(self, f"{family}_prob") > 0 for family in FAMILIES)


class Augmenter:
    """Applies an :class:`AugmentationConfig` to decoded utterances, deterministically per ``key``.

    ``augmenter(array, key, others)``: ``array`` a float waveform at 16 kHz, ``key`` non-negative ints naming the
    utterance's place in the data stream (with the seed they seed its generator), ``others`` the batch's other
    waveforms (babble sources)."""

    def __init__(self, config: AugmentationConfig, seed: int = 0, sampling_rate: int = SAMPLING_RATE):
        self.config, self.seed, self.sampling_rate = config, int(seed), int(sampling_rate)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def __call__(self, array: np.ndarray, key: Sequence[int], others: Sequence[np.ndarray] = ()) -> np.ndarray:
        c, sr = self.config, self.sampling_rate
        rng = np.random.default_rng([self.seed, *[int(k) for k in key]])
        # one draw per family whatever the outcome, so turning one family on or off leaves the others' choices
        on = {family: rng.random() < getattr(c, f"{family}_prob") for family in FAMILIES}
        x = np.asarray(array, dtype=np.float32)
        if on["speed"]:
            x = speed_perturb(x, float(rng.choice(c.speed_factors)), sr)
        if on["silence"]:
            x = insert_silence(x, rng, sr, edge_s=c.silence_edge_s, max_pauses=c.silence_max_pauses,
                               pause_s=c.silence_pause_s, level_db=c.silence_level_db)
        if on["reverb"]:
            x = reverberate(x, rng, sr, rt60_s=rng.uniform(*c.reverb_rt60_s), drr_db=rng.uniform(*c.reverb_drr_db))
        if on["noise"]:
            kind = str(rng.choice(c.noise_kinds))
            if kind == "babble" and len(others):
                noise = babble(x.size, others, rng)
            else:
                noise = coloured_noise(x.size, rng, _NOISE_EXPONENT.get(kind, 1.0))
            x = add_noise(x, noise, rng.uniform(*c.noise_snr_db))
        if on["telephone"]:
            x = telephone_channel(x, sr, mu_law=rng.random() < c.telephone_mu_law)
        if on["gain"]:
            x = x * np.float32(10 ** (rng.uniform(*c.gain_db) / 20))
        return np.clip(x, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# The transforms (pure functions of a waveform and a generator)
# ----------------------------------------------------------------------------------------------------------
def speed_perturb(x: np.ndarray, factor: float, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (tempo and pitch): the duration is divided by ``factor``."""
    if factor == 1.0:
        return x
    return resample(x, round(sampling_rate * factor), sampling_rate)


def coloured_noise(n: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """``n`` samples of unit-RMS noise with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown)."""
    if n <= 0:
        return np.zeros(0, np.float32)
    size = _fft_size(n)
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0  # the DC bin keeps the white level instead of an infinite one
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), size)[:n]
    return (noise / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)).astype(np.float32)


def _fft_size(n: int) -> int:
    """The power of two >= ``n``: FFTs of arbitrary lengths (large prime factors) cost several times more."""
    return 1 << max(0, n - 1).bit_length()


def babble(n: int, others: Sequence[np.ndarray], rng: np.random.Generator, talkers: tuple[int, int] = (3, 5)):
    """``n`` samples of unit-RMS babble: 3-5 of ``others`` (repeated when fewer), each looped to ``n`` samples
    from a random offset and scaled to unit RMS before summing (talkers at equal level)."""
    count = int(rng.integers(talkers[0], talkers[1] + 1))
    mix = np.zeros(n, np.float64)
    for i in rng.choice(len(others), size=count, replace=len(others) < count):
        source = np.asarray(others[i], dtype=np.float64)
        rms = float(np.sqrt(np.mean(source ** 2))) if source.size else 0.0
        if rms == 0.0:
            continue
        looped = np.resize(np.roll(source, -int(rng.integers(source.size))), n)
        mix += looped / rms
    rms = float(np.sqrt(np.mean(mix ** 2)))
    return (mix / rms).astype(np.float32) if rms > 0 else coloured_noise(n, rng)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x`` plus ``noise`` scaled so that the ratio of their mean powers is ``snr_db``."""
    signal_power = float(np.mean(np.asarray(x, np.float64) ** 2))
    noise_power = float(np.mean(np.asarray(noise, np.float64) ** 2))
    if signal_power == 0.0 or noise_power == 0.0:
        return x
    scale = math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (x + scale * noise).astype(np.float32)


def band_pass(x: np.ndarray, low_hz: float, high_hz: float, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """``x`` with the spectrum outside ``[low_hz, high_hz]`` removed (FFT mask)."""
    size = _fft_size(x.size)
    spectrum = np.fft.rfft(np.asarray(x, np.float64), size)
    freqs = np.fft.rfftfreq(size, 1.0 / sampling_rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0.0
    return np.fft.irfft(spectrum, size)[: x.size].astype(np.float32)


def mu_law_round_trip(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """8-bit mu-law coding and decoding (G.711's companding law, continuous form): the quantisation noise."""
    x = np.clip(x, -1.0, 1.0)
    coded = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    coded = np.round((coded + 1) / 2 * mu) / mu * 2 - 1
    return (np.sign(coded) * ((1 + mu) ** np.abs(coded) - 1) / mu).astype(np.float32)


def telephone_channel(x: np.ndarray, sampling_rate: int = SAMPLING_RATE, *, mu_law: bool = False) -> np.ndarray:
    """A narrow-band telephone channel: through 8 kHz (optionally mu-law coded), back to ``sampling_rate``
    and band-passed to 300-3400 Hz; the result has no energy above 3.4 kHz. Same length as ``x``."""
    narrow = resample(x, sampling_rate, TELEPHONE_RATE)  # its low-pass leaves nothing above 4 kHz
    if mu_law:
        peak = float(np.abs(narrow).max()) if narrow.size else 0.0
        scale = 1.0 / peak if peak > 1.0 else 1.0
        narrow = mu_law_round_trip(narrow * scale) / scale
    wide = resample(narrow, TELEPHONE_RATE, sampling_rate)
    wide = np.pad(wide, (0, max(0, x.size - wide.size)))[: x.size]
    return band_pass(wide, *TELEPHONE_BAND_HZ, sampling_rate)  # also the resampler's images above 4 kHz


def reverberate(x: np.ndarray, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE, *, rt60_s: float,
                drr_db: float) -> np.ndarray:
    """``x`` convolved with a synthetic room impulse response (direct path, then Gaussian noise decaying by
    60 dB in ``rt60_s``, its energy ``drr_db`` below the direct path's), cut to ``x``'s length and scaled back to
    its peak."""
    length = max(2, int(min(rt60_s, 1.0) * sampling_rate))
    t = np.arange(length) / sampling_rate
    tail = rng.standard_normal(length) * np.exp(-3 * math.log(10) * t / rt60_s)  # 60 dB = 10**3 in amplitude
    tail[: int(0.002 * sampling_rate) + 1] = 0.0  # the first reflections arrive after the direct sound
    tail *= math.sqrt(10 ** (-drr_db / 10) / max(float(np.sum(tail ** 2)), 1e-12))
    rir = tail
    rir[0] = 1.0
    size = _fft_size(x.size + length)
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(rir, size), size)[: x.size]
    peak, wet_peak = float(np.abs(x).max()), float(np.abs(wet).max())
    return (wet * (peak / wet_peak if wet_peak > 0 else 1.0)).astype(np.float32)


def insert_silence(x: np.ndarray, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE, *,
                   edge_s: tuple[float, float], max_pauses: int, pause_s: tuple[float, float],
                   level_db: tuple[float, float]) -> np.ndarray:
    """``x`` with low-level pink noise (``level_db`` below its RMS) before, after and at up to ``max_pauses``
    quiet 10 ms frames between words (frames 30 dB below the loudest, away from the ends)."""
    rms = float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))) if x.size else 0.0
    if rms == 0.0:
        return x
    level = rms * 10 ** (rng.uniform(*level_db) / 20)

    def quiet(seconds: float) -> np.ndarray:
        return coloured_noise(int(seconds * sampling_rate), rng) * level

    hop = sampling_rate // 100
    frames = x[: x.size // hop * hop].reshape(-1, hop) if x.size >= hop else np.zeros((0, hop), np.float32)
    energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) if len(frames) else np.zeros(0)
    margin = 20  # frames (0.2 s) from either end
    candidates = [i for i in range(margin, len(energy) - margin) if energy[i] < energy.max() * 10 ** (-30 / 20)]
    count = min(int(rng.integers(0, max_pauses + 1)), len(candidates))
    cuts = sorted(int(c) * hop + hop // 2 for c in rng.choice(candidates, size=count, replace=False)) if count else []
    pieces, start = [quiet(rng.uniform(*edge_s))], 0
    for cut in cuts:
        pieces += [x[start:cut], quiet(rng.uniform(*pause_s))]
        start = cut
    pieces += [x[start:], quiet(rng.uniform(*edge_s))]
    return np.concatenate(pieces).astype(np.float32)
