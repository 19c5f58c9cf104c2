"""Training: arms of a pair, the loop, distributed setup, checkpoints and export."""
