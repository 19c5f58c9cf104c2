"""Conversions to other ecosystems (Hugging Face transformers). """
