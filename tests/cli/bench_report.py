"""What the benchmark tests share: a report's hand-written header."""


def base_report() -> dict:
    """The machine, FLOP and parameter fields every report holds, with made-up numbers (no timing is real)."""
    return {
        "preset": "full",
        "model": "m",
        "settings": {"matmul_repeats": 3},
        "machine": {"cpu": "cpu", "simd": ["avx2"], "logical_cpus": 2, "torch": "2", "torch_threads": 2, "cuda": None},
        "started": "now",
        "total_seconds": 60.0,
        "load_average_start": (1.0, 1, 1),
        "load_average_end": (1.0, 1, 1),
        "flops": {
            "vision_forward_per_image": {"terms": {"mlp": 2e9}, "elementwise_estimate": 1e8, "total": 2e9},
            "text_anchors_per_class_77_tokens": {"total": 1e9},
        },
        "parameters": {"full_parameters": 100, "inference_only_parameters": 70},
    }
