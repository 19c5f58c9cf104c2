"""Training data: sources, the mix, the tokenizer, cached token shards, the batch sampler."""
