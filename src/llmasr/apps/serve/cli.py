"""`llmasr serve`: run the OpenAI-compatible transcription server with uvicorn.

The main CLI mounts it with `app.command("serve")(serve)`; `python -m llmasr.apps.serve.cli` runs it alone.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Annotated, Any

import typer

from llmasr.apps.flags import options_from_flags, with_run_flags
from llmasr.core.errors import LlmasrError

app = typer.Typer(
    help="OpenAI-compatible transcription server (POST /v1/audio/transcriptions).",
    pretty_exceptions_enable=False,
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
@with_run_flags()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="LLMASR_API_KEY",
            help="Require 'Authorization: Bearer KEY'. Prefer the LLMASR_API_KEY variable: "
            "command lines are visible to other users.",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Transcriptions running at once.")] = 1,
    queue_size: Annotated[int, typer.Option(min=0, help="Requests that may wait; more get 503.")] = 16,
    max_uploads: Annotated[
        int, typer.Option(min=1, help="Uploads read at once (a request queues once its upload is in).")
    ] = 32,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (MB); larger gets 413.")] = 100.0,
    max_audio_seconds: Annotated[float, typer.Option(help="Longest audio (s); longer gets 413.")] = 3600.0,
    request_timeout: Annotated[
        float, typer.Option(help="Seconds per request, upload + queue + transcription.")
    ] = 600.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    *,
    run_flags: dict[str, Any],
) -> None:
    """Serve the models over an OpenAI-compatible HTTP API (point an OpenAI client's base_url at /v1)."""
    import uvicorn

    from llmasr.apps.serve.app import ServeSettings, create_app

    try:
        options = options_from_flags(run_flags)
    except LlmasrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        settings = ServeSettings(
            host=host,
            port=port,
            options=options,
            api_key=api_key,
            max_upload_mb=max_upload_mb,
            max_audio_seconds=max_audio_seconds,
            concurrency=concurrency,
            queue_size=queue_size,
            max_uploads=max_uploads,
            request_timeout=request_timeout,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not _is_loopback(host) and settings.key() is None:
        typer.echo(
            f"warning: serving on {host} without an API key; anyone who can reach it can use it "
            "(set LLMASR_API_KEY)",
            err=True,
        )
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    # One process: the models are loaded once and shared by the worker threads.
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, workers=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
