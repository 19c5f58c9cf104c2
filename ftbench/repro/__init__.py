"""Reproductions of the paper's experiments as scientific regression checks.

`ftbench repro synthetic` (ftbench.repro.synthetic): the toy task of the paper's
section 4.1, Fig. 4. Reports read its measures.json (ftbench.repro.report).
"""
