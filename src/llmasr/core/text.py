"""Text formats users hand llmasr: term lists (`--terms`, the server's `terms` field, manifests)."""

from __future__ import annotations

from pathlib import Path

from llmasr.core.errors import LlmasrError

#: natural speech stays under ~5 words a second over a segment; more than this in the audio's time is a
#: decoder loop, not a speaker repeating a phrase (the guard of every recogniser)
MAX_WORDS_PER_SECOND = 6.0


def max_spoken_words(seconds: float) -> int:
    """The most words speech of this duration (seconds) can hold: MAX_WORDS_PER_SECOND * seconds + 2."""
    return int(MAX_WORDS_PER_SECOND * max(0.0, seconds) + 2)


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
