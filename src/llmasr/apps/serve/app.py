"""An OpenAI-compatible transcription server on one shared llmasr Pipeline.

Clients written for OpenAI's audio API (the official SDKs, curl scripts, tools with a "Whisper API"
setting) work unchanged by pointing their base URL at `http://HOST:PORT/v1`:

* `POST /v1/audio/transcriptions` - multipart form: `file` (required), `model` (any name is accepted;
  the served pipeline answers whatever is asked, so "whisper-1" works), `prompt` (a domain description;
  it conditions the LLM rescorer and Whisper), `response_format` (json, text, srt, vtt, verbose_json),
  `language` (English only: "en", "english", a tag like "en-US", or absent), `temperature` (accepted and
  ignored: decoding is beam search), `timestamp_granularities[]` (segment, word; with verbose_json only,
  as OpenAI requires), `stream` (false only). llmasr extras: `terms` (domain terms, newline- or
  comma-separated, may repeat), `nbest` (hypotheses per segment for this request, 1-32) and `raw_format`
  (the ENCODING:RATE[:CHANNELS] of a headerless PCM upload, e.g. s16le:8000). Any other field is
  refused (400), so a typo never goes unnoticed.
* `GET /v1/models` (and `/v1/models/{id}`) - the served model ids, in OpenAI's list shape.
* `GET /health` - liveness plus queue figures; never needs a key.

Models are loaded once at startup. At most `concurrency` transcriptions run at once, in a thread pool
(decoding and inference are CPU work that must not stall the event loop); up to `queue_size` more
wait, further requests get 503 with Retry-After at once rather than piling up. Every error is JSON in
OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmasr import __version__
from llmasr.apps.serve.upload import FormError, read_form
from llmasr.apps.writers import OPENAI_FORMATS, WRITERS, render
from llmasr.core.audio import PcmFormat, audio_duration, load_audio
from llmasr.core.errors import AudioError, LlmasrError
from llmasr.core.types import Transcript
from llmasr.decoding.options import Options
from llmasr.decoding.pipeline import Pipeline

log = logging.getLogger("llmasr.apps.serve")

#: the model id OpenAI clients default to; accepted and listed as an alias of the served pipeline
OPENAI_ALIAS = "whisper-1"
RESPONSE_FORMATS = tuple(OPENAI_FORMATS)
GRANULARITIES = ("segment", "word")
LANGUAGES = ("en", "english")
MAX_NBEST = 32
MAX_TERMS = 1000
#: single-valued form fields (besides `file`); the two below may repeat
SINGLE_FIELDS = (
    "model", "prompt", "response_format", "language", "temperature", "nbest", "stream", "raw_format",
)  # fmt: skip
LIST_FIELDS = ("timestamp_granularities[]", "timestamp_granularities", "terms")
KNOWN_FIELDS = set(SINGLE_FIELDS) | set(LIST_FIELDS)

T = TypeVar("T")


@dataclass
class ServeSettings:
    """What `llmasr serve` runs: the models, the limits, and who may call it."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: what is served (recogniser of any kind, LM, weights, context, correction): the options
    #: `llmasr transcribe` takes; None: llmasr's defaults
    options: Options | None = None
    #: bearer token clients must send; None falls back to $LLMASR_API_KEY, and no key means no auth
    api_key: str | None = None
    max_upload_mb: float = 100.0
    max_audio_seconds: float = 3600.0
    #: transcriptions running at once (each in a worker thread)
    concurrency: int = 1
    #: requests allowed to wait for a worker; more are refused with 503
    queue_size: int = 16
    #: uploads read at the same time (each holds up to max_upload_mb); more are refused with 503.
    #: A request takes its queue place only once its upload is in, so slow senders cannot fill the queue
    max_uploads: int = 32
    #: seconds from arrival to answer (upload, queue and transcription); then 408/503/504
    request_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be 0 or more, got {self.queue_size}")
        if self.max_uploads < 1:
            raise ValueError(f"max_uploads must be at least 1, got {self.max_uploads}")
        for name in ("max_upload_mb", "max_audio_seconds", "request_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def max_upload_bytes(self) -> int:
        return max(1, int(self.max_upload_mb * 1024 * 1024))

    def key(self) -> str | None:
        return self.api_key or os.environ.get("LLMASR_API_KEY") or None


def default_pipeline(settings: ServeSettings) -> Pipeline:
    """The pipeline `llmasr transcribe` would build from the same options, with one recogniser replica
    per concurrent worker and the server's duration limit."""
    from llmasr.decoding.options import resolve_options

    options = copy.deepcopy(settings.options) if settings.options is not None else resolve_options()
    options.decoding.asr_workers = settings.concurrency
    options.decoding.max_duration = settings.max_audio_seconds
    return Pipeline(options, log=log.info)


class ApiError(Exception):
    """An error answered as OpenAI-shaped JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Gate:
    """Admission control: `concurrency` jobs run in the pool, `queue_size` more wait, the rest are refused.

    A slot is held from admission until the job really ends in its thread (a thread cannot be
    cancelled), so a request that timed out still counts until its work stops; that keeps the
    number of running transcriptions bounded whatever clients do.
    """

    def __init__(self, concurrency: int, queue_size: int) -> None:
        self.concurrency = concurrency
        self.capacity = concurrency + queue_size
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llmasr-serve")
        self._lock = threading.Lock()
        self.admitted = 0
        self.running = 0
        self.done = 0
        self._mean_seconds = 5.0

    def enter(self) -> bool:
        with self._lock:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` in the pool; the admission slot is given back when it ends (or is cancelled)."""

        def timed() -> T:
            with self._lock:
                self.running += 1
            started = time.perf_counter()
            try:
                return fn()
            finally:
                with self._lock:
                    self.running -= 1
                    self.done += 1
                    self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - started)

        future = self.pool.submit(timed)
        future.add_done_callback(lambda _: self.leave())
        return future

    def retry_after(self) -> str:
        """Seconds until a slot is likely free: the queue ahead divided among the workers."""
        with self._lock:
            ahead = max(1, self.admitted - self.concurrency + 1)
            return str(max(1, math.ceil(self._mean_seconds * ahead / self.concurrency)))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self.running,
                "waiting": max(0, self.admitted - self.running),
                "concurrency": self.concurrency,
                "queue_size": self.capacity - self.concurrency,
                "completed": self.done,
            }


