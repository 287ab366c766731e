"""Training SpeechLLM models (deep fusion, D3/D4): recipes, data, an accelerate-based loop."""
