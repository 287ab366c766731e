"""Word error rate and friends, on one English normaliser applied to references and hypotheses alike.

Whisper writes "1984", "3.5%" and "Don't!", reference transcripts often write "nineteen eighty four",
"three point five percent" and "don't"; without a shared normaliser such differences would count as
errors and swamp the effect of LLM rescoring that the metrics exist to measure.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER = re.compile(
    r"(?<!\d)(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(?P<frac>\d+))?"
    r"(?:(?P<suffix>st|nd|rd|th|s)(?![a-z]))?"
)


def number_to_words(n: int) -> str:
    """Cardinal English words for a non-negative integer: 1021 -> "one thousand twenty one"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (" " + _ONES[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + (" " + number_to_words(rest) if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return number_to_words(high) + " " + name + (" " + number_to_words(rest) if rest else "")
    raise AssertionError("unreachable")


def year_to_words(n: int) -> str:
    """How a year is read: 1984 -> "nineteen eighty four", 1905 -> "nineteen oh five", 2010 -> "twenty ten".

    2000-2009 read as cardinals ("two thousand five"), as do years not of the form 1100-2099.
    """
    if not 1100 <= n <= 2099 or 2000 <= n <= 2009:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return number_to_words(high) + " hundred"
    if low < 10:
        return number_to_words(high) + " oh " + _ONES[low]
    return number_to_words(high) + " " + number_to_words(low)


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last


def _plural(words: str) -> str:
    if words.endswith("y"):
        return words[:-1] + "ies"
    return words + ("es" if words.endswith("x") else "s")


def _number_match(m: re.Match[str]) -> str:
    digits = m["int"].replace(",", "")
    suffix = m["suffix"]
    if m["frac"] is not None:
        words = number_to_words(int(digits)) + " point " + " ".join(_ONES[int(d)] for d in m["frac"])
    elif len(digits) > 1 and digits.startswith("0"):
        words = " ".join(_ONES[int(d)] for d in digits)  # "007", codes and the like: read digit by digit
    elif suffix in ("st", "nd", "rd", "th"):
        return " " + _ordinal(number_to_words(int(digits))) + " "
    elif len(digits) == 4 and "," not in m["int"]:
        words = year_to_words(int(digits))
    else:
        words = number_to_words(int(digits))
    if suffix == "s":  # "1990s", "the 60s"
        words = _plural(words)
    elif suffix:  # "3.5th" and the like: keep the letters as a word
        words += " " + suffix
    return " " + words + " "


def spell_numbers(text: str) -> str:
    """Digits to words ("$5" -> "5 dollars" -> "five dollars", "3%" -> "three percent"), punctuation kept:
    the one set of number rules, for WER normalisation and for text that TTS will read."""
    text = re.sub(r"\$((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)", r"\1 dollars", text)
    text = re.sub(r"(\d)\s*%", r"\1 percent", text)
    text = _NUMBER.sub(_number_match, text)
    return re.sub(r"\s+([,.;:!?)])", r"\1", " ".join(text.split()))


#: titles as they are said, word by word whatever follows (both sides of a comparison must agree):
#: references spelled out by hand ("mister") meet recognisers that abbreviate ("Mr."); "st" (saint or
#: street) is left alone
_TITLES = {"mr": "mister", "mrs": "missus", "ms": "miz", "dr": "doctor"}


def normalize(text: str) -> str:
    """Lowercase, numbers as words, titles spelled out, punctuation removed except apostrophes inside
    words, one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = spell_numbers(text)
    text = text.replace("%", " percent ").replace("&", " and ")
    text = re.sub(r"[^\w\s']|_", " ", text)  # punctuation and symbols, hyphens included
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes inside words
    return " ".join(_TITLES.get(w, w) for w in text.split())


@dataclass
class WerCounts:
    """Edit counts summed over utterances; `wer` is errors per reference word."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        # With no reference words at all, the inserted words themselves are the error count.
        return self.errors / max(self.ref_words, 1)

    def __add__(self, other: WerCounts) -> WerCounts:
        return WerCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.ref_words + other.ref_words,
        )


def _counts_normalized(ref: str, hyp: str) -> WerCounts:
    ref_words = ref.split()
    if not ref_words:  # jiwer may reject an empty reference; every hypothesis word is an insertion
        return WerCounts(insertions=len(hyp.split()))
    if not hyp.split():
        return WerCounts(deletions=len(ref_words), ref_words=len(ref_words))
    out = jiwer.process_words(ref, hyp)
    return WerCounts(out.substitutions, out.deletions, out.insertions, len(ref_words))


def counts(refs: Sequence[str], hyps: Sequence[str]) -> WerCounts:
    """Summed edit counts of normalised hypotheses against normalised references."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = WerCounts()
    for ref, hyp in zip(refs, hyps, strict=True):
        total += _counts_normalized(normalize(ref), normalize(hyp))
    return total


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER (total errors / total reference words) after normalisation.

    Empty references count their hypothesis words as insertions; if no reference has any word, the
    result is the number of inserted words (0.0 when the hypotheses are empty too).
    """
    return counts(refs, hyps).wer


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(errors, reference words) of one utterance after normalisation."""
    c = _counts_normalized(normalize(ref), normalize(hyp))
    return c.errors, c.ref_words


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(character edits, reference characters) of two texts as given (no normalisation): CER."""
    if not ref:
        return len(hyp), 0
    if not hyp:
        return len(ref), len(ref)
    out = jiwer.process_characters(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref)


def entity_recall(entities: list[str], hyp: str) -> tuple[int, int]:
    """(found, total): entities that appear as whole normalised word sequences in the hypothesis.

    This is what domain prompting and rescoring aim to improve (names, jargon) and WER barely shows.
    Entities that normalise to nothing (e.g. only punctuation) are not counted.
    """
    padded = f" {normalize(hyp)} "
    found = total = 0
    for entity in entities:
        words = normalize(entity)
        if not words:
            continue
        total += 1
        found += f" {words} " in padded
    return found, total


def greedy_oracle(reference: str, segments: Sequence[Sequence[str]]) -> str:
    """Best text reachable by picking one hypothesis per segment, chosen greedily segment by segment
    (each segment's best with the others held, starting from every segment's first option). Exact for
    one segment; with several, a text the lists can reach, so its WER bounds the true oracle from above.
    An empty segment contributes nothing."""
    chosen = [opts[0] if opts else "" for opts in segments]
    for i, opts in enumerate(segments):

        def errs(text: str, i: int = i) -> int:
            return word_errors(reference, " ".join([*chosen[:i], text, *chosen[i + 1 :]]))[0]

        if opts:
            chosen[i] = min(opts, key=errs)
    return " ".join(t for t in chosen if t)


def oracle_wer(refs: list[str], nbests: list[list[str]]) -> float:
    """WER if each utterance's best N-best entry were chosen: the ceiling for any rescoring.

    An empty N-best list counts as an empty hypothesis.
    """
    if len(refs) != len(nbests):
        raise ValueError(f"{len(refs)} references but {len(nbests)} N-best lists")
    total = WerCounts()
    for ref, nbest in zip(refs, nbests, strict=True):
        r = normalize(ref)
        options = [_counts_normalized(r, normalize(h)) for h in nbest] or [_counts_normalized(r, "")]
        total += min(options, key=lambda c: c.errors)
    return total.wer


def rtfx(audio_seconds: float, processing_seconds: float) -> float:
    """Inverse real-time factor: seconds of audio processed per second of compute (higher is faster)."""
    if audio_seconds < 0 or processing_seconds < 0:
        raise ValueError("durations must be non-negative")
    if processing_seconds == 0:
        return math.inf if audio_seconds > 0 else 0.0
    return audio_seconds / processing_seconds
