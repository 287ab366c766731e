"""A small set of REAL recorded speech, built only from packages, so the numbers are reproducible.

Sources:

* Debian ``pocketsphinx-testdata`` (/usr/share/pocketsphinx/test/data): ``cards/*.wav`` (references
  in ``cards/cards.transcription``), ``librivox/*.wav`` (``librivox/transcription``), and the raw
  16 kHz PCM files ``goforward.raw`` ("go forward ten meters": the expected hypothesis in the
  pocketsphinx tests and the ``goforward.gram`` grammar) and ``tidigits/dhd.2934z.raw`` ("two nine
  three four zero": the expected hypothesis of the pocketsphinx Python decode_raw test, and the
  same digit string as ``man.ah.2934za`` in ``tidigits.lsn``). ``numbers.raw`` and ``something.raw``
  are left out: no reference transcript exists for them in the package or the pocketsphinx sources.
* ESPnet's ``egs2/mini_an4/asr1/downloads.tar.gz`` (inside the ``espnet`` sdist on PyPI): 7 AN4
  utterances with transcripts (spelled-out words, lower-cased here), plus 2 room impulse responses
  and 2 noise clips kept in ``noise/`` for augmentation.

Every entry becomes a 16 kHz mono FLAC under ``out_dir/real/`` so the manifest is self-contained.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from llmasr.core.audio import PcmFormat, load_audio
from llmasr.core.errors import LlmasrError
from llmasr.data.manifest import Utterance, write_manifest
from llmasr.data.synth import write_flac

TESTDATA = Path("/usr/share/pocketsphinx/test/data")
ESPNET_VERSION = "202611"
_AN4_MEMBER = "egs2/mini_an4/asr1/downloads.tar.gz"

# Raw files whose references come from the pocketsphinx test sources (see the module docstring).
RAW_REFERENCES = {
    "goforward.raw": "go forward ten meters",
    "tidigits/dhd.2934z.raw": "two nine three four zero",
}


class DataError(LlmasrError):
    """A data source that cannot be found, fetched or read."""


def _clean_sphinx_line(line: str) -> tuple[str, str] | None:
    """'<s> ten of clubs </s> (001)' -> ('001', 'ten of clubs')."""
    m = re.match(r"^(.*)\(([^()]+)\)\s*$", line.strip())
    if not m:
        return None
    words = [w for w in m.group(1).split() if w not in ("<s>", "</s>", "<sil>")]
    return m.group(2).strip(), " ".join(words)


def _read_transcription(path: Path) -> dict[str, str]:
    if not path.exists():
        raise DataError(f"{path}: transcript file missing (apt-get install pocketsphinx-testdata)")
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parsed = _clean_sphinx_line(line)
        if parsed:
            out[parsed[0]] = parsed[1]
    return out


def pocketsphinx_utterances(out_dir: Path, testdata: Path = TESTDATA) -> list[Utterance]:
    """Convert the pocketsphinx-testdata recordings with a known reference to FLAC records."""
    if not testdata.is_dir():
        raise DataError(f"{testdata}: not found (apt-get install pocketsphinx-testdata)")
    audio_dir = out_dir / "real"
    utts: list[Utterance] = []
    for sub, tfile, prefix in (
        ("cards", "cards.transcription", "cards"),
        ("librivox", "transcription", "lv"),
    ):
        refs = _read_transcription(testdata / sub / tfile)
        for wav in sorted((testdata / sub).glob("*.wav")):
            if wav.stem not in refs:
                continue
            uid = f"ps-{prefix}-{wav.stem.rsplit('-', 1)[-1]}"
            dest = audio_dir / f"{uid}.flac"
            dur = write_flac(load_audio(wav, max_duration=None), dest)
            src = f"pocketsphinx-testdata:{sub}/{wav.name}"
            style = "read" if sub == "librivox" else "command"
            utts.append(Utterance(uid, str(dest), refs[wav.stem], dur, extra={"source": src, "style": style}))
    for rel, text in RAW_REFERENCES.items():
        raw = testdata / rel
        if not raw.exists():
            raise DataError(f"{raw}: not found (apt-get install pocketsphinx-testdata)")
        uid = "ps-" + Path(rel).name.removesuffix(".raw").replace(".", "-")
        dest = audio_dir / f"{uid}.flac"
        dur = write_flac(load_audio(raw, max_duration=None, raw=PcmFormat(16000)), dest)  # headerless
        style = "digits" if "tidigits" in rel else "command"
        extra = {"source": f"pocketsphinx-testdata:{rel}", "style": style}
        utts.append(Utterance(uid, str(dest), text, dur, extra=extra))
    return utts


def fetch_espnet_sdist(dest: Path, sdist: Path | None = None) -> Path:
    """The ESPnet source distribution (which carries the mini_an4 data), fetched with pip if needed.

    `sdist` is a pre-downloaded ``espnet-*.tar.gz``; otherwise a copy already in `dest` is reused, and
    only then is ``pip download --no-binary :all:`` run (pinned version first, then unpinned).
    """
    if sdist is not None:
        sdist = Path(sdist)
        if not sdist.is_file():
            raise DataError(f"{sdist}: ESPnet sdist not found")
        return sdist
    dest.mkdir(parents=True, exist_ok=True)
    cached = sorted(dest.glob("espnet-*.tar.gz"))
    if cached:
        return cached[-1]
    errors = []
    for req in (f"espnet=={ESPNET_VERSION}", "espnet"):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--python-version", "3.12", req, "-d", str(dest)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        cached = sorted(dest.glob("espnet-*.tar.gz"))
        if res.returncode == 0 and cached:
            return cached[-1]
        errors.append(f"{req}: {(res.stderr or res.stdout).strip()[-400:]}")
    raise DataError(
        "could not download the ESPnet sdist with pip (needed for the AN4 utterances); "
        "download it elsewhere with `pip download --no-deps --no-binary :all: espnet` and pass "
        "its path with --espnet-sdist.\n" + "\n".join(errors)
    )


def _open_an4(sdist: Path) -> tarfile.TarFile:
    """The inner downloads.tar.gz of the sdist, opened in memory."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            for member in outer:
                if member.name.endswith(_AN4_MEMBER):
                    fh = outer.extractfile(member)
                    if fh is None:
                        break
                    return tarfile.open(fileobj=io.BytesIO(fh.read()), mode="r:gz")
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"{sdist}: not a readable ESPnet sdist ({e})") from e
    raise DataError(f"{sdist}: has no {_AN4_MEMBER}")


