"""Frontends: log-mel frames [B, T, F] -> encoder input [B, T // 4, d] (4x time subsampling).

A padded batch gives each utterance the output it gets alone: the VGG frontend zeroes padded frames before
every convolution, the cheap one never reads them. Both give exactly `T // 4` frames (`subsampled_lengths`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Output frames of both frontends for `lengths` input frames: two halvings, floor each time."""
    return torch.div(torch.div(lengths, 2, rounding_mode="floor"), 2, rounding_mode="floor")


def frame_mask(lengths: torch.Tensor, time: int) -> torch.Tensor:  # [B, T] bool, True on the valid frames
    return torch.arange(time, device=lengths.device)[None, :] < lengths[:, None]


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # x [B, C, T, F]
    return x.masked_fill(~frame_mask(lengths, x.shape[2])[:, None, :, None], 0.0)


class DynaSRVGGFrontend(nn.Module):
    """The papers' VGG4LayerActFrontendV1 (i6_models; the frontend of papers 1-3): convs of 32, 64, 64, 32
    channels (3x3, ReLU) with a (2, 1) max-pool over time after the first and second, then a linear layer to d."""

    def __init__(self, config):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 32, 3, padding=1)
        self.linear = nn.Linear(32 * config.num_mel_bins, config.hidden_size)

    def forward(self, input_features, lengths):  # [B, T, F], [B]
        x = input_features[:, None]  # [B, 1, T, F]
        x = F.relu(self.conv1(_zero_padding(x, lengths)))
        x = F.max_pool2d(x, (2, 1))  # [B, 32, T/2, F]
        lengths = torch.div(lengths, 2, rounding_mode="floor")
        x = F.relu(self.conv2(_zero_padding(x, lengths)))
        x = F.max_pool2d(x, (2, 1))  # [B, 64, T/4, F]
        lengths = torch.div(lengths, 2, rounding_mode="floor")
        x = F.relu(self.conv3(_zero_padding(x, lengths)))
        x = F.relu(self.conv4(_zero_padding(x, lengths)))  # [B, 32, T/4, F]
        x = x.transpose(1, 2).flatten(2)  # [B, T/4, 32 * F]
        return self.linear(x), lengths


class DynaSRConv2dFrontend(nn.Module):
    """Cheap CPU frontend: a strided 3x3 conv, then a strided depthwise 3x3 plus pointwise conv (ReLU),
    then a linear layer to d.

    Needs no masking: output frame i of a kernel-3, stride-2 conv reads input frames 2i-1..2i+1, so the
    `L // 2` valid outputs of an utterance of `L` frames read only its own frames (or the zero pad left of
    frame 0), never the batch padding on the right. The input is cut to a multiple of 4 frames (those cut
    frames feed no valid output either), so both convs halve exactly, with floor like the VGG pools. The cut is an
    `index_select` (a contiguous copy), not a slice: a sliced, non-contiguous input makes the conv's contiguity
    check pin torch.export's time axis to multiples of 4, and cutting the output instead gives the time axis a
    `Min(...)` size that the ONNX exporter cannot reshape. Masking and
    an explicit left pad (`F.pad`) are left out on purpose: their backward copies the whole [B, C, T/2, F/2]
    activation, a large share of this frontend's cost. Padded output frames hold garbage; the encoder masks them."""

    def __init__(self, config):
        super().__init__()
        channels = config.frontend_channels
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        freq = (config.num_mel_bins + 1) // 2
        freq = (freq + 1) // 2
        self.linear = nn.Linear(channels * freq, config.hidden_size)

    def forward(self, input_features, lengths):  # [B, T, F], [B]
        frames = torch.arange(input_features.shape[1] // 4 * 4, device=input_features.device)
        x = input_features.index_select(1, frames)[:, None]  # [B, 1, 4 T', F]
        x = F.relu(self.conv1(x))  # [B, C, 2 T', F/2]
        x = F.relu(self.pointwise(self.depthwise(x)))  # [B, C, T', F/4]
        x = x.transpose(1, 2).flatten(2)  # [B, T', C * F/4]
        return self.linear(x), subsampled_lengths(lengths)


FRONTENDS = {"vgg4x": DynaSRVGGFrontend, "conv2d4x": DynaSRConv2dFrontend}
