"""Output folders: written whole or not at all, one run at a time, file names always writable as text."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aaclip_hf.runtime.outputs as outputs
from aaclip_hf.errors import OutputConflictError
from aaclip_hf.runtime.outputs import (
    OUTPUT_RECORD,
    OutputInUseError,
    atomic_output_dir,
    atomic_write_text,
    check_new_file,
    check_output_apart,
    holds_only,
    lock_path,
    output_lock,
    safe_text,
)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but the output record, by relative name."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != OUTPUT_RECORD]
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def _record(folder: Path) -> dict:
    return json.loads((folder / OUTPUT_RECORD).read_text())


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_safe_text_escapes_only_what_is_not_utf8():
    assert safe_text("plain/été.png") == "plain/été.png"
    raw = os.fsdecode(b"\xff\xfeab.png")  # how Linux hands Python a non-UTF-8 file name
    assert safe_text(raw) == "\\xff\\xfeab.png"
    assert safe_text(Path(raw)) == "\\xff\\xfeab.png"
    assert safe_text("x\ud800y") == "x\\ud800y"  # a lone surrogate that no file system produced
    for text in (raw, "x\ud800y"):
        safe_text(text).encode("utf-8")  # always encodable


def test_a_finished_run_appears_whole_and_leaves_nothing_else(tmp_path):
    final = tmp_path / "out"
    with atomic_output_dir(final, "test") as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.tmp-")
        (staging / "a.txt").write_text("a")
        (staging / "sub").mkdir()
        (staging / "sub" / "b.txt").write_text("b")
        assert not final.exists()  # nothing at the final name until the run ends
        assert (tmp_path / "out.lock").is_file()  # the lock, with our pid
        assert json.loads((tmp_path / "out.lock").read_text())["pid"] == os.getpid()
    assert _tree(final) == {"a.txt": b"a", "sub/b.txt": b"b"}
    assert _record(final) == {"command": "test", "files": ["a.txt", "sub/b.txt"]}  # nested files recorded too
    assert _siblings(final) == ["out"]  # no temporary folder, no lock file


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_failed_run_changes_nothing_and_a_finished_one_replaces_the_earlier_output(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    final = tmp_path / "out"
    rule = holds_only(["results.json", "extra.json"])
    with atomic_output_dir(final, "test", replaceable=rule) as staging:
        (staging / "results.json").write_text("first")
        (staging / "extra.json").write_text("only in the first run")
    before = _tree(final)
    with pytest.raises(RuntimeError, match="killed half-way"):
        with atomic_output_dir(final, "test", replaceable=rule) as staging:
            (staging / "results.json").write_text("second, partial")
            raise RuntimeError("killed half-way")
    assert _tree(final) == before and _siblings(final) == ["out"]
    with atomic_output_dir(final, "test", replaceable=rule) as staging:
        (staging / "results.json").write_text("second")
    assert _tree(final) == {"results.json": b"second"}  # replaced whole: no file of the first run is left
    assert _siblings(final) == ["out"]


def test_the_os_exchange_is_used_where_it_exists(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not outputs._exchange(a, b):
        pytest.skip("no renameat2 RENAME_EXCHANGE on this system")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_a_folder_of_other_files_is_refused_untouched(tmp_path):
    final = tmp_path / "mine"
    final.mkdir()
    (final / "thesis.tex").write_text("years of work")
    (final / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"mine: the folder holds files that test did not write \(results.json"):
        with atomic_output_dir(final, "test", replaceable=holds_only(["results.json"])):
            pytest.fail("must not start")
    assert _tree(final) == {"results.json": b"{}", "thesis.tex": b"years of work"}
    # holding only names the command writes is not enough: without its record the files are someone else's
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "results.json").write_text("their results")
    with pytest.raises(OutputConflictError, match=r"theirs: the folder holds files that test did not write"):
        with atomic_output_dir(theirs, "test", replaceable=holds_only(["results.json"])):
            pytest.fail("must not start")
    assert _tree(theirs) == {"results.json": b"their results"}
    with pytest.raises(FileExistsError, match="is a file"):
        (tmp_path / "file").write_text("x")
        with atomic_output_dir(tmp_path / "file", "test"):
            pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_output_dir(empty, "test") as staging:  # an empty folder is fine
        (staging / "a").write_text("a")
    assert _tree(empty) == {"a": b"a"}


def test_a_crash_between_the_two_renames_is_repaired_by_the_next_run(tmp_path, monkeypatch):
    """Without an atomic exchange the old output is moved aside first; a run killed right then loses nothing."""
    final = tmp_path / "out"
    with atomic_output_dir(final, "test") as staging:
        (staging / "r.json").write_text("old")
    dead = _dead_pid()
    os.rename(final, tmp_path / f".out.old-{dead}-abcd")  # the state a kill between the renames leaves
    (tmp_path / f".out.tmp-{dead}-ef01").mkdir()  # and its unfinished new output
    with pytest.raises(RuntimeError):
        with atomic_output_dir(final, "test", replaceable=holds_only(["r.json"])):
            assert _tree(final) == {"r.json": b"old"}  # restored before the new run writes
            raise RuntimeError("this run fails too")
    assert _tree(final) == {"r.json": b"old"}
    assert _siblings(final) == ["out"]
    os.rename(final, tmp_path / f".out.old-{dead}-abcd")
    with pytest.raises(FileExistsError, match="did not write"):  # restored first, so the rules apply to it
        with atomic_output_dir(final, "test", replaceable=holds_only(["other.json"])):
            pass
    assert _tree(final) == {"r.json": b"old"}


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    final = tmp_path / "out"
    with output_lock(final, "aaclip detect"):
        with pytest.raises(OutputInUseError, match=rf"in use by another run \(aaclip detect, pid {os.getpid()}"):
            with atomic_output_dir(final, "aaclip detect"):
                pytest.fail("must not start")
    assert not final.exists() and _siblings(final) == []
    with atomic_output_dir(final, "aaclip detect") as staging:  # free again
        (staging / "a").write_text("a")


def _holder(lock_target: Path) -> subprocess.Popen:
    """Another process that holds the lock until killed."""
    code = (
        "import sys, time\n"
        "from aaclip_hf.runtime.outputs import output_lock\n"
        "with output_lock(sys.argv[1], 'aaclip detect'):\n"
        "    print('held', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_target)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_held_by_another_process_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    final = tmp_path / "out"
    holder = _holder(final)
    try:
        with pytest.raises(OutputInUseError, match=rf"pid {holder.pid}, lock file {lock_path(final)}"):
            with output_lock(final):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock file stays behind with its pid
        holder.wait()
    assert json.loads(lock_path(final).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="aaclip_hf.runtime.outputs"):
        with output_lock(final):
            assert json.loads(lock_path(final).read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock of pid {holder.pid}" in caplog.text
    assert not lock_path(final).exists()


def test_without_fcntl_the_lock_checks_the_pid(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(outputs, "fcntl", None)
    final = tmp_path / "out"
    lock_path(final).write_text(json.dumps({"pid": os.getpid(), "command": "aaclip evaluate"}))
    with pytest.raises(OutputInUseError, match=f"aaclip evaluate, pid {os.getpid()}"):
        with output_lock(final):
            pass
    dead = _dead_pid()
    lock_path(final).write_text(json.dumps({"pid": dead}))
    with caplog.at_level(logging.WARNING, logger="aaclip_hf.runtime.outputs"):
        with output_lock(final):
            with pytest.raises(OutputInUseError):
                with output_lock(final):
                    pass
    assert f"stale lock of pid {dead}" in caplog.text and not lock_path(final).exists()


def test_atomic_write_text_replaces_or_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _siblings(path) == ["config.json"]

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(outputs.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "newer")
    assert path.read_text() == "new" and _siblings(path) == ["config.json"]


def test_a_file_added_inside_an_earlier_output_makes_it_yours(tmp_path):
    """A nested file the record does not list (`maps/notes.txt`) is refused, named, and survives with the rest."""
    final = tmp_path / "out"
    rule = holds_only(["maps", "detections.json"])
    with atomic_output_dir(final, "aaclip detect", replaceable=rule) as staging:
        (staging / "maps").mkdir()
        (staging / "maps" / "a.npy").write_bytes(b"map")
        (staging / "detections.json").write_text("[]")
    (final / "maps" / "notes.txt").write_text("my notes")
    before = _tree(final)
    with pytest.raises(OutputConflictError, match=r"did not write \(maps/notes.txt; 1 in all\)"):
        with atomic_output_dir(final, "aaclip detect", replaceable=rule):
            pytest.fail("must not start")
    assert _tree(final) == before and _siblings(final) == ["out"]
    # another command's untouched output is not this command's to replace either
    with pytest.raises(OutputConflictError, match="did not write"):
        with atomic_output_dir(final, "aaclip evaluate"):
            pytest.fail("must not start")
    (final / "maps" / "notes.txt").unlink()
    with atomic_output_dir(final, "aaclip detect", replaceable=rule) as staging:  # untouched again: replaced
        (staging / "detections.json").write_text("[1]")
    assert _tree(final) == {"detections.json": b"[1]"}


def test_a_symlinked_output_is_written_through_and_the_link_stays(tmp_path):
    target = tmp_path / "disk" / "results"
    target.parent.mkdir()
    link = tmp_path / "out"
    link.symlink_to(target, target_is_directory=True)  # dangling until the first run
    for text in ("first", "second"):
        with atomic_output_dir(link, "test") as staging:
            assert staging.parent == target.parent  # written beside the target, never beside the link
            (staging / "r.json").write_text(text)
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert _tree(target) == {"r.json": text.encode()}
    assert _siblings(link) == ["disk", "out"] and _siblings(target) == ["results"]  # no .tmp folder or link left
    assert lock_path(link) == lock_path(target) == target.with_name("results.lock")  # one lock for both names
    with output_lock(target, "aaclip detect"):
        with pytest.raises(OutputInUseError):
            with atomic_output_dir(link, "aaclip detect"):
                pytest.fail("must not start")


def test_outputs_are_kept_apart_from_inputs_and_the_model(tmp_path):
    data, model = tmp_path / "data", tmp_path / "model"
    (data / "good").mkdir(parents=True)
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    for output, role in ((data, "an input"), (tmp_path, "an input"), (model, "the model")):
        with pytest.raises(OutputConflictError, match=f"--output {output}: (is|holds) {role}"):
            check_output_apart(output, inputs=[data / "good"], model=model)
    with pytest.raises(OutputConflictError, match="is the model"):
        check_output_apart(model / "model.safetensors", model=model / "model.safetensors", what="--output")
    link = tmp_path / "link"
    link.symlink_to(data)
    with pytest.raises(OutputConflictError, match="is an input"):
        check_output_apart(link, inputs=[data])  # the same folder under another name
    check_output_apart(data / "good" / "out", inputs=[data / "good"], model=model)  # inside an input: fine
    check_output_apart(tmp_path / "new", inputs=["org/hub-id", data], model="org/model")  # ids are not paths
    with pytest.raises(OutputConflictError, match=r"shots.jsonl: exists; an output file never replaces a file"):
        (tmp_path / "shots.jsonl").write_text("mine")
        check_new_file(tmp_path / "shots.jsonl")
    check_new_file(tmp_path / "new.jsonl")
