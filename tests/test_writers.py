from __future__ import annotations

import json
import re

import pytest

from llmasr.apps.writers import (
    CUE_PAUSE,
    OPENAI_FORMATS,
    WRITERS,
    format_timestamp,
    render,
    render_stream,
    segment_cues,
    write,
)
from llmasr.core.types import Hypothesis, Segment, Transcript, Word


def words(text: str, start: float, step: float = 0.5) -> list[Word]:
    return [Word(w, start + i * step, start + i * step + 0.4) for i, w in enumerate(text.split())]


@pytest.fixture
def transcript() -> Transcript:
    long_text = (
        "the quick brown fox jumps over the lazy dog while the cat watches from the window "
        "and the bird sings a song about the morning light"
    )
    return Transcript(
        source="talk.wav",
        duration=3725.5,
        segments=[
            Segment(0.0, 2.5, "Hello world.", words=words("Hello world.", 0.1), first_pass_text="hello word"),
            Segment(3725.0, 3725.5, "Ünïcödé – café.", first_pass_text="unicode cafe"),
            Segment(10.0, 22.0, long_text, words=words(long_text, 10.0, 0.45)),
        ],
        info={"mode": "rescore"},
    )


def test_timestamps():
    assert format_timestamp(0) == "00:00:00,000"
    assert format_timestamp(3725.0456) == "01:02:05,046"
    assert format_timestamp(59.9996, ".") == "00:01:00.000"
    assert format_timestamp(-0.2) == "00:00:00,000"
    assert format_timestamp(100 * 3600 + 1.5, ".") == "100:00:01.500"


def test_txt(transcript):
    text = render(transcript, "txt")
    assert text == "Hello world. Ünïcödé – café. " + transcript.segments[2].text + "\n"


def test_json_round_trip(transcript):
    text = render(transcript, "json")
    assert "Ünïcödé" in text  # ensure_ascii=False
    data = json.loads(text)
    assert data == json.loads(json.dumps(transcript.to_dict()))
    assert data["text"] == transcript.text
    assert data["segments"][0]["words"][0] == {"word": "Hello", "start": 0.1, "end": 0.5, "probability": None}
    assert "nbest" not in data["segments"][0]


def test_json_nbest():
    t = Transcript(
        "a.wav", 1.0, [Segment(0, 1, "hi", nbest=[Hypothesis("hi", -1.5), Hypothesis("high", -2.0)])]
    )
    data = json.loads(render(t, "json", nbest=True))
    assert [h["text"] for h in data["segments"][0]["nbest"]] == ["hi", "high"]


SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n((?:.+\n){1,2})")
VTT_CUE = re.compile(r"(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n((?:.+\n){1,2})")


def test_srt_exact_small():
    t = Transcript("a.wav", 5.0, [Segment(0.0, 1.25, "One."), Segment(61.5, 63.0, "Two three.")])
    assert render(t, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,250\nOne.\n\n2\n00:01:01,500 --> 00:01:03,000\nTwo three.\n"
    )


def test_vtt_exact_small():
    t = Transcript("a.wav", 5.0, [Segment(0.0, 1.25, "One."), Segment(61.5, 63.0, "Two three.")])
    assert render(t, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nOne.\n\n00:01:01.500 --> 00:01:03.000\nTwo three.\n"
    )


def test_srt_structure_and_long_segment_split(transcript):
    text = render(transcript, "srt")
    blocks = text.split("\n\n")
    cues = [SRT_CUE.fullmatch(b if b.endswith("\n") else b + "\n") for b in blocks]
    assert all(cues), blocks
    assert [int(c[1]) for c in cues] == list(range(1, len(cues) + 1))
    # 130-character segment -> more than one cue, lines at most 42 chars, at most 2 lines
    assert len(cues) >= 4
    for c in cues:
        lines = c[4].splitlines()
        assert 1 <= len(lines) <= 2
        assert all(len(line) <= 42 for line in lines)
        assert c[2] <= c[3]
    # all words of the long segment appear in order
    long_cues = cues[2:]
    assert " ".join(c[4].replace("\n", " ").strip() for c in long_cues) == transcript.segments[2].text
    # cues of the long segment are timed by its words: first word start, then later cues later
    assert long_cues[0][2] == "00:00:10,000"
    for a, b in zip(long_cues, long_cues[1:], strict=False):
        assert b[2] >= a[3]  # zero-padded times compare as strings
    assert cues[1][2] == "01:02:05,000"


def test_vtt_structure(transcript):
    text = render(transcript, "vtt")
    assert text.startswith("WEBVTT\n\n")
    blocks = text[len("WEBVTT\n\n") :].split("\n\n")
    assert all(VTT_CUE.fullmatch(b if b.endswith("\n") else b + "\n") for b in blocks), blocks
    assert "," not in text.split("\n")[2]


