"""The paper's synthetic task (section 4.1; recipe section 8).

A sample is 64 '_' in which a random upper-case letter, repeated 8 times, replaces the
characters at a random start (57 possible starts); then every character, targets
included, becomes '!' with probability 1/16. The prompt '<letter>>' is prepended:
66 characters over 29 symbols.
"""

from __future__ import annotations

import random
import string

LENGTH = 64
TARGET_LEN = 8
NOISE = 1 / 16
LETTERS = string.ascii_uppercase
ALPHABET = LETTERS + "_!>"  # 29 symbols
N_STARTS = LENGTH - TARGET_LEN + 1  # 57


def sample(rng: random.Random) -> str:
    letter = rng.choice(LETTERS)
    start = rng.randrange(N_STARTS)
    body = ["_"] * LENGTH
    body[start:start + TARGET_LEN] = [letter] * TARGET_LEN
    body = ["!" if rng.random() < NOISE else ch for ch in body]
    return f"{letter}>" + "".join(body)


def target_start(text: str) -> int | None:
    """Where the prompted letter's run of 8 begins in the body, if the sample is well formed:
    exactly one run of the prompted letter, of length 8 (noise may hide some of it)."""
    if len(text) != LENGTH + 2 or text[1] != ">" or text[0] not in LETTERS:
        return None
    body = text[2:]
    positions = [i for i, ch in enumerate(body) if ch == text[0]]
    if not positions or positions[-1] - positions[0] >= TARGET_LEN:
        return None
    if any(ch not in "_!" + text[0] for ch in body):
        return None
    return positions[0]
