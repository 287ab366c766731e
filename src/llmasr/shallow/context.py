"""The text that conditions the LLM: domain prompt, term list (S2) and previous segments (S1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from llmasr.errors import LlmasrError

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


def build_context(prompt: str | None, terms: Sequence[str], history: str) -> str:
    """Prefix for the LLM. Empty when there is nothing to say: the hypothesis then opens the text."""
    head = []
    if prompt and prompt.strip():
        head.append(prompt.strip())
    if terms:
        head.append("Terms: " + ", ".join(terms) + ".")
    if not head:
        return history.strip()
    body = "Transcript:" + (" " + history.strip() if history.strip() else "")
    return "\n".join([*head, body])


def trim_history(history: Sequence[str], budget: int, count_tokens: Callable[[str], int]) -> str:
    """The most recent chosen texts that fit in `budget` LM tokens (whole words only)."""
    if budget <= 0:
        return ""
    words = " ".join(history).split()
    words = words[-budget:]  # a word is at least one token
    while words and count_tokens(" ".join(words)) > budget:
        words = words[max(1, len(words) // 8) :]
    return " ".join(words)
