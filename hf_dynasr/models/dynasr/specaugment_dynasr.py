"""SpecAugment with the papers' values (the RWTH setups of papers 1-3): time masks of at most 20 frames, one per 25
frames and at least 2; up to 5 frequency masks of at most 8 bins. Applied to log-mel features in
training mode only, and only inside each utterance's valid frames."""

from __future__ import annotations

import torch


def spec_augment(input_features: torch.Tensor, lengths: torch.Tensor, config) -> torch.Tensor:
    """Return a masked copy of `input_features` [B, T, F]; `lengths` [B] are the valid frames."""
    features = input_features.clone()
    batch, _, num_bins = features.shape
    device = features.device
    for b in range(batch):
        length = int(lengths[b])
        if length <= 0:
            continue
        num_time = max(config.mask_time_min_masks, length // config.mask_time_per_frames)
        for _ in range(num_time):
            width = int(torch.randint(0, config.mask_time_max_width + 1, (), device=device))
            start = int(torch.randint(0, max(1, length - width), (), device=device))
            features[b, start : start + width] = 0.0
        low = min(2, config.mask_feature_num_masks)
        num_freq = int(torch.randint(low, config.mask_feature_num_masks + 1, (), device=device))
        for _ in range(num_freq):
            width = int(torch.randint(0, config.mask_feature_max_width + 1, (), device=device))
            start = int(torch.randint(0, max(1, num_bins - width), (), device=device))
            features[b, :length, start : start + width] = 0.0
    return features
