"""Question sets that ship with the package (``lora-blackbox answers --questions NAME``): ``vicuna80``, FastChat's 80
Vicuna questions (README.md beside this file: source and licence), and ``paper30``, the 30 of them that Tribes et
al. asked in their human study."""

from __future__ import annotations

from pathlib import Path

VICUNA_80 = Path(__file__).resolve().parent / "vicuna80.jsonl"

PAPER_30 = (
    27,
    28,
    49,
    23,
    31,
    52,
    8,
    60,
    35,
    80,
    57,
    29,
    32,
    43,
    34,
    56,
    79,
    73,
    44,
    5,
    76,
    51,
    3,
    41,
    12,
    4,
    55,
    46,
    11,
    42,
)
"""The question ids of bbopt/Nomad_HPO_Llama-2_With_LoRa blind_eval/sampled_question.jsonl, in its order."""

SHIPPED: dict[str, tuple[Path, tuple[int, ...] | None]] = {
    "vicuna80": (VICUNA_80, None),
    "paper30": (VICUNA_80, PAPER_30),
}
"""Each set's file and the ids it asks, in order (None: every question of the file)."""
