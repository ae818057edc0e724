"""Build Hugging Face CLIP tokenizer files from OpenAI's BPE merges file, offline.

OpenAI ships its byte-level BPE as ``bpe_simple_vocab_16e6.txt.gz`` (also inside the
``open_clip_torch`` wheel). Its vocabulary is fully determined by the merges: the 256 byte
symbols, the same with the end-of-word marker, one entry per merge, then the two special
tokens. Rebuilding it here means a default processor never needs the Hub.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

from ..errors import InvalidInputError, MissingFileError


BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# OpenAI CLIP uses the first 49152 - 256 - 2 merges of the file (the rest are unused).
NUM_MERGES = 49152 - 256 - 2
CONTEXT_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-character table of GPT-2/CLIP byte-level BPE.

    Insertion order matters: it is the order of the first 256 vocabulary entries
    (printable bytes first, then the remapped ones).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def read_merges(bpe_path: str | Path) -> list[tuple[str, str]]:
    path = Path(bpe_path)
    if not path.is_file():
        raise MissingFileError(f"BPE merges file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    # Line 0 is a version header.
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    bad = [i for i, m in enumerate(merges) if len(m) != 2]
    if len(merges) != NUM_MERGES or bad:
        raise InvalidInputError(
            f"{path}: expected {NUM_MERGES} merge lines of two symbols after the header, "
            f"got {len(merges)} lines ({len(bad)} malformed); is this OpenAI's bpe_simple_vocab_16e6 file?"
        )
    return merges


def build_clip_tokenizer(bpe_path: str | Path) -> CLIPTokenizer:
    merges = read_merges(bpe_path)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=CONTEXT_LENGTH,
    )


def find_open_clip_bpe() -> Path:
    """The merges file inside an installed ``open_clip_torch`` (found without importing torchvision)."""

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError("open_clip_torch is not installed; pass the path of bpe_simple_vocab_16e6.txt.gz")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise MissingFileError(f"{path} is missing from the open_clip_torch install")
    return path


def convert_tokenizer(bpe_path: str | Path, output_dir: str | Path) -> Path:
    tokenizer = build_clip_tokenizer(bpe_path)
    tokenizer.save_pretrained(str(output_dir))
    return Path(output_dir)
