"""Diagnostics computed from a model or its outputs (not from results files)."""
