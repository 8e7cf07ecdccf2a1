"""Model folders, one per architecture, in the layout of `transformers.models`."""
