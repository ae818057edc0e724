"""Devices and inference dtypes (`aaclip_hf.runtime.devices`): `--dtype auto`'s chooser on given CPU flags and
timings, bf16-on-CPU closeness to fp32, and one-line errors for devices this machine does not have."""

import copy

import pytest
import torch

from aaclip_hf import AAClipConfig, AAClipModel
from aaclip_hf.cli import main
from aaclip_hf.errors import BadInputError
from aaclip_hf.runtime import devices
from aaclip_hf.runtime.devices import (
    ACCURACY_BOUNDS,
    BF16_MIN_SPEEDUP,
    cast_for_inference,
    choose_cpu_dtype,
    dtype_supported,
    resolve_device,
    resolve_dtype,
)


# bf16 keeps 8 significand bits: unit roundoff u = 2**-8.
BF16_U = 2.0**-8


def test_resolve_dtype_names_and_defaults():
    assert resolve_dtype(None, "cpu") in (torch.float32, torch.bfloat16)  # auto: the chooser's pick (below)
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("float32") == torch.float32
    assert resolve_dtype(torch.float32) == torch.float32
    if dtype_supported(torch.bfloat16, "cpu"):
        assert resolve_dtype("bf16", "cpu") == torch.bfloat16
        assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype must be one of"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="floating dtype"):
        resolve_dtype(torch.int32)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not supported on device cuda"):
            resolve_dtype("bf16", "cuda")


def _model():
    torch.manual_seed(0)
    config = AAClipConfig.tiny(vision_config={"image_size": 64, "patch_size": 8})
    model = AAClipModel(config).eval()
    model.init_adapter_weights(seed=0)
    anchors = torch.nn.functional.normalize(torch.randn(2, config.projection_dim, 2), dim=1)
    model.store_text_anchors(["object", "bottle"], anchors)
    return model


@pytest.mark.skipif(not dtype_supported(torch.bfloat16, "cpu"), reason="bf16 not supported on this CPU build")
def test_bf16_on_cpu_is_close_to_fp32():
    model = _model()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(pixels, class_ids=model.class_ids(["object", "bottle"]))
        half = cast_for_inference(copy.deepcopy(model), resolve_dtype("bf16", "cpu"))
        out = half(pixels.to(torch.bfloat16), class_ids=half.class_ids(["object", "bottle"]))
    # The tower really ran in bf16 (a no-op cast would pass the closeness checks trivially); its features leave
    # the heads in fp32 and are scored there.
    assert next(half.vision_model.parameters()).dtype == torch.bfloat16 and half.text_anchors.dtype == torch.bfloat16
    assert out.anomaly_map_grid.dtype == out.patch_embeds[0].dtype == torch.float32
    assert (out.anomaly_map_grid.float() - ref.anomaly_map_grid).abs().max() > 0
    # Tolerances, from bf16's u = 2^-8 ~ 3.9e-3:
    # * unit-norm patch features: a handful of roundings along a 4-layer tower -> 4u absolute;
    for a, b in zip(out.patch_embeds, ref.patch_embeds):
        torch.testing.assert_close(a.float(), b, atol=4 * BF16_U, rtol=0)
    # * the map grid is `temperature * cosine` summed over L levels: one u of cosine error per level
    #   becomes temperature * L * u (= 1.56 here, on values of size ~40);
    atol_grid = model.config.similarity_temperature * model.config.num_levels * BF16_U
    torch.testing.assert_close(out.anomaly_map_grid.float(), ref.anomaly_map_grid, atol=atol_grid, rtol=0)
    # * scores in [0, 1] (sigmoid / cosine-based): 4u absolute.
    torch.testing.assert_close(out.image_score.float(), ref.image_score, atol=4 * BF16_U, rtol=0)
    torch.testing.assert_close(out.raw_anomaly_score.float(), ref.raw_anomaly_score, atol=4 * BF16_U, rtol=0)
    # and the map keeps its spatial pattern (the part that matters for segmentation).
    pair = torch.stack([out.anomaly_map_grid.float().flatten(), ref.anomaly_map_grid.flatten()])
    assert torch.corrcoef(pair)[0, 1] > 0.999


AVX2 = ["fpu", "sse4_2", "avx", "avx2", "fma"]
ZEN4 = [*AVX2, "avx512f", "avx512_vnni", "avx512_bf16"]
SAPPHIRE_RAPIDS = [*ZEN4, "amx_tile", "amx_int8", "amx_bf16"]
GRAVITON3 = ["fp", "asimd", "asimddp", "bf16", "i8mm"]


def _seconds(speedup: float) -> dict[str, float]:
    return {"float32": 1.0, "bfloat16": 1.0 / speedup}


