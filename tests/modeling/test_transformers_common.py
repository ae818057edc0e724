"""transformers' own `ModelTesterMixin` and `ConfigTester` run against `AAClipModel` / `AAClipConfig`.

The tester mirrors transformers' `CLIPModelTester` (tests/models/clip): a composite model with a text and a vision
sub-tester and tiny towers. Every flag or skip below is one that transformers' `CLIPModelTest` (or `CLIPSegModelTest`)
sets for the same reason, cited next to it (the sdist ships no tests/models/, so those were read in transformers'
repository). The common test files come from the transformers sdist on PyPI (see `transformers_common.py`); without
network the whole module is skipped with the reason.
"""

from __future__ import annotations

import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from aaclip_hf import AAClipConfig, AAClipModel

from . import transformers_common


common, configuration_common = transformers_common.load()
ModelTesterMixin = common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor, ids_tensor, random_attention_mask = (
    common.floats_tensor,
    common.ids_tensor,
    common.random_attention_mask,
)


class AAClipTextModelTester:
    """Tiny text tower and its inputs (the role of transformers' `CLIPTextModelTester`)."""

    def __init__(self, parent, batch_size=4, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers

    def get_config(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": 37,
            "projection_dim": 16,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": 4,
            "max_position_embeddings": 32,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "bos_token_id": self.vocab_size - 2,
            "eos_token_id": self.vocab_size - 1,
        }

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2)
        attention_mask = torch.ones_like(input_ids)
        # Right padding of random length, EOS at the last real token (where CLIP pools).
        lengths = torch.randint(2, self.seq_length + 1, (self.batch_size,))
        for row, length in enumerate(lengths.tolist()):
            input_ids[row, length - 1] = self.vocab_size - 1
            attention_mask[row, length:] = 0
        return None, {"input_ids": input_ids, "attention_mask": attention_mask}


class AAClipVisionModelTester:
    """Tiny vision tower and its inputs (the role of transformers' `CLIPVisionModelTester`)."""

    def __init__(self, parent, batch_size=4, image_size=20, patch_size=4, hidden_size=32, num_hidden_layers=2):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = 3
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = 4
        self.seq_length = (image_size // patch_size) ** 2 + 1  # patches + CLS

    def get_config(self) -> dict:
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "hidden_size": self.hidden_size,
            "intermediate_size": 37,
            "projection_dim": 16,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "dropout": 0.1,
            "attention_dropout": 0.1,
        }

    def prepare_config_and_inputs_for_common(self):
        shape = [self.batch_size, self.num_channels, self.image_size, self.image_size]
        return None, {"pixel_values": floats_tensor(shape)}


class AAClipModelTester:
    def __init__(self, parent, batch_size=4, projection_dim=16):
        self.parent = parent
        self.text_model_tester = AAClipTextModelTester(parent, batch_size=batch_size)
        self.vision_model_tester = AAClipVisionModelTester(parent, batch_size=batch_size)
        self.batch_size = batch_size  # batching-equivalence tests read it
        self.projection_dim = projection_dim
        self.is_training = True
        # `AAClipOutput.hidden_states` / `attentions` are the vision tower's: the common checks read these.
        self.seq_length = self.vision_model_tester.seq_length
        self.hidden_size = self.vision_model_tester.hidden_size
        self.num_hidden_layers = self.vision_model_tester.num_hidden_layers
        self.num_attention_heads = self.vision_model_tester.num_attention_heads

    def get_config(self) -> AAClipConfig:
        return AAClipConfig(
            text_config=self.text_model_tester.get_config(),
            vision_config=self.vision_model_tester.get_config(),
            projection_dim=self.projection_dim,
            text_adapter_layers=1,
            vision_adapter_layers=1,
            feature_layers=[1, 2],
        )

    def prepare_config_and_inputs_for_common(self):
        _, inputs = self.vision_model_tester.prepare_config_and_inputs_for_common()
        # Explicit anchors: a freshly built model has no stored ones (and this input slices along the batch).
        anchors = F.normalize(floats_tensor([self.batch_size, self.projection_dim, 2]) - 0.5, dim=1)
        return self.get_config(), {**inputs, "text_anchors": anchors}


class AAClipModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (AAClipModel,)
    # CLIPModelTest lists its second input (`pixel_values`) here; ours is `text_anchors`.
    additional_model_inputs = ["text_anchors"]
    # CLIPModelTest: the towers' token/position tables are not resizable through the composite model.
    test_resize_embeddings = False
    # CLIPModelTest: a composite model (text and vision sub-configs).
    _is_composite = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # transformers' tests recognise a base model by `MODEL_MAPPING_NAMES` (CLIPModel is listed for "clip"), which
        # `AutoModel.register` (what `import aaclip_hf` does) leaves alone: list AAClipModel as a native model would
        # be. Base models, like CLIPModel, then skip the head-only checks (`test_training` needs a `loss`).
        cls.enterClassContext(mock.patch.dict(MODEL_MAPPING_NAMES, {AAClipConfig.model_type: AAClipModel.__name__}))

    def setUp(self):
        self.model_tester = AAClipModelTester(self)
        # As CLIPModelTest: no text modality on the composite config, the joint-space fields as common properties.
        self.config_tester = ConfigTester(
            self,
            config_class=AAClipConfig,
            has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="CLIPModelTest skips it too: the composite model has no input/output embeddings")
    def test_model_get_set_embeddings(self):
        pass