def test_cues_use_word_times():
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho"
    seg = Segment(5.0, 20.0, text, words=words(text, 5.0, 0.5))
    cues = segment_cues(seg)
    assert len(cues) >= 2
    n_first = sum(len(line.split()) for line in cues[0].lines)
    assert cues[0].start == pytest.approx(5.0)
    assert cues[0].end == pytest.approx(5.0 + (n_first - 1) * 0.5 + 0.4)
    assert cues[1].start == pytest.approx(5.0 + n_first * 0.5)
    assert cues[-1].end == pytest.approx(5.0 + 16 * 0.5 + 0.4)


def test_a_long_pause_between_words_ends_a_cue():
    # "four five" follow a 12 s silence: no cue spans it, though the text fits one cue
    seg = Segment(
        0.0,
        15.0,
        "one two three four five",
        words=[
            Word("one", 0.0, 0.4),
            Word("two", 0.5, 0.9),
            Word("three", 1.0, 1.5),
            Word("four", 13.5, 13.9),
            Word("five", 14.0, 14.5),
        ],
    )
    cues = segment_cues(seg)
    assert [c.lines for c in cues] == [["one two three"], ["four five"]]
    assert (cues[0].start, cues[0].end) == (0.0, 1.5)
    assert (cues[1].start, cues[1].end) == (13.5, 14.5)
    # a pause of CUE_PAUSE or less keeps the words together
    seg.words[3:] = [Word("four", 1.5 + CUE_PAUSE, 3.9), Word("five", 4.0, 4.5)]
    assert len(segment_cues(seg)) == 1
    seg.words = [Word("one", 0.0, 2.009), Word("two", 4.009, 4.5)]  # 2.000 s, whatever the float error
    seg.text = "one two"
    assert len(segment_cues(seg)) == 1


def test_cues_without_matching_words_share_time_by_length():
    # words are stale (text changed by rescoring): time proportionally over the segment
    seg = Segment(0.0, 10.0, "aaaa " * 20, words=[Word("other", 0.0, 1.0)])
    cues = segment_cues(seg)
    assert cues[0].start == 0.0 and cues[-1].end == pytest.approx(10.0)
    for a, b in zip(cues, cues[1:], strict=False):
        assert a.end == pytest.approx(b.start)


def test_several_transcripts_on_one_stream_can_be_split_again(transcript):
    other = Transcript("b.wav", 1.0, segments=[Segment(0.0, 1.0, "Bee.")])
    assert render_stream(transcript, "json", several=False) == render(transcript, "json")
    stream = render_stream(transcript, "json", several=True) + render_stream(other, "json", several=True)
    docs = [json.loads(line) for line in stream.splitlines()]  # JSON Lines, each naming its input
    assert [(d["source"], d["text"]) for d in docs] == [("talk.wav", transcript.text), ("b.wav", "Bee.")]
    # OpenAI's formats name no input: each after its header, as the text formats
    stream = render_stream(other, "verbose_json", several=True)
    assert stream.startswith("==> b.wav <==\n") and json.loads(stream.split("\n")[1])["text"] == "Bee."
    stream = render_stream(transcript, "srt", several=True) + render_stream(other, "srt", several=True)
    first, second = stream.split("==> b.wav <==\n")
    assert first.startswith("==> talk.wav <==\n1\n") and first.endswith("\n\n")
    assert second == render(other, "srt").rstrip("\n") + "\n\n"


def test_empty_transcript():
    t = Transcript("a.wav", 0.0)
    assert render(t, "srt") == ""
    assert render(t, "vtt").startswith("WEBVTT")
    assert render(t, "txt") == "\n"


def test_unknown_format():
    t = Transcript("a.wav", 0.0)
    with pytest.raises(ValueError, match=r"'docx'.*txt, json, srt, vtt, verbose_json"):
        render(t, "docx")
    assert list(WRITERS) == ["txt", "json", "srt", "vtt", "verbose_json", "openai_json"]
    # the server answers OpenAI's response_format names with the same writers
    assert OPENAI_FORMATS == {
        "text": "txt", "srt": "srt", "vtt": "vtt", "verbose_json": "verbose_json", "json": "openai_json"
    }  # fmt: skip


def test_write_all_formats(tmp_path, transcript):
    for fmt in WRITERS:
        out = write(transcript, fmt, tmp_path / "out" / f"talk.{fmt}")
        assert out.read_text(encoding="utf-8") == render(transcript, fmt)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"talk.{f}" for f in sorted(WRITERS)]
    data = json.loads(render(transcript, "verbose_json"))
    assert data["text"] == transcript.text and data["words"] and data["usage"]["type"] == "duration"
    assert "words" not in json.loads(render(transcript, "verbose_json", words=False))
    assert json.loads(render(transcript, "openai_json"))["text"] == transcript.text


def test_write_is_atomic(tmp_path, transcript, monkeypatch):
    path = tmp_path / "talk.txt"
    path.write_text("earlier result\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    from llmasr.core import files as fsutil

    monkeypatch.setattr(fsutil.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write(transcript, "txt", path)
    assert path.read_text() == "earlier result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["talk.txt"]  # no temp file left behind


def test_written_files_are_world_readable(tmp_path, transcript):
    out = write(transcript, "json", tmp_path / "t.json")
    assert out.stat().st_mode & 0o777 == 0o644