def test_the_dtype_chooser_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "measure_matmul_seconds", lambda *a, **k: pytest.fail("timed without native bf16"))
    choice = choose_cpu_dtype(flags=AVX2)
    assert choice.dtype == torch.float32 and "no native bf16" in choice.reason
    assert choice.flags == ["avx2", "fma"] and choice.native == []  # the report names what it saw
    assert choose_cpu_dtype(flags=AVX2, seconds=_seconds(10.0)).dtype == torch.float32  # emulated: never bf16


@pytest.mark.parametrize("flags", [ZEN4, SAPPHIRE_RAPIDS, GRAVITON3], ids=["avx512-bf16", "amx", "arm-bf16"])
def test_the_dtype_chooser_picks_bf16_only_when_measured_faster(flags):
    fast = choose_cpu_dtype(flags=flags, seconds=_seconds(2.0))
    assert fast.dtype == torch.bfloat16 and fast.speedup == pytest.approx(2.0) and fast.native
    assert "2.00x" in fast.reason
    slow = choose_cpu_dtype(flags=flags, seconds=_seconds(BF16_MIN_SPEEDUP * 0.99))
    assert slow.dtype == torch.float32 and f"below {BF16_MIN_SPEEDUP}x" in slow.reason
    assert choose_cpu_dtype(flags=flags, seconds=_seconds(BF16_MIN_SPEEDUP)).dtype == torch.bfloat16
    assert choose_cpu_dtype(flags=flags, seconds=_seconds(1.5), min_speedup=1.6).dtype == torch.float32


def test_the_dtype_chooser_checks_a_measured_accuracy():
    good = {"map_correlation": ACCURACY_BOUNDS["map_correlation"] + 0.005, "auroc_change_points": -0.3}
    assert choose_cpu_dtype(flags=ZEN4, seconds=_seconds(2.0), accuracy=good).dtype == torch.bfloat16
    for bad in ({**good, "map_correlation": 0.98}, {**good, "auroc_change_points": -0.8}):
        choice = choose_cpu_dtype(flags=ZEN4, seconds=_seconds(2.0), accuracy=bad)
        assert choice.dtype == torch.float32 and "accuracy" in choice.reason


def test_the_dtype_chooser_times_the_probe_when_not_given_timings(monkeypatch):
    calls = []
    monkeypatch.setattr(devices, "measure_matmul_seconds", lambda *a, **k: calls.append(1) or _seconds(3.0))
    monkeypatch.setattr(devices, "dtype_supported", lambda dtype, device: True)
    assert choose_cpu_dtype(flags=ZEN4).dtype == torch.bfloat16 and calls == [1]
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(AVX2))
    assert choose_cpu_dtype().dtype == torch.float32  # this machine's flags by default


def test_auto_on_the_cpu_follows_the_chooser(monkeypatch):
    for dtype in (torch.bfloat16, torch.float32):
        monkeypatch.setattr(devices, "choose_cpu_dtype", lambda dtype=dtype: devices.DtypeChoice(dtype, "test"))
        assert resolve_dtype("auto", "cpu") == dtype
    assert resolve_dtype("float32", "cpu") == torch.float32  # an explicit dtype is never second-guessed


def test_the_probe_times_each_dtype():
    seconds = devices.measure_matmul_seconds((torch.float32,), shape=(8, 8, 8), repeats=2)
    assert set(seconds) == {"float32"} and 0 < seconds["float32"] < 1


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("toaster", r"field '--device': 'toaster' is not a device; expected one of auto, cpu, cuda, cuda:N, mps"),
        ("meta", r"'meta' is not supported; expected one of auto, cpu"),
        ("cuda:7", r"field '--device': 'cuda:7': this machine has (no CUDA GPU|\d+ CUDA GPU)"),
    ],
)
def test_devices_this_machine_lacks_are_one_line_errors(device, expected):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(BadInputError, match=expected) as caught:
        resolve_device(device)
    assert "\n" not in str(caught.value)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("device", ["toaster", "cuda:7"])
def test_the_cli_names_the_device_flag_in_one_line(tiny_model, processor, tmp_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    from PIL import Image

    from aaclip_hf.runtime.model_folder import save_model_folder

    folder = save_model_folder(tiny_model, processor, tmp_path / "model")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "a.png")
    capsys.readouterr()  # the folder writer's progress bar
    argv = ["detect", str(tmp_path / "images"), "--model", str(folder), "--output", str(tmp_path / "out")]
    assert main([*argv, "--device", device, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "expected" in err[0], err
    assert not (tmp_path / "out").exists()
