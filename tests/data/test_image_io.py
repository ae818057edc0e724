"""Robust loading of messy image and mask files (aaclip_hf.data.image_io)."""

import io

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.data.image_io import BadInputError, MissingFileError, load_image, load_mask


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    out = load_image(_save(tmp_path, "g.png", Image.fromarray(arr)))
    assert out.mode == "RGB" and out.size == (8, 8)
    rgb = np.asarray(out)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], arr)


def test_rgba_is_composited_on_black(tmp_path):
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, 0] = (200, 100, 50, 0)  # fully transparent: black
    arr[0, 1] = (200, 100, 50, 255)  # opaque: unchanged
    arr[0, 2] = (200, 100, 50, 128)  # half: about half
    out = np.asarray(load_image(_save(tmp_path, "a.png", Image.fromarray(arr))))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [200, 100, 50]
    assert np.abs(out[0, 2].astype(int) - [100, 50, 25]).max() <= 1


def test_palette_and_palette_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 240, 120, 60] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = np.asarray(load_image(_save(tmp_path, "p.png", pal)))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [240, 120, 60]
    out_t = np.asarray(load_image(_save(tmp_path, "pt.png", pal, transparency=1)))
    assert out_t[0, 0].tolist() == [10, 20, 30] and out_t[0, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_is_scaled_not_saturated(tmp_path, ext):
    arr = np.array([[1000, 2000, 3000]], np.uint16)
    path = _save(tmp_path, f"m16.{ext}", Image.fromarray(arr))
    assert Image.open(path).mode.startswith("I")
    by_range = np.asarray(load_image(path))[..., 0]
    assert by_range.tolist() == [[0, 128, 255]]  # (v - 1000) / 2000 * 255, rounded
    by_max = np.asarray(load_image(path, high_bit_depth="max"))[..., 0]
    assert by_max.tolist() == [[4, 8, 12]]  # v / 65535 * 255, rounded: dark, never white


def test_16_bit_full_range_and_float(tmp_path):
    arr = np.array([[0, 32768, 65535]], np.uint16)
    out = np.asarray(load_image(_save(tmp_path, "full.png", Image.fromarray(arr)), high_bit_depth="max"))[..., 0]
    assert out.tolist() == [[0, 128, 255]]
    f = np.array([[-1.0, 0.0, 3.0]], np.float32)
    out_f = np.asarray(load_image(_save(tmp_path, "f.tif", Image.fromarray(f))))[..., 0]
    assert out_f.tolist() == [[0, 64, 255]]
    const = np.full((2, 2), 700, np.uint16)
    assert np.asarray(load_image(_save(tmp_path, "c.png", Image.fromarray(const)))).max() == 0


def test_cmyk_jpeg(tmp_path):
    path = _save(tmp_path, "c.jpg", Image.new("CMYK", (8, 6), (0, 255, 255, 0)))  # pure red in CMYK
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 6)
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # raw top-left is red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path, "o.png", Image.fromarray(arr), exif=exif)
    out = load_image(path)
    assert out.size == (2, 3)  # width and height swapped
    assert out.getpixel((1, 0)) == (255, 0, 0)  # raw top-left ends up top-right
    mask = load_mask(path)
    assert mask.size == (2, 3) and mask.getpixel((1, 0)) == 255


def test_one_pixel_image(tmp_path):
    out = load_image(_save(tmp_path, "1.png", Image.new("RGB", (1, 1), (1, 2, 3))))
    assert out.size == (1, 1) and out.getpixel((0, 0)) == (1, 2, 3)


def test_truncated_file_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    path = tmp_path / "trunc.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadInputError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "image_path" in str(info.value)


def test_non_image_with_image_extension(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(BadInputError, match="not a readable image") as info:
        load_image(path)
    assert info.value.path == str(path) and info.value.field == "image_path"


def test_missing_file_is_also_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mask(tmp_path / "nope.png")
    assert isinstance(info.value, MissingFileError) and isinstance(info.value, BadInputError)
    assert "nope.png" in str(info.value) and info.value.field == "mask_path"


@pytest.fixture
def drafts(monkeypatch):
    """`(requested size, size after draft)` of every JPEG draft call."""
    from PIL import JpegImagePlugin

    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_large_images_refused_or_drafted(tmp_path, drafts):
    png = _save(tmp_path, "big.png", Image.new("RGB", (20, 20)))
    with pytest.raises(BadInputError, match="max_pixels=100"):
        load_image(png, max_pixels=100)
    jpg = _save(tmp_path, "big.jpg", Image.new("RGB", (64, 64), (200, 10, 10)))
    with pytest.raises(BadInputError, match="max_pixels=1024"):  # refused before decoding, JPEG or not
        load_image(jpg, max_pixels=32 * 32)
    small = load_image(jpg, max_side=32)
    assert small.size == (32, 32) and drafts == [((32, 32), (32, 32))]  # decoded at 1/2 scale by the DCT
    drafts.clear()
    assert load_image(jpg).size == (64, 64) and drafts == []  # within max_side: decoded as it is
    assert load_image(png, max_side=10).size == (10, 10)  # other formats: resized at once


def test_a_jpeg_larger_than_the_default_limit_is_decoded_reduced(tmp_path, drafts):
    """At the default limits (max_side 4096) a wide JPEG is drafted at 1/2 scale, then resized to 4096."""
    jpg = _save(tmp_path, "line_scan.jpg", Image.new("RGB", (8400, 64), (90, 90, 90)))
    image = load_image(jpg)
    assert image.size == (4096, 31)
    assert drafts == [((4096, 31), (4200, 32))]  # never below max_side, a quarter of the full decode


def test_mask_modes_keep_nonzero_structure(tmp_path):
    grey = np.array([[0, 7, 255]], np.uint8)
    assert np.asarray(load_mask(_save(tmp_path, "l.png", Image.fromarray(grey)))).tolist() == [[0, 7, 255]]
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = (1, 0, 0)  # dark red label pixel: convert("L") would round it to 0
    assert np.asarray(load_mask(_save(tmp_path, "rgb.png", Image.fromarray(rgb)))).tolist() == [[0, 1]]
    m16 = np.array([[0, 1, 65535]], np.uint16)
    assert np.asarray(load_mask(_save(tmp_path, "m16.png", Image.fromarray(m16)))).tolist() == [[0, 255, 255]]
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    out = load_mask(_save(tmp_path, "b.png", bits))
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 255]]


def test_error_message_names_file_and_field():
    err = BadInputError("expected 0 or 1", "data/x.jsonl", "label")
    assert str(err) == "file 'data/x.jsonl', field 'label': expected 0 or 1"
    assert isinstance(err, ValueError)
