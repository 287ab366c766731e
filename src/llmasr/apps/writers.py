"""Transcript output: plain text, JSON, SRT and WebVTT subtitles.

Subtitles follow the usual readability limits (at most two lines of about 42 characters per cue), so a
long Whisper segment becomes several cues, timed by its word timings when it has them. Files are
written atomically so an interrupted run never leaves a half-written transcript over a good one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmasr.core.files import atomic_write
from llmasr.core.types import Segment, Transcript

FORMATS = ("txt", "json", "srt", "vtt")
#: subtitle line length and lines per cue (common broadcast guidelines)
MAX_LINE_CHARS = 42
MAX_CUE_LINES = 2


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]


def render(transcript: Transcript, fmt: str, *, nbest: bool = False) -> str:
    """The transcript as text in `fmt` (one of FORMATS); `nbest` adds N-best lists to json."""
    fmt = _check_format(fmt)
    if fmt == "txt":
        return transcript.text + "\n"
    if fmt == "json":
        return json.dumps(transcript.to_dict(nbest=nbest), indent=2, ensure_ascii=False) + "\n"
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


def write(transcript: Transcript, fmt: str, path: Path, *, nbest: bool = False) -> Path:
    """Render and write to `path` atomically (temp file in the same folder, then os.replace)."""
    text = render(transcript, fmt, nbest=nbest)
    path = Path(path)
    with atomic_write(path, newline="\n") as f:
        f.write(text)
    return path


def output_paths(inputs: Sequence[str | os.PathLike[str]], out_dir: Path, fmt: str) -> list[Path]:
    """Where each input's transcript goes under `out_dir`: its path relative to the inputs' common folder,
    with the format's suffix, so inputs of the same name in different folders never share an output
    (monday/meeting.wav -> OUT/monday/meeting.txt, tuesday/meeting.wav -> OUT/tuesday/meeting.txt).
    Inputs that would still collide (meeting.wav and meeting.flac side by side) keep their own suffix
    (meeting.wav.txt, meeting.flac.txt). The same input given twice gets the same path."""
    key = _check_format(fmt)
    absolute = [os.path.abspath(os.fspath(p)) for p in inputs]
    if not absolute:
        return []
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
    text; otherwise (e.g. the text was changed by rescoring and not realigned) cue times are shared
    out over the segment in proportion to their length in characters.
    """
    tokens = seg.text.split()
    if not tokens:
        return []
    timed = [w for w in seg.words if w.word.strip()]
    use_words = [w.word.strip() for w in timed] == tokens
    groups = _group(tokens)
    cues: list[Cue] = []
    index = 0
    total_chars = sum(len(t) for t in tokens)
    chars_before = 0
    for lines in groups:
        count = sum(len(line.split()) for line in lines)
        chars = sum(len(t) for t in tokens[index : index + count])
        if use_words:
            start, end = timed[index].start, timed[index + count - 1].end
        else:
            span = seg.end - seg.start
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
    if key not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return key
