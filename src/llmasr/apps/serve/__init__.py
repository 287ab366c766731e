"""OpenAI-compatible transcription server (`llmasr serve`); needs the `serve` extra (FastAPI, uvicorn).

Import `create_app` and `ServeSettings` from `llmasr.apps.serve.app`; this package does not import FastAPI
itself, so `import llmasr.apps.serve` stays cheap.
"""

from __future__ import annotations
