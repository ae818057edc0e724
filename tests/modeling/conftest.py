"""Markers used by transformers' own common tests (`transformers_common.py` imports them from its sdist)."""

from __future__ import annotations


TRANSFORMERS_TEST_MARKERS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
)


def pytest_configure(config):
    for marker in TRANSFORMERS_TEST_MARKERS:
        config.addinivalue_line(
            "markers", f"{marker}: transformers' own test marker (tests/modeling/transformers_common.py)"
        )
