"""ftbench: a matched baseline vs Free Transformer benchmark."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import ftbench` (and so `ftbench --help`) must not pay for pandas.
    if name in ("results_frame", "items_frame"):
        from ftbench.report import frame

        return getattr(frame, name)
    raise AttributeError(f"module 'ftbench' has no attribute {name!r}")
