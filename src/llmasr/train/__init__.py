"""Training: one accelerate-based loop (loop.py) and its tasks (speech-LLMs, the token CTC head, the N-best
rescoring LM, the corrector, the entity retriever), typed YAML recipes (config.py)."""
