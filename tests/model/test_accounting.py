"""Parameters and FLOPs per token, pinned by hand from the conventions in
ftbench/model/accounting.py's docstring (a matmul with an m x n weight: 2mn forward, 4mn
backward; causal attention 2(T+1)K per head per token forward; the encoder's T x T
attention 4TK; the Binary Mapper's backward 2 * 2^H * D + 2 * 2^H * (H + 1)). Every figure
below is written out term by term, not computed by the code under test."""

import pytest

from ftbench.model import get_preset
from ftbench.model.accounting import model_cost, overhead

# toy: V 8192, D 64, L 4, 4 heads of 16 (2 KV heads), FFN 256, tied, T 256, H 8.
TOY_BLOCK_MATMULS = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256          # q, o; k, v; SwiGLU
TOY = dict(
    block_matmuls=61_440,
    baseline_params=8192 * 64 + 4 * (61_440 + 2 * 64) + 64,             # 770,624
    encoder_params=(61_440 + 2 * 64) + 64 + 64 + 64 * 8,                # 62,208
    post_params=256 * 64,                                               # 16,384
    # 2 x (4 blocks + head) + 4 layers x 2 (T + 1) x (4 x 16)
    baseline_fwd=2 * (4 * 61_440 + 8192 * 64) + 4 * 2 * 257 * 64,       # 1,671,680
    # one block, full T x T attention, readout to 8 bits
    encoder_fwd=2 * 61_440 + 4 * 256 * 64 + 2 * 64 * 8,                 # 189,440
    mapper_bwd=2 * 256 * 64 + 2 * 256 * 9,                              # 37,376
    decode=2 * (4 * 61_440 + 8192 * 64) + 4 * 4 * 256 * 64,             # 1,802,240
)

# 1.5b: V 2^17, D 1536, L 28, 12 heads of 128 (2 KV heads), FFN 8960, tied, T 4096, H 16.
B15 = dict(
    block_matmuls=2 * 1536 * 1536 + 2 * 1536 * 256 + 3 * 1536 * 8960,   # 46,792,704
    baseline_params=131_072 * 1536 + 28 * (46_792_704 + 2 * 1536) + 1536,  # 1,511,609,856
    encoder_params=(46_792_704 + 2 * 1536) + 1536 + 1536 + 1536 * 16,   # 46,823,424
    post_params=65_536 * 1536,                                          # 100,663,296
    baseline_fwd=2 * (28 * 46_792_704 + 131_072 * 1536) + 28 * 2 * 4097 * 1536,
    encoder_fwd=2 * 46_792_704 + 4 * 4096 * 1536 + 2 * 1536 * 16,       # 118,800,384
    mapper_bwd=2 * 65_536 * 1536 + 2 * 65_536 * 17,                     # 203,554,816
    decode=2 * (28 * 46_792_704 + 131_072 * 1536) + 28 * 4 * 4096 * 1536,
)


def test_the_hand_figures_are_what_they_say():
    assert TOY_BLOCK_MATMULS == TOY["block_matmuls"]
    assert TOY["baseline_params"] == 770_624 and TOY["baseline_fwd"] == 1_671_680
    assert B15["baseline_params"] == 1_511_609_856 and B15["baseline_fwd"] == 3_375_452_160


@pytest.mark.parametrize("size,hand", [("toy", TOY), ("1.5b", B15)])
def test_parameters_and_flops_per_token_equal_the_hand_count(size, hand):
    cfg = get_preset(size)
    base, free = model_cost(cfg, "baseline"), model_cost(cfg, "free")
    assert base.seq_len == free.seq_len == cfg.max_seq_len
    assert base.arch == "baseline" and free.arch == "free"
    assert base.params_total == hand["baseline_params"]
    assert base.params_encoder == base.params_post_sampler == 0
    assert free.params_encoder == hand["encoder_params"]
    assert free.params_post_sampler == hand["post_params"]
    assert free.params_total == (hand["baseline_params"] + hand["encoder_params"]
                                 + hand["post_params"])
    assert free.params_embedding == base.params_embedding == cfg.vocab_size * cfg.d_model
    assert free.params_blocks == base.params_blocks == cfg.n_layers * (
        hand["block_matmuls"] + 2 * cfg.d_model)
    assert base.forward_flops_per_token == hand["baseline_fwd"]
    assert base.train_flops_per_token == 3 * hand["baseline_fwd"]
    assert free.forward_flops_per_token == hand["baseline_fwd"] + hand["encoder_fwd"]
    # Training: 3 x forward for the decoder and the encoder; the Binary Mapper's backward
    # as implemented (its forward is a gather).
    assert free.train_flops_per_token == (3 * (hand["baseline_fwd"] + hand["encoder_fwd"])
                                          + hand["mapper_bwd"])
    assert base.decode_flops_per_token == free.decode_flops_per_token == hand["decode"]
    assert all(isinstance(x, float) for x in (free.train_flops_per_token,
                                              free.forward_flops_per_token,
                                              free.decode_flops_per_token))