def an4_utterances(sdist: Path, out_dir: Path) -> list[Utterance]:
    """The AN4 utterances with transcripts, as FLAC records; RIRs and noises go to out_dir/noise/."""
    audio_dir = out_dir / "real"
    noise_dir = out_dir / "noise"
    noise_dir.mkdir(parents=True, exist_ok=True)
    with _open_an4(sdist) as inner:
        files: dict[str, bytes] = {}
        for m in inner.getmembers():
            if m.isfile():
                fh = inner.extractfile(m)
                if fh is not None:
                    files[m.name] = fh.read()
    refs: dict[str, str] = {}
    for name, data in files.items():
        if name.endswith(".transcription"):
            for line in data.decode("utf-8", errors="replace").splitlines():
                parsed = _clean_sphinx_line(line)
                if parsed:
                    refs[parsed[0]] = parsed[1].lower()
    utts: list[Utterance] = []
    for name in sorted(files):
        stem = Path(name).stem
        if name.endswith(".sph") and stem in refs:
            uid = f"an4-{stem}"
            dest = audio_dir / f"{uid}.flac"
            dur = write_flac(load_audio(files[name], name=name, max_duration=None), dest)
            rel = name.split("downloads/", 1)[-1]
            extra = {"source": f"espnet-mini_an4:{rel}", "style": "command"}
            utts.append(Utterance(uid, str(dest), refs[stem], dur, extra=extra))
    index: dict[str, list[str]] = {"rirs": [], "noises": []}
    for name in sorted(files):
        if name.endswith(".wav") and ("/rirs/" in name or "/noise/" in name):
            kind = "rirs" if "/rirs/" in name else "noises"
            target = noise_dir / Path(name).name
            target.write_bytes(files[name])
            index[kind].append(target.name)
    (noise_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    if not utts:
        raise DataError(f"{sdist}: no AN4 utterance with a transcript found")
    return utts


def build_real_dev(
    out_dir: Path,
    *,
    espnet_sdist: Path | None = None,
    testdata: Path = TESTDATA,
    cache_dir: Path | None = None,
    packages: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write ``out_dir/real_dev.jsonl``: pocketsphinx-testdata + ESPnet AN4 utterances (see module doc),
    and with `packages` the recordings of llmasr.data.real_packages (read, prompts, conversational); each
    utterance's `style` says which kind of speech it is (`llmasr eval --by style`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir or out_dir / ".cache"
    utts = pocketsphinx_utterances(out_dir, testdata)
    sdist = fetch_espnet_sdist(cache, espnet_sdist)
    utts += an4_utterances(sdist, out_dir)
    if packages:
        from llmasr.data.real_packages import package_utterances

        utts += package_utterances(out_dir, cache, log=log)
    return write_manifest(utts, out_dir / "real_dev.jsonl")
