"""The checked cache of exported towers: an entry is used only when its files match their recorded SHA-256; a
corrupted, edited or incomplete entry is rebuilt with a warning, never used; builds land whole or not at all."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from aaclip_hf.runtime import backends
from aaclip_hf.runtime.backends import apply_backend, vision_tower_key
from aaclip_hf.runtime.cache import MANIFEST_FILE, CacheRebuiltWarning, build_steps, cache_root, cached_entry


def _build(calls: list, content: bytes = b"artefact"):
    def build(staging):
        calls.append(staging)
        (staging / "a.bin").write_bytes(content)
        (staging / "b.xml").write_text("<graph/>")

    return build


def test_an_entry_is_built_once_then_reused(tmp_path):
    calls: list = []
    folder, built = cached_entry(tmp_path / "key", ["a.bin", "b.xml"], {"v": 1}, _build(calls), "test")
    assert built and folder == tmp_path / "key" and (folder / MANIFEST_FILE).is_file()
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"a.bin", "b.xml"} and manifest["settings"] == {"v": 1}
    again, built = cached_entry(tmp_path / "key", ["a.bin", "b.xml"], {"v": 1}, _build(calls), "test")
    assert again == folder and not built and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no staging folder left behind


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f: f.joinpath("a.bin").write_bytes(b"artefacT"), id="edited-same-size"),
        pytest.param(lambda f: f.joinpath("a.bin").write_bytes(b"arte"), id="truncated"),
        pytest.param(lambda f: f.joinpath("b.xml").unlink(), id="file-missing"),
        pytest.param(lambda f: f.joinpath(MANIFEST_FILE).unlink(), id="no-manifest"),
        pytest.param(lambda f: f.joinpath(MANIFEST_FILE).write_text("{not json"), id="manifest-unreadable"),
        pytest.param(
            lambda f: f.joinpath(MANIFEST_FILE).write_text(
                json.dumps({**json.loads(f.joinpath(MANIFEST_FILE).read_text()), "settings": {"v": 2}})
            ),
            id="other-settings",
        ),
    ],
)
def test_a_damaged_entry_is_rebuilt_never_used(tmp_path, damage):
    calls: list = []
    folder, _ = cached_entry(tmp_path / "key", ["a.bin", "b.xml"], {"v": 1}, _build(calls), "test")
    damage(folder)
    with pytest.warns(CacheRebuiltWarning, match=r"test: the cache entry .*key failed its check"):
        again, built = cached_entry(tmp_path / "key", ["a.bin", "b.xml"], {"v": 1}, _build(calls), "test")
    assert built and len(calls) == 2 and (again / "a.bin").read_bytes() == b"artefact"


def test_a_failed_build_leaves_nothing_under_the_key(tmp_path):
    def failing(staging):
        (staging / "a.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cached_entry(tmp_path / "key", ["a.bin"], {}, failing, "test")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match=r"did not write \['b.xml'\]"):
        cached_entry(tmp_path / "key", ["a.bin", "b.xml"], {}, lambda s: (s / "a.bin").write_bytes(b"x"), "test")
    assert list(tmp_path.iterdir()) == []


def test_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("AACLIP_CACHE", str(tmp_path / "c"))
    assert cache_root("openvino") == tmp_path / "c" / "openvino"
    assert cache_root("openvino", tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("AACLIP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("onnx") == tmp_path / "xdg" / "aaclip_hf" / "onnx"


def test_build_steps_counts_every_step(capsys):
    with build_steps(["one", "two"], "building", enabled=True) as step:
        step("one")
        step("two")
    err = capsys.readouterr().err
    assert "building" in err and "2/2" in err
    with build_steps(["one"], "quiet", enabled=False) as step:
        step("one")
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed")
def test_a_tampered_export_is_rebuilt_not_loaded(tiny_model, tmp_path, monkeypatch):
    apply_backend(copy.deepcopy(tiny_model), "onnx", cache_dir=tmp_path, progress=False)
    exported = tmp_path / vision_tower_key(tiny_model) / backends.ONNX_FILE
    data = bytearray(exported.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: same size, other content
    exported.write_bytes(bytes(data))
    exports = []
    real = backends.export_vision_tower_onnx
    monkeypatch.setattr(backends, "export_vision_tower_onnx", lambda *a, **k: exports.append(1) or real(*a, **k))
    with pytest.warns(CacheRebuiltWarning, match="does not match its recorded SHA-256"):
        model, _ = apply_backend(copy.deepcopy(tiny_model), "onnx", cache_dir=tmp_path, progress=False)
    assert exports == [1] and model.vision_model.path == exported and exported.read_bytes() != bytes(data)
