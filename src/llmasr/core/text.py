"""Text rules shared by every recogniser and input: the decoder-loop test (how many words speech can hold,
how repetitive a text is) and the term-list format users hand llmasr (`--terms`, the server's `terms`
field, manifests)."""

from __future__ import annotations

import zlib
from pathlib import Path

from llmasr.core.errors import LlmasrError

#: natural speech stays under ~5 words a second over a segment; more than this in the audio's time is a
#: decoder loop, not a speaker repeating a phrase (the guard of every recogniser)
MAX_WORDS_PER_SECOND = 6.0


def max_spoken_words(seconds: float) -> int:
    """The most words speech of this duration (seconds) can hold: MAX_WORDS_PER_SECOND * seconds + 2."""
    return int(MAX_WORDS_PER_SECOND * max(0.0, seconds) + 2)


#: the repeated n-gram length banned when a decoder loop is decoded again (Whisper's and the speech-LLMs'
#: recognisers) and in every speech-LLM beam search
NO_REPEAT_NGRAM = 4

#: zlib compression ratio above which a text is repetitive (faster-whisper's and Whisper's threshold)
COMPRESSION_RATIO_THRESHOLD = 2.4


def compression_ratio(text: str) -> float:
    """UTF-8 bytes of a text over its zlib-compressed bytes (0 for an empty text's 0 bytes)."""
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


def is_decoder_loop(text: str, seconds: float, tokens: int = 0, max_tokens: int | None = None) -> bool:
    """True when a hypothesis is a decoder loop rather than speech that repeats itself: it is repetitive
    (zlib compression ratio over COMPRESSION_RATIO_THRESHOLD, faster-whisper's test) AND longer than the
    audio can hold (more spoken words than `max_spoken_words(seconds)`, numbers counted as spoken words),
    or its `tokens` reached the decoder's length limit `max_tokens` (when given). Genuine repetition
    ("no, no, no ..." twelve times in 6 s, a chant, a counting drill) passes; "montreal forced aligner"
    forty times in 5 s does not."""
    from llmasr.core.metrics import normalize  # jiwer: loaded when first needed, not at CLI start

    if max_tokens is not None and tokens >= max_tokens:
        return True
    if compression_ratio(text) <= COMPRESSION_RATIO_THRESHOLD:
        return False
    return len(normalize(text).split()) > max_spoken_words(seconds)


#: the term-list file format, as `--terms` help and docs/inputs.md state it
TERMS_FORMAT = (
    "UTF-8 text (a byte-order mark is ignored), one term per line, LF or CRLF line ends; surrounding "
    "spaces are trimmed, blank lines skipped, repeated terms kept once; a line starting with '# ' "
    "(hash and space) or holding only '#' is a comment, so '#include' or 'C#' are terms"
)


def parse_terms(text: str) -> list[str]:
    """Terms of a term-list text (see TERMS_FORMAT); order kept."""
    seen: dict[str, None] = {}
    for line in text.removeprefix("\ufeff").splitlines():
        term = line.strip()
        if not term or term == "#" or term.startswith("# "):
            continue
        seen.setdefault(term, None)
    return list(seen)


def read_terms(path: str | Path) -> list[str]:
    """A term-list file (TERMS_FORMAT). Raises LlmasrError naming the file when it is missing or not UTF-8."""
    p = Path(path)
    if not p.is_file():
        raise LlmasrError(f"{p}: term list not found")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LlmasrError(f"{p}: term list is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return parse_terms(text)
