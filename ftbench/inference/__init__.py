"""Inference: batched, KV-cached generation for both architectures."""

from ftbench.inference.generation import GenerationOutput, SamplingConfig, generate

__all__ = ["GenerationOutput", "SamplingConfig", "generate"]
