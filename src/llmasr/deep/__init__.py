"""Deep fusion: a pretrained speech encoder, an adapter and a language model trained as one."""