class _Serialized:
    """A Scorer that one thread at a time may call (scorers keep a one-entry context cache).

    Only the Scorer protocol's methods take the lock; every other attribute (the model, its dtype)
    is the scorer's own.
    """

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lock = threading.Lock()

    def score(self, texts: Any, context: str = "") -> list[float]:
        with self._lock:
            return self._target.score(texts, context)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return self._target.count_tokens(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _State:
    """The shared pipeline, built once (at startup, or by the first request if there was no startup)."""

    def __init__(self, settings: ServeSettings, factory: Callable[[ServeSettings], Pipeline]) -> None:
        self.settings = settings
        self.factory = factory
        self.pipeline: Pipeline | None = None
        self.created = int(time.time())
        self._lock = threading.Lock()

    def get_pipeline(self) -> Pipeline:
        with self._lock:
            if self.pipeline is None:
                started = time.perf_counter()
                pipeline = self.factory(self.settings)
                if self.settings.concurrency > 1 and pipeline.scorer is not None:
                    # CausalLMScorer's context cache is not thread-safe: LM scoring takes turns. (CTranslate2
                    # also runs one Whisper call at a time per model, so workers mainly overlap stages.)
                    pipeline.scorer = _Serialized(pipeline.scorer)  # type: ignore[assignment]
                self.pipeline = pipeline
                log.info("models loaded in %.1f s: %s", time.perf_counter() - started, self.model_id())
            return self.pipeline

    def model_id(self) -> str:
        """`asr+lm` (or just `asr` without rescoring) of the served pipeline."""
        opts = self.pipeline.options if self.pipeline is not None else self.settings.options
        if opts is None:
            return "default"
        asr, lm = opts.decoding.asr, opts.rescoring.lm
        if self.pipeline is not None and self.pipeline.scorer is None:
            lm = None
        return f"{asr}+{lm}" if lm and lm.lower() != "none" else asr


@dataclass
class _Request:
    data: bytes
    filename: str
    response_format: str = "json"
    prompt: str | None = None
    terms: list[str] | None = None
    nbest: int | None = None
    words: bool = False
    #: the declared format of a headerless upload (raw PCM)
    raw: PcmFormat | None = None


def create_app(
    settings: ServeSettings, pipeline_factory: Callable[[ServeSettings], Pipeline] | None = None
) -> FastAPI:
    """The FastAPI app; `pipeline_factory` (default: the real models) lets tests serve fake models."""
    state = _State(settings, pipeline_factory or default_pipeline)
    gate = Gate(settings.concurrency, settings.queue_size)
    uploads = SimpleNamespace(value=0)
    api_key = settings.key()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        # In a thread so that a slow model load does not stall uvicorn's own startup machinery.
        await asyncio.to_thread(state.get_pipeline)
        try:
            yield
        finally:
            gate.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="llmasr",
        version=__version__,
        summary="OpenAI-compatible speech recognition with LLM rescoring, offline on a CPU.",
        lifespan=lifespan,
    )
    app.state.llmasr = state
    app.state.gate = gate

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return ApiError(
            exc.status_code, str(exc.detail), code=_code_of(exc.status_code), headers=headers
        ).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        first = problems[0] if problems else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        message = "; ".join(f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg')}" for p in problems)
        return ApiError(
            422, message or "invalid request", param=".".join(loc) or None, code="invalid_value"
        ).response()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load; answered by the event loop even while every worker is busy."""
        return {
            "status": "ok" if state.pipeline is not None else "loading",
            "model": state.model_id(),
            "version": __version__,
            **gate.stats(),
        }

    def model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": state.created, "owned_by": "llmasr"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """The served pipeline under its own id, and under the alias OpenAI clients default to."""
        check_key(request)
        return {"object": "list", "data": [model_card(m) for m in (state.model_id(), OPENAI_ALIAS)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        check_key(request)
        if model_id not in (state.model_id(), OPENAI_ALIAS):
            raise ApiError(
                404, f"model '{model_id}' is not served here", param="model", code="model_not_found"
            )
        return model_card(model_id)

    @app.post("/v1/audio/transcriptions", openapi_extra=_OPENAPI_FORM)
    async def transcriptions(request: Request) -> Response:
        """Transcribe one uploaded audio file with the served pipeline."""
        check_key(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout
        # the upload is read before a transcription slot is taken, so that slow uploads cannot hold
        # the queue; uploads in progress have their own bound (memory)
        if uploads.value >= settings.max_uploads:
            raise ApiError(
                503,
                f"server busy: {settings.max_uploads} uploads are already in progress; retry later",
                kind="server_error",
                code="too_many_uploads",
                headers={"Retry-After": "1"},
            )
        uploads.value += 1  # the event loop is one thread: no lock needed
        try:
            job = await _read_request(request, settings, deadline - loop.time())
        finally:
            uploads.value -= 1
        if not gate.enter():
            raise ApiError(
                503,
                f"server busy: {gate.capacity} requests are already running or queued; retry later",
                kind="server_error",
                code="queue_full",
                headers={"Retry-After": gate.retry_after()},
            )
        submitted = False
        try:
            future = gate.submit(lambda: _transcribe(state, job, settings))
            submitted = True
            try:
                transcript = await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(future)), deadline - loop.time()
                )
            except asyncio.TimeoutError:
                if future.cancel():
                    raise ApiError(
                        503,
                        f"request waited {settings.request_timeout:g} s in the queue without starting; "
                        "retry later",
                        kind="server_error",
                        code="queue_timeout",
                        headers={"Retry-After": gate.retry_after()},
                    ) from None
                raise ApiError(
                    504,
                    f"transcription did not finish within the {settings.request_timeout:g} s request timeout",
                    kind="server_error",
                    code="timeout",
                ) from None
            return _respond(transcript, job)
        finally:
            if not submitted:
                gate.leave()

    return app


async def _read_request(request: Request, settings: ServeSettings, timeout: float) -> _Request:
    """Read and validate the form; the upload itself is bounded in size and time."""
    try:
        form = await asyncio.wait_for(
            read_form(
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                request.stream(),
                file_field="file",
                known=KNOWN_FIELDS,
                max_file_bytes=settings.max_upload_bytes,
            ),
            max(0.0, timeout),
        )
    except FormError as exc:
        raise ApiError(exc.status, exc.message, param=exc.param, code=exc.code) from None
    except asyncio.TimeoutError:
        raise ApiError(
            408, "the upload did not arrive within the request timeout", code="upload_timeout"
        ) from None
    if form.unknown:
        names = ", ".join(f"'{n}'" for n in form.unknown)
        raise ApiError(
            400,
            f"unknown form field(s) {names}; accepted: file, {', '.join(sorted(KNOWN_FIELDS))}",
            param=form.unknown[0],
            code="unknown_parameter",
        )
    values: dict[str, list[str]] = {}
    for name, value in form.fields:
        values.setdefault(name, []).append(value)
    for name in SINGLE_FIELDS:
        if len(values.get(name, [])) > 1:
            raise ApiError(400, f"form field '{name}' was given more than once", param=name, code="duplicate")
    if form.file is None:
        raise ApiError(
            422, "the form field 'file' (the audio file) is required", param="file", code="missing_field"
        )
    if form.file_parts > 1:
        raise ApiError(400, "send exactly one 'file' per request", param="file", code="duplicate")

    def one(name: str) -> str | None:
        got = values.get(name)
        return got[0].strip() if got else None

    job = _Request(data=form.file, filename=form.filename or "upload")
    fmt = (one("response_format") or "json").lower()
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format '{fmt}' is not supported; choose one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
            code="unsupported_value",
        )
    job.response_format = fmt
    language = one("language")
    # ISO 639-1 "en", or a BCP 47 tag whose language is English ("en-US", "en_GB")
    if language and language.lower().replace("_", "-").split("-")[0] not in LANGUAGES:
        raise ApiError(
            400,
            f"language '{language}' is not supported: the served models transcribe English only ('en')",
            param="language",
            code="unsupported_language",
        )
    temperature = one("temperature")
    if temperature:
        try:
            float(temperature)
        except ValueError:
            raise ApiError(
                400, f"temperature '{temperature}' is not a number", param="temperature", code="invalid_value"
            ) from None
    stream = one("stream")
    if stream and stream.lower() not in ("false", "0"):
        raise ApiError(
            400,
            "streaming responses are not supported; send stream=false",
            param="stream",
            code="unsupported_value",
        )
    granularities = [
        g.strip().lower()
        for v in values.get("timestamp_granularities[]", []) + values.get("timestamp_granularities", [])
        for g in v.split(",")
        if g.strip()
    ]
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise ApiError(
            400,
            f"timestamp_granularities '{bad[0]}' is not supported; choose from {', '.join(GRANULARITIES)}",
            param="timestamp_granularities[]",
            code="unsupported_value",
        )
    if granularities and fmt != "verbose_json":
        raise ApiError(
            400,
            f"timestamp_granularities needs response_format=verbose_json (got '{fmt}'), as in OpenAI's API",
            param="timestamp_granularities[]",
            code="invalid_value",
        )
    job.words = "word" in granularities
    raw_format = one("raw_format")
    if raw_format:
        try:
            job.raw = PcmFormat.parse(raw_format)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="raw_format", code="invalid_value") from None
    job.prompt = one("prompt") or None
    if "terms" in values:
        terms = [t.strip() for v in values["terms"] for line in v.splitlines() for t in line.split(",")]
        job.terms = [t for t in terms if t]
        if len(job.terms) > MAX_TERMS:
            raise ApiError(
                400, f"at most {MAX_TERMS} terms per request", param="terms", code="too_many_terms"
            )
    nbest = one("nbest")
    if nbest:
        try:
            job.nbest = int(nbest)
        except ValueError:
            job.nbest = 0
        if not 1 <= job.nbest <= MAX_NBEST:
            raise ApiError(
                400,
                f"nbest must be a whole number from 1 to {MAX_NBEST}, got '{nbest}'",
                param="nbest",
                code="invalid_value",
            )
    return job


def _transcribe(state: _State, job: _Request, settings: ServeSettings) -> Transcript | ApiError:
    """Worker-thread part: decode, then run the pipeline. Errors come back as values, never raised."""
    try:
        audio = load_audio(
            job.data,
            max_duration=settings.max_audio_seconds,
            name=job.filename,
            allow_silent=True,
            raw=job.raw,
        )
        job.data = b""  # the decoded array is all that is needed from here on
        return state.get_pipeline().transcribe(
            audio, prompt=job.prompt, terms=job.terms, name=job.filename, nbest=job.nbest
        )
    except AudioError as exc:
        if exc.kind == "silent":
            # Nothing to transcribe: answer with empty text, as OpenAI does, instead of letting the
            # recogniser invent words for silence.
            return Transcript(source=job.filename, duration=audio_duration(audio), info={"silent": True})
        return _audio_error(exc)
    except LlmasrError as exc:
        log.warning("transcription of %s failed: %s", job.filename, exc)
        return ApiError(500, str(exc), kind="server_error", code="transcription_failed")
    except Exception:
        log.exception("transcription of %s failed", job.filename)
        return ApiError(500, "internal error while transcribing; see the server log", kind="server_error")


def _audio_error(exc: AudioError) -> ApiError:
    problem = exc.problem
    if exc.kind == "too_long":
        return ApiError(413, f"{exc.source}: audio {problem}", param="file", code="audio_too_long")
    if exc.kind == "unreadable":
        return ApiError(415, f"{exc.source}: {problem}", param="file", code="unsupported_media")
    return ApiError(400, f"{exc.source}: {problem}", param="file", code="invalid_audio")


def _respond(result: Transcript | ApiError, job: _Request) -> Response:
    """The transcript in the asked OpenAI response_format, rendered by the writers registry."""
    if isinstance(result, ApiError):
        raise result
    name = OPENAI_FORMATS[job.response_format]
    body = render(result, name, words=job.words)
    return Response(body, media_type=WRITERS[name].media_type)


def _code_of(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")


_OPENAPI_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string", "default": OPENAI_ALIAS},
                        "prompt": {"type": "string"},
                        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
                        "language": {"type": "string", "enum": ["en"]},
                        "temperature": {"type": "number"},
                        "timestamp_granularities[]": {
                            "type": "array",
                            "items": {"type": "string", "enum": list(GRANULARITIES)},
                        },
                        "terms": {"type": "string", "description": "newline- or comma-separated terms"},
                        "raw_format": {
                            "type": "string",
                            "description": "headerless PCM upload: ENCODING:RATE[:CHANNELS], e.g. s16le:8000",
                        },
                        "nbest": {"type": "integer", "minimum": 1, "maximum": MAX_NBEST},
                    },
                }
            }
        },
    }
}
