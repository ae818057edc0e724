"""`check_model_source`: a model path is a folder, a reachable (or cached) Hub id, or a one-line error naming it."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from aaclip_hf.errors import BadInputError, MissingFileError
from aaclip_hf.runtime.loading import check_model_source, is_aaclip_folder, model_type_of


def _cache(root, repo_id):
    """A Hub cache entry holding `config.json` for `repo_id` (the layout huggingface_hub reads offline)."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    snapshot = folder / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "aaclip"}')


def test_offline_only_cached_hub_ids_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _cache(tmp_path / "hub", "someone/cached")
    check_model_source("someone/cached")  # loads from the cache offline: not refused
    with pytest.raises(
        MissingFileError, match=r"'someone/other', field '--model': no such folder, and the Hub is offline"
    ):
        check_model_source("someone/other")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check_model_source("someone/other")  # online: left to the loader (which names an unreachable Hub)


def test_paths_that_cannot_be_hub_ids_and_files(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"'/no/such/dir', field '--model': no such folder \(and not a valid Hub id\)"
    ):
        check_model_source("/no/such/dir")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        check_model_source(weights)
    check_model_source(weights, "src", kind="file or folder")  # converters take files
    check_model_source(tmp_path)


def test_a_config_json_that_is_not_json_is_named(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"model_type": "aa\xff')
    with pytest.raises(BadInputError, match=r"config.json': not valid JSON") as info:
        model_type_of(tmp_path)
    assert info.value.path == str(tmp_path / "config.json")
    assert not is_aaclip_folder(tmp_path)  # the yes/no question: not an AA-CLIP folder
