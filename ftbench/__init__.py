"""ftbench: a matched baseline vs Free Transformer benchmark."""

__version__ = "0.1.0"
