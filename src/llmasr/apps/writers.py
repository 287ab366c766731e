"""Transcript output formats: one registry (WRITERS) for the CLI, batch runs and the server.

| name | what | OpenAI `response_format` |
|---|---|---|
| txt | the text | text |
| json | llmasr's full transcript: text, first-pass text, segments with word timings, info | - |
| srt, vtt | subtitles | srt, vtt |
| verbose_json | OpenAI's verbose transcription: segments, words (when asked), duration | verbose_json |
| openai_json | OpenAI's plain transcription: `{"text": ...}` | json |

Adding a format is one render function plus one entry in WRITERS. Subtitles follow the usual readability
limits (at most two lines of about 42 characters per cue), so a long segment becomes several cues, timed by
its word timings when it has them. Files are written atomically so an interrupted run never leaves a
half-written transcript over a good one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmasr.core.files import atomic_write
from llmasr.core.text import compression_ratio
from llmasr.core.types import Segment, Transcript

#: subtitle line length and lines per cue (common broadcast guidelines)
MAX_LINE_CHARS = 42
MAX_CUE_LINES = 2
#: a pause between timed words longer than this ends a cue (seconds), so no cue stays up over silence
CUE_PAUSE = 2.0


@dataclass(frozen=True)
class RenderOptions:
    """What a format may include beyond the text: N-best lists (json), word timings (verbose_json)."""

    nbest: bool = False
    words: bool = True
    #: JSON on one line (JSON Lines, when several transcripts share one stream)
    compact: bool = False


@dataclass(frozen=True)
class Writer:
    render: Callable[[Transcript, RenderOptions], str]
    #: file suffix and HTTP media type
    suffix: str
    media_type: str
    #: the name OpenAI's API gives this format (`response_format`), if it has one
    openai: str | None = None


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]


def _txt(transcript: Transcript, options: RenderOptions) -> str:
    return transcript.text + "\n"


def _json(transcript: Transcript, options: RenderOptions) -> str:
    indent = None if options.compact else 2
    return json.dumps(transcript.to_dict(nbest=options.nbest), indent=indent, ensure_ascii=False) + "\n"


def _subtitles(fmt: str) -> Callable[[Transcript, RenderOptions], str]:
    def render_cues(transcript: Transcript, options: RenderOptions) -> str:
        cues = [cue for seg in transcript.segments for cue in segment_cues(seg)]
        sep = "," if fmt == "srt" else "."
        blocks = []
        for i, cue in enumerate(cues, 1):
            timing = f"{format_timestamp(cue.start, sep)} --> {format_timestamp(cue.end, sep)}"
            head = [str(i), timing] if fmt == "srt" else [timing]
            blocks.append("\n".join(head + cue.lines) + "\n")
        if fmt == "srt":
            return "\n".join(blocks)
        return "\n".join(["WEBVTT\n", *blocks])

    return render_cues


def _usage(transcript: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def verbose_json(transcript: Transcript, *, words: bool = False) -> dict[str, Any]:
    """OpenAI's verbose_json shape; `first_pass_text` (the recogniser's own best guess) is an llmasr extra."""
    segments = []
    for i, seg in enumerate(transcript.segments):
        chosen = next((h for h in seg.nbest if h.text.strip() == seg.text), None)
        tokens = list(chosen.tokens) if chosen else []
        segments.append(
            {
                "id": i,
                "seek": round(seg.start * 100),
                "start": seg.start,
                "end": seg.end,
                "text": seg.text,
                "tokens": tokens,
                "temperature": 0.0,
                "avg_logprob": round(chosen.am_score / max(1, len(tokens)), 4) if chosen else 0.0,
                "compression_ratio": round(compression_ratio(seg.text), 4),
                "no_speech_prob": 0.0,
                "first_pass_text": seg.first_pass_text,
            }
        )
    out: dict[str, Any] = {
        "task": "transcribe",
        "language": "english",
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": segments,
    }
    if words:
        out["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for seg in transcript.segments
            for w in seg.words
            if w.word.strip()
        ]
    return out


def _verbose_json(transcript: Transcript, options: RenderOptions) -> str:
    data = {**verbose_json(transcript, words=options.words), "usage": _usage(transcript)}
    return json.dumps(data, ensure_ascii=False) + "\n"


def _openai_json(transcript: Transcript, options: RenderOptions) -> str:
    return json.dumps({"text": transcript.text, "usage": _usage(transcript)}, ensure_ascii=False) + "\n"


WRITERS: dict[str, Writer] = {
    "txt": Writer(_txt, "txt", "text/plain; charset=utf-8", openai="text"),
    "json": Writer(_json, "json", "application/json"),
    "srt": Writer(_subtitles("srt"), "srt", "text/plain; charset=utf-8", openai="srt"),
    "vtt": Writer(_subtitles("vtt"), "vtt", "text/vtt; charset=utf-8", openai="vtt"),
    "verbose_json": Writer(_verbose_json, "json", "application/json", openai="verbose_json"),
    "openai_json": Writer(_openai_json, "json", "application/json", openai="json"),
}
#: OpenAI's response_format names -> writer names
OPENAI_FORMATS = {w.openai: name for name, w in WRITERS.items() if w.openai}


def render(transcript: Transcript, fmt: str, *, nbest: bool = False, words: bool = True) -> str:
    """The transcript as text in format `fmt` (a WRITERS name). Raises ValueError for an unknown one."""
    return WRITERS[_check_format(fmt)].render(transcript, RenderOptions(nbest=nbest, words=words))


def render_stream(transcript: Transcript, fmt: str, *, several: bool) -> str:
    """What goes to a stream shared by `several` transcripts or not (`llmasr transcribe` without --out):
    one transcript as `render` gives it; several, `json` one document per line (JSON Lines; each names
    its `source`) and the other formats each after a `==> SOURCE <==` line and before a blank one, as
    `head` and `tail` print several files, so that the stream can be split again by input."""
    key = _check_format(fmt)
    if not several:
        return render(transcript, key)
    if key == "json":
        return WRITERS[key].render(transcript, RenderOptions(compact=True))
    body = render(transcript, key).rstrip("\n")
    return f"==> {transcript.source} <==\n{body}\n\n"


def write(transcript: Transcript, fmt: str, path: Path, *, nbest: bool = False) -> Path:
    """Render and write to `path` atomically (temp file in the same folder, then os.replace)."""
    text = render(transcript, fmt, nbest=nbest)
    path = Path(path)
    with atomic_write(path, newline="\n") as f:
        f.write(text)
    return path


def output_paths(
    inputs: Sequence[str | os.PathLike[str]], out_dir: Path, fmt: str, *, mirror: bool = False
) -> list[Path]:
    """Where each input's transcript goes under `out_dir`, so that no two inputs ever share an output.

    `<stem>.<suffix>` when every input's stem is its own (faster-whisper's naming); otherwise, or with
    `mirror`, the input's path relative to the inputs' common folder (monday/meeting.wav ->
    OUT/monday/meeting.txt, tuesday/meeting.wav -> OUT/tuesday/meeting.txt), and inputs that would still
    collide (meeting.wav beside meeting.flac) keep their own suffix (meeting.wav.txt, meeting.flac.txt).
    The same input given twice gets the same path."""
    key = WRITERS[_check_format(fmt)].suffix
    absolute = [os.path.abspath(os.fspath(p)) for p in inputs]
    if not absolute:
        return []
    stems = {os.path.splitext(os.path.basename(p))[0] for p in set(absolute)}
    if not mirror and len(stems) == len(set(absolute)):
        return [out_dir / f"{os.path.splitext(os.path.basename(p))[0]}.{key}" for p in absolute]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    relative = [Path(os.path.relpath(p, root)) for p in absolute]
    plain = [r.with_suffix(f".{key}") if r.suffix else r.with_name(f"{r.name}.{key}") for r in relative]
    owners: dict[Path, set[str]] = {}
    for path, source in zip(plain, absolute):
        owners.setdefault(path, set()).add(source)
    return [
        out_dir / (p if len(owners[p]) == 1 else r.with_name(f"{r.name}.{key}"))
        for p, r in zip(plain, relative)
    ]


def format_timestamp(seconds: float, sep: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or, with sep=".", HH:MM:SS.mmm (WebVTT); negative times clamp to zero."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def segment_cues(seg: Segment) -> list[Cue]:
    """Split a segment into cues of at most MAX_CUE_LINES lines of about MAX_LINE_CHARS characters.

    Word timings (absolute seconds, as in a Transcript) time each cue when they spell the segment's
    text, and a pause of more than CUE_PAUSE seconds between two words ends a cue; otherwise (e.g. the
    text was changed by rescoring and not realigned) cue times are shared out over the segment in
    proportion to their length in characters.
    """
    tokens = seg.text.split()
    if not tokens:
        return []
    timed = [w for w in seg.words if w.word.strip()]
    use_words = [w.word.strip() for w in timed] == tokens
    pauses = [
        k
        for k in range(1, len(timed))
        if use_words and round(timed[k].start - timed[k - 1].end, 3) > CUE_PAUSE
    ]
    bounds = [0, *pauses, len(tokens)]
    cues: list[Cue] = []
    total_chars = sum(len(t) for t in tokens)
    index = chars_before = 0
    span = seg.end - seg.start
    for first, last in zip(bounds, bounds[1:]):
        for lines in _group(tokens[first:last]):
            count = sum(len(line.split()) for line in lines)
            chars = sum(len(t) for t in tokens[index : index + count])
            if use_words:
                start, end = timed[index].start, timed[index + count - 1].end
            else:
                start = seg.start + span * chars_before / total_chars
                end = seg.start + span * (chars_before + chars) / total_chars
            cues.append(Cue(start=start, end=max(start, end), lines=lines))
            index += count
            chars_before += chars
    return cues


def _group(tokens: list[str]) -> list[list[str]]:
    """Greedy line filling: words into lines of <= MAX_LINE_CHARS, lines into cues of <= MAX_CUE_LINES."""
    cues: list[list[str]] = []
    lines: list[str] = []
    line = ""
    for token in tokens:
        if line and len(line) + 1 + len(token) > MAX_LINE_CHARS:
            lines.append(line)
            line = ""
            if len(lines) == MAX_CUE_LINES:
                cues.append(lines)
                lines = []
        line = f"{line} {token}" if line else token
    lines.append(line)
    cues.append(lines)
    return cues


def _check_format(fmt: str) -> str:
    key = fmt.lower().lstrip(".")
    if key not in WRITERS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(WRITERS)}")
    return key
