"""lm-eval's own command line, with the "ftbench" model registered."""

import ftbench.evaluation.lm_eval_adapter  # noqa: F401  (registers --model ftbench)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
