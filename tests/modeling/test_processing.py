"""AAClipProcessor: reference preprocessing, masks, prompts, tokenizer parity with open_clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf import AAClipProcessor
from aaclip_hf.modeling.processing_aaclip import CLASS_NAME_TABLE


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _photo(width=97, height=61, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_images_match_the_reference_torchvision_pipeline():
    torchvision_transforms = pytest.importorskip("torchvision.transforms")
    reference = torchvision_transforms.Compose(
        [
            torchvision_transforms.Resize((518, 518), interpolation=torchvision_transforms.InterpolationMode.BICUBIC),
            torchvision_transforms.ToTensor(),
            torchvision_transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    processor = AAClipProcessor()
    images = [_photo(), _photo(300, 200, seed=1).convert("L")]
    ours = processor(images=images)["pixel_values"]
    assert ours.shape == (2, 3, 518, 518)
    for image, got in zip(images, ours):
        want = reference(image.convert("RGB"))
        assert (got - want).abs().max() < 1e-5


def test_masks_are_resized_nearest_and_stay_binary(processor):
    mask = np.zeros((60, 90), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    mask[41, 81] = 7  # any non-zero value is a defect pixel; PIL nearest samples pixel centres: 2 * 20 + 1
    out = processor.preprocess_masks([Image.fromarray(mask), mask.astype(np.float32) / 255.0], size=(30, 45))
    assert out.shape == (2, 30, 45) and out.dtype == torch.float32
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    expected = torch.zeros(30, 45)
    expected[5:15, 10:25] = 1
    expected[20, 40] = 1
    torch.testing.assert_close(out[0], expected)
    # The reference resizes PIL masks with PIL's NEAREST (torchvision Resize on a PIL image).
    rng = np.random.default_rng(0)
    odd = (rng.random((90, 70)) > 0.5).astype(np.uint8) * 255
    reference = np.asarray(Image.fromarray(odd).resize((37, 51), Image.NEAREST)) != 0
    torch.testing.assert_close(
        processor.preprocess_masks(odd, size=(51, 37))[0], torch.from_numpy(reference.astype(np.float32))
    )
    with pytest.raises(ValueError, match=r"mask 0: .*must be 2-D"):
        processor.preprocess_masks([np.zeros((2, 3, 4, 5))])


def test_prompt_ensemble_and_name_table(processor):
    normal, anomaly = processor.build_prompts("metal_nut")
    assert normal == [
        "metal nut which has four notched edges.",
        "a photo of metal nut which has four notched edges.",
        "a metal nut which has four notched edges.",
        "a photo of a metal nut which has four notched edges.",
        "the metal nut which has four notched edges.",
        "a photo of the metal nut which has four notched edges.",
    ]
    assert anomaly[0] == "a damaged metal nut which has four notched edges."
    assert anomaly[-1] == "a photo of a metal nut which has four notched edges with damage."
    assert processor.prompt_name("visa/pcb1") == "dual ultrasonic distance sensor pcb module"
    assert processor.prompt_name("my_new_part") == "my new part"
    assert processor.prompt_name("object") == "object"
    assert processor.prompt_name("Brain") == "scan"


def test_prompts_over_77_tokens_raise(processor):
    with pytest.raises(ValueError, match="over CLIP's 77-token context"):
        processor.tokenize_prompts(["word " * 80])


def test_custom_prompts_round_trip(tmp_path):
    processor = AAClipProcessor(templates=["a close-up photo of {}."], class_name_table={"gear": "steel gear"})
    processor.save_pretrained(tmp_path)
    loaded = AAClipProcessor.from_pretrained(tmp_path)
    assert loaded.templates == ["a close-up photo of {}."]
    assert loaded.build_prompts("gear")[0][0] == "a close-up photo of steel gear."
    assert type(loaded.image_processor).__name__ == "AAClipImageProcessor"
    with pytest.raises(ValueError, match="exactly one"):
        AAClipProcessor(templates=["no placeholder"])


def test_bundled_tokenizer_ids_equal_open_clip():
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.get_tokenizer("ViT-L-14-336")
    processor = AAClipProcessor()
    sentences = []
    for key in list(CLASS_NAME_TABLE) + ["object", "my_part"]:
        normal, anomaly = processor.build_prompts(key)
        sentences += normal[:2] + anomaly[-2:]
    sentences += ["Hello, World! café 123 -- Tokens?!", "  multiple   spaces\tand tabs "]
    ours = processor.tokenize(sentences)
    theirs = reference(sentences)
    for index, sentence in enumerate(sentences):
        length = int(ours["attention_mask"][index].sum())
        assert ours["input_ids"][index, :length].tolist() == theirs[index, :length].tolist(), sentence
        assert theirs[index, length:].eq(0).all()


def test_post_processing_resizes_from_the_grid(tiny_model, processor, pixel_values):
    with torch.no_grad():
        out = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_size=(40, 40))
    results = processor.post_process_anomaly_detection(out, target_sizes=[(40, 40), (7, 9), (100, 60)], thresholds=0.5)
    torch.testing.assert_close(torch.from_numpy(results[0]["anomaly_map"]), out.anomaly_map[0], rtol=1e-5, atol=1e-5)
    assert results[1]["anomaly_map"].shape == (7, 9) and results[2]["anomaly_map"].shape == (100, 60)
    assert results[1]["score"] == pytest.approx(float(out.image_score[1]))
    assert results[2]["is_anomaly"] == (results[2]["score"] >= 0.5)
    with pytest.raises(ValueError, match="3 images"):
        processor.post_process_anomaly_detection(out, target_sizes=[(1, 1)])
