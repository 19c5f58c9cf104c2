from ftbench.inference.workload import time_decode_workload, workload_shape


def test_workload_shape_fits_the_context():
    assert workload_shape(256, 8) == {"rows": 16, "batch_size": 8, "prompt_tokens": 64,
                                      "new_tokens": 64}
    # A 64-token context: 32 new tokens, 32 prompt tokens.
    assert workload_shape(64, 4) == {"rows": 8, "batch_size": 4, "prompt_tokens": 32,
                                     "new_tokens": 32}


def test_both_arms_generate_the_same_tokens_in_the_same_batches(toy_pair):
    shape = {"rows": 3, "batch_size": 2, "prompt_tokens": 5, "new_tokens": 4}
    runs = [time_decode_workload(m, shape, repeats=2, amp=None) for m in toy_pair]
    for r in runs:
        # Every row runs every step (no stop token): 3 rows x 4 tokens.
        assert r["generated"] == 12 and len(r["seconds_all"]) == 2
        assert r["seconds"] > 0 and r["tokens_per_s"] == 12 / r["seconds"]
        assert {k: r[k] for k in shape} == shape
