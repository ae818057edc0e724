"""Dataset readers, layout detection, the torch dataset and HF datasets round trips."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf.data import (
    AnomalyDataset,
    BadInputError,
    MissingFileError,
    Sample,
    check_classes_have_anomalies,
    detect_format,
    from_hf_dataset,
    load_samples,
    parse_spec,
    to_hf_dataset,
    verify_samples,
)


SIZE = 8


def _img(path, value, size=SIZE):
    """An image whose every pixel is ``value``: the value identifies the file later."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return str(path)


def _mask(path, n_on, size=SIZE, on=255):
    """A mask with the first ``n_on`` pixels (row-major) set: the count identifies the file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.zeros(size * size, np.uint8)
    arr[:n_on] = on
    Image.fromarray(arr.reshape(size, size)).save(path)
    return str(path)


def _value(path):
    return int(np.asarray(Image.open(path))[0, 0, 0])


def _n_on(path):
    return int((np.asarray(Image.open(path)) != 0).sum())


@pytest.fixture
def mvtec(tmp_path):
    """Two classes; image value v pairs with a mask of v // 10 pixels."""
    root = tmp_path / "mvtec"
    for cls, base in (("bottle", 0), ("zipper", 100)):
        _img(root / cls / "train" / "good" / "000.png", base + 1)
        for i in range(2):
            _img(root / cls / "test" / "good" / f"00{i}.png", base + 2 + i)
        for d, defect in enumerate(("broken", "crack")):
            for i in range(2):
                v = base + 10 * (d * 2 + i + 1)
                _img(root / cls / "test" / defect / f"00{i}.png", v)
                _mask(root / cls / "ground_truth" / defect / f"00{i}_mask.png", v // 10)
    return root


def _pairing_ok(samples):
    for s in samples:
        if s.label == 1:
            assert _n_on(s.mask_path) == _value(s.image_path) // 10, s
        else:
            assert s.mask_path is None


def test_mvtec_labels_masks_and_splits(mvtec):
    assert detect_format(mvtec) == "mvtec"
    test = load_samples(mvtec)
    assert len(test) == 12
    assert [s.label for s in test if s.defect_type == "good"] == [0] * 4
    assert all(s.label == 1 for s in test if s.defect_type != "good")
    assert {s.class_name for s in test} == {"bottle", "zipper"}
    _pairing_ok(test)
    train = load_samples(mvtec, "train")
    assert [(s.label, s.class_name) for s in train] == [(0, "bottle"), (0, "zipper")]
    single = load_samples(mvtec / "zipper")  # a class folder on its own
    assert len(single) == 6 and {s.class_name for s in single} == {"zipper"}


def test_mvtec_missing_mask_errors_or_skips(mvtec, caplog):
    os.remove(mvtec / "bottle" / "ground_truth" / "crack" / "001_mask.png")
    with pytest.raises(MissingFileError) as info:
        load_samples(mvtec)
    assert "crack/001.png" in str(info.value)
    with caplog.at_level(logging.WARNING):
        samples = load_samples(mvtec, skip_bad_files=True)
    assert len(samples) == 11 and "skipped 1 bad entry" in caplog.text


def test_defect_without_ground_truth_folder_has_no_mask(mvtec):
    import shutil

    shutil.rmtree(mvtec / "zipper" / "ground_truth" / "broken")
    samples = load_samples(mvtec, classes=["zipper"])
    broken = [s for s in samples if s.defect_type == "broken"]
    assert broken and all(s.mask_path is None and not s.has_mask and s.label == 1 for s in broken)


def test_empty_class_folder(tmp_path):
    (tmp_path / "ds" / "screw" / "test" / "good").mkdir(parents=True)
    (tmp_path / "ds" / "screw" / "train" / "good").mkdir(parents=True)
    with pytest.raises(BadInputError, match="no images") as info:
        load_samples(tmp_path / "ds", format="mvtec")
    assert "screw" in str(info.value)


def test_btad_ok_ko(tmp_path):
    root = tmp_path / "btad"
    _img(root / "01" / "train" / "ok" / "0000.png", 1)
    _img(root / "01" / "test" / "ok" / "0000.png", 2)
    for i, v in enumerate((30, 50)):
        _img(root / "01" / "test" / "ko" / f"000{i}.png", v)
        _mask(root / "01" / "ground_truth" / "ko" / f"000{i}.png", v // 10)  # same stem, no _mask
    samples = load_samples(root, format="btad")
    assert [(s.label, s.defect_type) for s in samples] == [(1, "ko"), (1, "ko"), (0, "ok")]
    _pairing_ok(samples)
    assert detect_format(root) == "mvtec"


def test_visa_csv_and_folders(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for split, (vn, va) in (("train", (1, 20)), ("test", (2, 40))):
        n = _img(root / "candle" / "Data" / "Images" / "Normal" / f"{split}.JPG", vn)
        a = _img(root / "candle" / "Data" / "Images" / "Anomaly" / f"{split}.JPG", va)
        m = _mask(root / "candle" / "Data" / "Masks" / "Anomaly" / f"{split}.png", va // 10)
        rows += [
            f"candle,{split},normal,{os.path.relpath(n, root)},",
            f"candle,{split},anomaly,{os.path.relpath(a, root)},{os.path.relpath(m, root)}",
        ]
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    assert detect_format(root) == "visa"
    test = load_samples(root)
    assert [(_value(s.image_path), s.label) for s in test] == [(2, 0), (40, 1)]
    _pairing_ok(test)
    assert [_value(s.image_path) for s in load_samples(root, "train")] == [1, 20]
    os.remove(root / "split_csv" / "1cls.csv")
    everything = load_samples(root)  # the folder layout has no split
    assert len(everything) == 4 and sum(s.label for s in everything) == 2
    _pairing_ok(everything)


def test_visa_csv_bad_label_names_line(tmp_path):
    root = tmp_path / "visa"
    _img(root / "c" / "a.png", 1)
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\nc,test,normal,c/a.png,\nc,test,broken,c/a.png,\n"
    )
    with pytest.raises(BadInputError, match="line 3") as info:
        load_samples(root)
    assert info.value.field == "label"


def test_bmad_detected_before_mvtec(tmp_path):
    root = tmp_path / "Brain_AD"
    _img(root / "train" / "good" / "img" / "a.png", 1)
    _img(root / "test" / "good" / "img" / "a.png", 2)
    for name, v in (("x", 30), ("y", 60)):
        _img(root / "test" / "Ungood" / "img" / f"{name}.png", v)
        _mask(root / "test" / "Ungood" / "label" / f"{name}.png", v // 10)
    assert detect_format(root) == "bmad"
    samples = load_samples(root)
    assert sorted((s.label, s.class_name, _value(s.image_path)) for s in samples) == [
        (0, "Brain", 2),
        (1, "Brain", 30),
        (1, "Brain", 60),
    ]
    _pairing_ok(samples)
    assert [s.label for s in load_samples(root, "train")] == [0]
    assert {s.class_name for s in load_samples(f"{root}::name=brain")} == {"brain"}


def test_polyp_all_anomalous(tmp_path):
    root = tmp_path / "CVC-ClinicDB"
    for i, v in enumerate((10, 20, 30)):
        _img(root / "images" / f"{i}.png", v)
        _mask(root / "masks" / f"{i}.png", v // 10)
    assert detect_format(root) == "polyp"
    samples = load_samples(root)
    assert [s.label for s in samples] == [1, 1, 1] and {s.class_name for s in samples} == {"Colon_clinicDB"}
    _pairing_ok(samples)


def test_generic_folder(tmp_path):
    root = tmp_path / "widget"
    _img(root / "normal" / "n1.png", 1)
    _img(root / "anomaly" / "a.png", 30)
    _img(root / "anomaly" / "b.png", 50)
    _img(root / "anomaly" / "c.png", 70)
    _mask(root / "masks" / "a_mask.png", 3)
    _mask(root / "masks" / "b.png", 5)
    assert detect_format(root) == "folder"
    samples = load_samples(root)
    assert [(s.label, s.class_name) for s in samples] == [(0, "widget"), (1, "widget"), (1, "widget"), (1, "widget")]
    c = samples[-1]
    assert c.mask_path is None and not c.has_mask
    _pairing_ok(samples[:3])


def _jsonl(tmp_path, records):
    path = tmp_path / "meta" / "split.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_reference_jsonl(tmp_path):
    data = tmp_path / "data"
    _img(data / "c" / "n.png", 1)
    _img(data / "c" / "a.png", 40)
    _mask(data / "c" / "a_gt.png", 4)
    path = _jsonl(
        tmp_path,
        [
            {"image_path": "c/n.png", "label": 0.0, "class_name": "c"},
            "",
            {"image_path": "c/a.png", "label": 1, "class_name": "c", "mask_path": "c/a_gt.png"},
        ],
    )
    samples = load_samples(f"{path}::root={data}")
    assert [s.label for s in samples] == [0, 1] and isinstance(samples[0].label, int)
    _pairing_ok(samples)
    assert detect_format(path) == "jsonl"


@pytest.mark.parametrize(
    "bad, field, text",
    [
        ({"image_path": "c/n.png", "label": 2, "class_name": "c"}, "label", "0 or 1"),
        ({"image_path": "c/n.png", "label": 0}, "class_name", "class name"),
        ({"label": 0, "class_name": "c"}, "image_path", "image path"),
        ("{not json", None, "not valid JSON"),
    ],
)
def test_jsonl_bad_record_names_line_and_field(tmp_path, bad, field, text):
    _img(tmp_path / "meta" / "c" / "n.png", 1)
    path = _jsonl(tmp_path, [{"image_path": "c/n.png", "label": 0, "class_name": "c"}, bad])
    with pytest.raises(BadInputError) as info:
        load_samples(path)
    msg = str(info.value)
    assert "line 2" in msg and str(path) in msg and text in msg and info.value.field == field


def test_jsonl_missing_image_and_skip(tmp_path, caplog):
    _img(tmp_path / "meta" / "c" / "n.png", 1)
    path = _jsonl(
        tmp_path,
        [
            {"image_path": "c/n.png", "label": 0, "class_name": "c"},
            {"image_path": "c/gone.png", "label": 0, "class_name": "c"},
        ],
    )
    with pytest.raises(MissingFileError) as info:
        load_samples(path)
    assert "gone.png" in str(info.value) and "line 2" in str(info.value)
    with caplog.at_level(logging.WARNING):
        assert len(load_samples(path, skip_bad_files=True)) == 1
    assert "skipped 1 bad entry" in caplog.text


def test_meta_json(tmp_path):
    root = tmp_path / "ds"
    n = _img(root / "pcb" / "n.png", 1)
    a = _img(root / "pcb" / "a.png", 50)
    m = _mask(root / "pcb" / "a_m.png", 5)
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    meta = {
        "test": {
            "pcb": [
                {"img_path": rel(n), "mask_path": "", "cls_name": "pcb", "specie_name": "good", "anomaly": 0},
                {"img_path": rel(a), "mask_path": rel(m), "cls_name": "pcb", "specie_name": "bent", "anomaly": 1},
            ]
        }
    }
    (root / "meta.json").write_text(json.dumps(meta))
    assert detect_format(root) == "meta"
    samples = load_samples(root)
    assert [(s.label, s.defect_type, s.mask_path is None) for s in samples] == [(0, "good", True), (1, "bent", False)]
    _pairing_ok(samples)
    with pytest.raises(BadInputError, match="'train'"):
        load_samples(root, "train")


def test_spec_strings_and_class_filter(mvtec):
    assert parse_spec("a/b::classes=x,y::format=mvtec") == ("a/b", {"classes": "x,y", "format": "mvtec"})
    assert {s.class_name for s in load_samples(f"{mvtec}::classes=zipper")} == {"zipper"}
    assert len(load_samples([f"{mvtec}::classes=zipper", f"{mvtec}::classes=bottle::split=train"])) == 7
    with pytest.raises(BadInputError, match="unknown class"):
        load_samples(mvtec, classes=["nope"])
    with pytest.raises(BadInputError, match="bad spec option"):
        parse_spec("a::colour=red")


def test_check_classes_have_anomalies_names_class():
    samples = [Sample("a.png", 0, "cat"), Sample("b.png", 1, "cat"), Sample("c.png", 0, "dog")]
    with pytest.raises(BadInputError, match="without anomalous images: \\['dog'\\]"):
        check_classes_have_anomalies(samples)
    check_classes_have_anomalies(samples[:2])
    with pytest.raises(BadInputError, match="label must be 0"):
        Sample("x.png", 3, "cat")


def _to_tensor(size):
    def transform(image):
        arr = np.asarray(image.resize((size, size), Image.BILINEAR), np.float32) / 255
        return torch.from_numpy(arr).permute(2, 0, 1)

    return transform


def test_anomaly_dataset_masks(tmp_path, caplog):
    pattern = np.zeros((4, 4), np.uint8)
    pattern[0, 1] = 255
    pattern[3, 3] = 90  # non-binary: two different non-zero values
    Image.fromarray(pattern).save(tmp_path / "m.png")
    _img(tmp_path / "a.png", 50, size=4)
    _img(tmp_path / "n.png", 5, size=4)
    samples = [
        Sample(str(tmp_path / "a.png"), 1, "c", str(tmp_path / "m.png")),
        Sample(str(tmp_path / "n.png"), 0, "c"),
        Sample(str(tmp_path / "a.png"), 1, "c", None),
    ]
    ds = AnomalyDataset(samples, _to_tensor(8))
    with caplog.at_level(logging.WARNING):
        item = ds[0]
    expected = np.zeros((8, 8), np.float32)
    expected[0:2, 2:4] = 1  # nearest x2: each source pixel becomes a 2x2 block
    expected[6:8, 6:8] = 1
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    assert item["pixel_values"].shape == (3, 8, 8) and item["label"] == 1 and item["has_mask"]
    assert ds.num_non_binary_masks == 1 and "not binary" in caplog.text
    assert ds[1]["mask"].sum() == 0 and ds[1]["has_mask"] and ds[1]["label"] == 0
    assert ds[2]["mask"].sum() == 0 and not ds[2]["has_mask"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["has_mask"].tolist() == [True, True, False]
    assert batch["label"].tolist() == [1, 0, 1] and batch["class_name"] == ["c", "c", "c"]
    assert "mask" not in AnomalyDataset(samples, _to_tensor(8), with_masks=False)[0]


def test_anomaly_dataset_mask_size_mismatch(tmp_path):
    _img(tmp_path / "a.png", 50, size=8)
    _mask(tmp_path / "m.png", 3, size=4)
    samples = [Sample(str(tmp_path / "a.png"), 1, "c", str(tmp_path / "m.png"))]
    with pytest.raises(BadInputError, match="mask is 4x4 but its image") as info:
        AnomalyDataset(samples, _to_tensor(8))[0]
    assert info.value.path == str(tmp_path / "m.png")
    ds = AnomalyDataset(samples, _to_tensor(8), mask_size_mismatch="resize")
    assert ds[0]["mask"].sum() == 3 * 4 and ds.num_resized_masks == 1
    with pytest.raises(BadInputError, match="mask is 4x4"):
        verify_samples(samples, progress=False)


def test_anomaly_dataset_with_processor_and_augment(tmp_path):
    from transformers import CLIPImageProcessorPil

    from aaclip_hf import AAClipProcessor

    _img(tmp_path / "a.png", 50, size=6)
    _mask(tmp_path / "m.png", 6, size=6)  # the whole first row
    proc = AAClipProcessor(
        image_processor=CLIPImageProcessorPil(size={"height": 12, "width": 12}, do_center_crop=False)
    )
    flip = lambda x, m: (x.flip(-2), m.flip(-2))  # noqa: E731
    ds = AnomalyDataset([Sample(str(tmp_path / "a.png"), 1, "c", str(tmp_path / "m.png"))], proc, augment=flip)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 12, 12) and item["mask"].shape == (12, 12)
    assert item["mask"][-2:].sum() == 24 and item["mask"][:-2].sum() == 0  # flipped with the image


def test_verify_samples_skips_corrupt(tmp_path, caplog):
    _img(tmp_path / "ok.png", 1)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    samples = [Sample(str(tmp_path / "ok.png"), 0, "c"), Sample(str(tmp_path / "bad.png"), 0, "c")]
    with pytest.raises(BadInputError, match="bad.png"):
        verify_samples(samples, progress=False)
    with caplog.at_level(logging.WARNING):
        assert verify_samples(samples, skip_bad_files=True, progress=False) == samples[:1]
    assert "skipped 1 bad entry" in caplog.text
    ds = AnomalyDataset(samples, _to_tensor(4), skip_bad_files=True)
    assert len(ds) == 1 and ds[0]["label"] == 0
    with pytest.raises(BadInputError, match="bad.png"):
        AnomalyDataset(samples, _to_tensor(4))[1]


@pytest.mark.parametrize("embed", [True, False])
def test_hf_dataset_round_trip(mvtec, tmp_path, embed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import ClassLabel
    from datasets import Image as HFImage

    samples = load_samples(mvtec, classes=["bottle"])
    ds = to_hf_dataset(samples, embed_images=embed)
    assert isinstance(ds.features["image"], HFImage) and isinstance(ds.features["label"], ClassLabel)
    normal = [s.label for s in samples].index(0)
    assert ds[normal]["mask"] is None and ds.features["label"].int2str(ds[normal]["label"]) == "normal"
    assert ds[0]["mask"].size == (SIZE, SIZE) and ds.features["label"].int2str(ds[0]["label"]) == "anomaly"
    back = from_hf_dataset(ds, tmp_path / "cache")
    assert [(s.label, s.class_name, s.defect_type) for s in back] == [
        (s.label, s.class_name, s.defect_type) for s in samples
    ]
    for old, new in zip(samples, back):
        assert _value(new.image_path) == _value(old.image_path)
        assert (new.mask_path is None) == (old.mask_path is None)
        if new.mask_path:
            assert _n_on(new.mask_path) == _n_on(old.mask_path)
    if embed:
        assert all(str(tmp_path / "cache") in s.image_path for s in back)
