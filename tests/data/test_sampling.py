"""k-shot sampling: 1:1 per class, seeded, order-independent, with clear errors."""

import json
import random

import pytest

from aaclip_hf.data import BadInputError, Sample, load_samples
from aaclip_hf.data.sampling import DEFAULT_SHOT_SEED, parse_shots, sample_shots, write_jsonl


def _pool(classes=("a", "b", "c"), n_normal=20, n_anomaly=12):
    out = []
    for cls in classes:
        out += [Sample(f"/d/{cls}/good/{i:03d}.png", 0, cls) for i in range(n_normal)]
        out += [
            Sample(f"/d/{cls}/bad/{i:03d}.png", 1, cls, f"/d/{cls}/gt/{i:03d}.png", "bad") for i in range(n_anomaly)
        ]
    return out


@pytest.mark.parametrize("k", [2, 4, 16])
def test_one_to_one_per_class(k):
    picked = sample_shots(_pool(), k)
    for cls in "abc":
        labels = [s.label for s in picked if s.class_name == cls]
        assert labels.count(0) == k // 2 and labels.count(1) == k // 2
    assert len(set(picked)) == len(picked) == 3 * k


def test_full_returns_everything():
    pool = _pool()
    assert sorted(sample_shots(pool, "full"), key=str) == sorted(pool, key=str)


def test_reproducible_and_independent_of_input_order():
    pool = _pool()
    first = sample_shots(pool, 16)
    assert first == sample_shots(pool, 16, seed=DEFAULT_SHOT_SEED) == sample_shots(list(reversed(pool)), 16)
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)
    assert sample_shots(shuffled, 16) == first
    assert sample_shots(pool, 16, seed=112) != first


def test_classes_do_not_influence_each_other():
    both = sample_shots(_pool(("a", "b")), 8)
    only_b = sample_shots(_pool(("b",)), 8)
    assert [s for s in both if s.class_name == "b"] == only_b


def test_seeded_draw_is_not_just_the_first_files():
    picked = sample_shots(_pool(n_normal=50, n_anomaly=50), 16)
    names = sorted(int(s.image_path[-7:-4]) for s in picked if s.class_name == "a" and s.label == 0)
    assert names != list(range(8))


def test_too_few_images_names_class_and_counts():
    pool = _pool(("a",)) + _pool(("tiny",), n_normal=5, n_anomaly=3)
    with pytest.raises(BadInputError) as info:
        sample_shots(pool, 8)
    msg = str(info.value)
    assert "'tiny' has 5 normal and 3 anomalous" in msg and "4 normal and 4 anomalous" in msg
    assert "'a'" not in msg


@pytest.mark.parametrize("bad", [3, "5", 0, -2, "many", 2.5])
def test_bad_shot_counts(bad):
    with pytest.raises(BadInputError, match="even" if bad in (3, "5") else "shots"):
        parse_shots(bad)


def test_parse_shots():
    assert parse_shots("full") is None and parse_shots("16") == 16 and parse_shots(64) == 64


def _tiny_tree(root):
    from PIL import Image

    for cls in ("x", "y"):
        for i in range(3):
            (root / cls / "test" / "good").mkdir(parents=True, exist_ok=True)
            (root / cls / "test" / "cut").mkdir(parents=True, exist_ok=True)
            (root / cls / "ground_truth" / "cut").mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4), i).save(root / cls / "test" / "good" / f"{i}.png")
            Image.new("L", (4, 4), 9).save(root / cls / "test" / "cut" / f"{i}.png")
            Image.new("L", (4, 4), 255).save(root / cls / "ground_truth" / "cut" / f"{i}_mask.png")


def test_write_jsonl_round_trip(tmp_path):
    _tiny_tree(tmp_path / "data")
    picked = sample_shots(load_samples(tmp_path / "data"), 4)
    out = write_jsonl(picked, tmp_path / "splits" / "4-shot.jsonl")
    records = [json.loads(line) for line in open(out)]
    assert set(records[0]) == {"image_path", "label", "class_name", "defect_type"}  # no mask on normals
    assert records[-1]["mask_path"].startswith("../data/")
    with pytest.raises(BadInputError, match="outside the dataset root"):  # ../data leaves the file's folder
        load_samples(out)
    assert load_samples(out, allow_outside_root=True) == picked
    ref_style = write_jsonl(picked, tmp_path / "ref.jsonl", relative_to=tmp_path / "data")
    first = json.loads(open(ref_style).readline())
    assert first["image_path"] == "x/test/good/" + first["image_path"].split("/")[-1]
    assert load_samples(f"{ref_style}::root={tmp_path / 'data'}") == picked


def test_cli(tmp_path, capsys):
    from aaclip_hf.cli import main

    _tiny_tree(tmp_path / "data")
    out = tmp_path / "split.jsonl"
    assert main(["sample-shots", str(tmp_path / "data"), "--shots", "2", "--seed", "5", "--output", str(out)]) == 0
    assert [s.label for s in load_samples(out)] == [0, 1, 0, 1]
    assert main(["sample-shots", str(tmp_path / "data"), "--shots", "3", "--output", str(out)]) == 2
    assert "must be even" in capsys.readouterr().err
