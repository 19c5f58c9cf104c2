import random
from collections import Counter

from ftbench.data import synthetic


def test_samples_follow_the_paper_recipe():
    rng = random.Random(0)
    samples = [synthetic.sample(rng) for _ in range(4000)]
    assert all(len(s) == 66 for s in samples)
    assert set("".join(samples)) <= set(synthetic.ALPHABET) and len(synthetic.ALPHABET) == 29
    noise = sum(s[2:].count("!") for s in samples) / (64 * len(samples))
    assert abs(noise - 1 / 16) < 0.004
    starts = Counter()
    for s in samples:
        letter, body = s[0], s[2:]
        assert s[1] == ">"
        hits = [i for i, ch in enumerate(body) if ch == letter]
        # 8 target characters, each independently hidden by noise with probability 1/16.
        assert hits and hits[-1] - hits[0] < 8 and len(hits) <= 8
        clean = body.replace("!", "_")
        first = clean.index(letter)
        starts[first if clean[first:first + 8] == letter * 8 else None] += 1
    full = {k: v for k, v in starts.items() if k is not None}
    assert min(full) == 0 and max(full) == 56  # 57 possible starts


def test_target_start_recognises_well_formed_samples():
    rng = random.Random(1)
    s = synthetic.sample(rng)
    assert synthetic.target_start(s) is not None
    assert synthetic.target_start("A>" + "A" * 9 + "_" * 55) is None  # run too long
    assert synthetic.target_start("A>" + "_" * 63) is None  # wrong length
    assert synthetic.target_start("A>" + "AAAAAAAA" + "_" * 20 + "B" + "_" * 35) is None
