"""The synthetic defect dataset: layout, exact masks, determinism, distinct classes."""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.data import load_samples
from aaclip_hf.data.synthetic import (
    DEFECT_KINDS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_HELD_OUT_CLASSES,
    SYNTHETIC_OBJECT_CLASSES,
    SYNTHETIC_PROMPT_NAMES,
    SYNTHETIC_TEXTURE_CLASSES,
    SYNTHETIC_TRAIN_CLASSES,
    _rng,
    generate_synthetic_dataset,
    render_defect,
    render_normal,
)


SIZE = 32


def test_class_lists():
    assert len(SYNTHETIC_CLASSES) >= 8 and len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert set(SYNTHETIC_TRAIN_CLASSES).isdisjoint(SYNTHETIC_HELD_OUT_CLASSES)
    assert set(SYNTHETIC_TRAIN_CLASSES) | set(SYNTHETIC_HELD_OUT_CLASSES) == set(SYNTHETIC_CLASSES)
    for split in (SYNTHETIC_TRAIN_CLASSES, SYNTHETIC_HELD_OUT_CLASSES):  # each half has both kinds
        assert set(split) & set(SYNTHETIC_TEXTURE_CLASSES) and set(split) & set(SYNTHETIC_OBJECT_CLASSES)
    assert set(SYNTHETIC_PROMPT_NAMES) == set(SYNTHETIC_CLASSES)
    assert set(DEFECT_KINDS) == {"scratch", "hole", "stain", "crack", "missing_part", "color_spot"}


@pytest.mark.parametrize("cls", SYNTHETIC_CLASSES)
def test_every_defect_mask_is_exactly_the_changed_pixels(cls):
    for kind in DEFECT_KINDS:
        normal, defective, mask = render_defect(cls, kind, _rng(5, cls, kind), SIZE)
        assert normal.shape == defective.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
        changed = (normal.astype(int) != defective.astype(int)).any(-1)
        np.testing.assert_array_equal(mask, changed, err_msg=f"{cls}/{kind}")
        assert mask.sum() >= 4, f"{cls}/{kind} defect too small"
        assert mask.mean() < 0.25, f"{cls}/{kind} defect covers too much"
        # Visible: the changed pixels move by a clear margin on average (8-bit levels).
        delta = np.abs(normal.astype(int) - defective.astype(int)).max(-1)[mask].mean()
        assert delta > 30, f"{cls}/{kind} defect too faint ({delta:.1f})"


def test_normals_vary_but_stay_in_class():
    """Nearest-centroid on colour statistics must recognise every held-out normal image."""

    def feats(img):
        a = img.reshape(-1, 3).astype(np.float32)
        return np.concatenate([a.mean(0), a.std(0), np.percentile(a, [10, 90], axis=0).ravel()])

    centroids, probes = {}, []
    for cls in SYNTHETIC_CLASSES:
        imgs = [render_normal(cls, _rng(1, cls, i), SIZE) for i in range(6)]
        assert len({im.tobytes() for im in imgs}) == 6, f"{cls}: normal images do not vary"
        centroids[cls] = np.mean([feats(im) for im in imgs[:4]], axis=0)
        probes += [(cls, feats(im)) for im in imgs[4:]]
    names = list(centroids)
    mat = np.stack([centroids[c] for c in names])
    for cls, f in probes:
        assert names[int(np.argmin(np.linalg.norm(mat - f, axis=1)))] == cls


def _digest(root):
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            h.update(os.path.relpath(os.path.join(d, name), root).encode())
            with open(os.path.join(d, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_generated_layout_reads_back_and_masks_match(tmp_path):
    classes = ["stripes", "disc", "pill"]
    root = generate_synthetic_dataset(
        tmp_path / "a",
        classes=classes,
        image_size=SIZE,
        n_train_good=2,
        n_test_good=2,
        n_test_defect_per_kind=1,
        seed=3,
        progress=False,
    )
    test = load_samples(root)
    assert len(test) == 3 * (2 + len(DEFECT_KINDS))
    assert {s.class_name for s in test} == set(classes)
    assert sum(s.label for s in test) == 3 * len(DEFECT_KINDS)
    train = load_samples(root, "train")
    assert len(train) == 6 and all(s.label == 0 for s in train)
    for s in test:
        if s.label == 0:
            continue
        assert s.mask_path.endswith(os.path.join("ground_truth", s.defect_type, "000_mask.png"))
        normal, defective, mask = render_defect(
            s.class_name, s.defect_type, _rng(3, s.class_name, "test", s.defect_type, 0), SIZE
        )
        on_disk = np.asarray(Image.open(s.image_path).convert("RGB"))
        np.testing.assert_array_equal(on_disk, defective)
        disk_mask = np.asarray(Image.open(s.mask_path))
        assert set(np.unique(disk_mask)) <= {0, 255}
        np.testing.assert_array_equal(disk_mask > 0, (on_disk != normal).any(-1))


def test_deterministic_by_seed_and_independent_of_other_classes(tmp_path):
    kw = {"image_size": SIZE, "n_train_good": 1, "n_test_good": 1, "n_test_defect_per_kind": 1, "progress": False}
    a = generate_synthetic_dataset(tmp_path / "a", classes=["wood", "hexnut"], seed=7, **kw)
    b = generate_synthetic_dataset(tmp_path / "b", classes=["wood", "hexnut"], seed=7, **kw)
    c = generate_synthetic_dataset(tmp_path / "c", classes=["wood", "hexnut"], seed=8, **kw)
    d = generate_synthetic_dataset(tmp_path / "d", classes=["hexnut"], seed=7, **kw)
    assert _digest(a) == _digest(b) != _digest(c)
    assert _digest(os.path.join(a, "hexnut")) == _digest(os.path.join(d, "hexnut"))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown class"):
        generate_synthetic_dataset(tmp_path, classes=["unicorn"], progress=False)
    with pytest.raises(ValueError, match="at least 16"):
        generate_synthetic_dataset(tmp_path, image_size=8, progress=False)


def test_preview_and_cli(tmp_path):
    from aaclip_hf.cli import main

    out = tmp_path / "syn"
    assert (
        main(
            [
                "make-synthetic",
                str(out),
                "--image-size",
                "24",
                "--classes",
                "grid",
                "cable",
                "--n-train-good",
                "1",
                "--n-test-good",
                "2",
                "--n-test-defect-per-kind",
                "1",
                "--seed",
                "2",
                "--preview",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    assert sorted(os.listdir(out / "cable" / "test")) == sorted(["good", *DEFECT_KINDS])
    with Image.open(tmp_path / "p.png") as sheet:
        tile = 96
        assert sheet.size[1] == 14 + 2 * 2 * tile and sheet.size[0] >= (2 + len(DEFECT_KINDS)) * tile
