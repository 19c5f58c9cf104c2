"""Evaluation: leak-free scoring for both architectures, harness adapters."""
