"""OpenAI-compatible transcription server (`llmasr serve`); needs the `serve` extra (FastAPI, uvicorn).

Import `create_app` and `ServeSettings` from `llmasr.serve.app`; this package does not import FastAPI
itself, so `import llmasr.serve` stays cheap.
"""

from __future__ import annotations
