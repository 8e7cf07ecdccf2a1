"""Model-card templates (`supernet.md`, `size.md`), installed as the package data `hf_dynasr.model_cards`."""
