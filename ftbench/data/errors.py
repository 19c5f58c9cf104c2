class DataError(RuntimeError):
    """Data cannot be read as configured; the message says what and how to fix it."""
