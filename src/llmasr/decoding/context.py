"""The text that conditions the LLM: domain prompt, term list and previous segments."""

from __future__ import annotations

from collections.abc import Callable, Sequence


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
