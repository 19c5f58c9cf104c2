"""lm-eval's own command line, with the "ftbench" model registered beside lm-eval's models.

    python -m ftbench.evaluation.lm_eval_main --model ftbench \
        --model_args path=models/toy/baseline --tasks ...
    python -m ftbench.evaluation.lm_eval_main --model hf --model_args pretrained=OUT ...
"""

from __future__ import annotations

import sys

# Before the adapter: lm-eval adds its own models only to an empty registry (see
# lm_eval_adapter), so they must be in it before "ftbench" is.
import lm_eval.models  # noqa: F401
import ftbench.evaluation.lm_eval_adapter  # noqa: F401,E402  (registers --model ftbench)
from lm_eval.__main__ import cli_evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI; argv (without the program name) replaces sys.argv's arguments,
    which lm-eval's parser reads (and edits) directly."""
    if argv is None:
        cli_evaluate()
        return
    saved = sys.argv
    sys.argv = [saved[0] if saved else "lm_eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