def test_the_paper_shape_overhead_is_five_and_a_half_percent():
    # 1.5b: (3 x 118,800,384 + 203,554,816) / (3 x 3,375,452,160) = 5.53 % more training
    # FLOPs (3.52 % without the Binary Mapper's backward); 3.10 % more parameters without
    # W_post, 9.76 % with it.
    cfg = get_preset("1.5b")
    o = overhead(model_cost(cfg, "baseline"), model_cost(cfg, "free"))
    assert set(o) == {"params_without_post_sampler", "params_total", "train_flops",
                      "forward_flops", "decode_flops"}
    assert o["train_flops"] == pytest.approx(559_955_968 / 10_126_356_480, rel=1e-12)
    assert round(100 * o["train_flops"], 2) == 5.53
    assert o["forward_flops"] == pytest.approx(118_800_384 / 3_375_452_160, rel=1e-12)
    assert o["params_without_post_sampler"] == pytest.approx(46_823_424 / 1_511_609_856,
                                                             rel=1e-12)
    assert o["params_total"] == pytest.approx(147_486_720 / 1_511_609_856, rel=1e-12)
    assert o["decode_flops"] == 0.0


def test_untied_embeddings_and_another_sequence_length():
    # small: untied (input embedding and head), T given as 100 instead of 1024.
    cfg = get_preset("small")  # V 8192, D 256, L 8, 4 heads of 64, 4 KV heads, FFN 1024
    block = 2 * 256 * 256 + 2 * 256 * 256 + 3 * 256 * 1024            # 1,048,576
    base = model_cost(cfg, "baseline", seq_len=100)
    assert base.seq_len == 100
    assert base.params_embedding == 2 * 8192 * 256
    assert base.params_total == 2 * 8192 * 256 + 8 * (block + 512) + 256
    fwd = 2 * (8 * block + 8192 * 256) + 8 * 2 * 101 * 256
    assert base.forward_flops_per_token == fwd and base.train_flops_per_token == 3 * fwd
    assert base.decode_flops_per_token == 2 * (8 * block + 8192 * 256) + 8 * 4 * 100 * 256
    free = model_cost(cfg, "free", seq_len=100)  # H 16
    enc = 2 * block + 4 * 100 * 256 + 2 * 256 * 16
    assert free.train_flops_per_token == 3 * (fwd + enc) + 2 * 65_536 * 256 + 2 * 65_536 * 17
    assert free.as_dict()["params_post_sampler"] == 65_536 * 256
    assert free.as_dict()["seq_len"] == 100 and free.as_dict()["arch"] == "free"


def test_recomputed_flops_of_activation_checkpointing_by_hand():
    # Full checkpointing runs each block's forward again but the SwiGLU's down projection:
    # toy, per block 2 x (61,440 - 64 x 256) = 90,112 matmul FLOPs and 2 x 257 x 64
    # causal attention; the Free model's encoder block adds 90,112 + 4 x 256 x 64.
    from ftbench.model.accounting import recompute_flops_per_token

    toy = get_preset("toy")
    assert recompute_flops_per_token(toy, "baseline") == 4 * (90_112 + 2 * 257 * 64)
    assert recompute_flops_per_token(toy, "free") == 4 * (90_112 + 2 * 257 * 64) \
        + 90_112 + 4 * 256 * 64
    assert recompute_flops_per_token(toy, "free", seq_len=100, checkpointing="full") == \
        4 * (90_112 + 2 * 101 * 64) + 90_112 + 4 * 100 * 64
    assert recompute_flops_per_token(toy, "free", checkpointing="selective") == 0.0
    assert isinstance(recompute_flops_per_token(toy, "baseline"), float)
