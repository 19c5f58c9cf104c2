"""The report's contamination section, from `ftbench data contamination`'s files."""

from __future__ import annotations

import json
from pathlib import Path

from ftbench.report.document import Block, Heading, Paragraph, Table

BENCHMARK_NAMES = {"humanevalplus": "HumanEval+", "mbppplus": "MBPP+", "gsm8k": "GSM8K test",
                   "mmlu": "MMLU test", "commonsense_qa": "CommonsenseQA validation"}


def _data_keys(models_root: Path, run: str) -> set[str]:
    """The data keys the run's exported arms were trained on."""
    keys = set()
    for cfg in (models_root / run).glob("*/config.json"):
        try:
            key = json.loads(cfg.read_text()).get("data_key")
        except (OSError, json.JSONDecodeError):
            continue
        if key:
            keys.add(key)
    return keys


def contamination_blocks(models_root: Path, runs: list[str]) -> list[Block]:
    """A table per run of the share of benchmark items with a 13-gram in the training text;
    a note naming the command when a run has not been measured."""
    rows, unmeasured = [], []
    for run in runs:
        keys = _data_keys(models_root, run)
        found = sorted(p for p in (models_root / run / "data").glob("*/contamination.json")
                       if not keys or p.parent.name in keys)
        if not found:
            if (models_root / run).is_dir():
                unmeasured.append(run)
            continue
        for path in found:
            c = json.loads(path.read_text())
            scanned = f"{c['fraction_scanned']:.0%} of {c['training_tokens']:,}"
            for name, b in c["benchmarks"].items():
                rows.append([run, BENCHMARK_NAMES.get(name, name),
                             f"{b['contaminated']:,} / {b['items']:,}", f"{b['share']:.2%}",
                             scanned])
    if not rows and not unmeasured:
        return []
    blocks: list[Block] = [Heading("Training-data contamination"), Paragraph(
        "Share of each benchmark's items with any 13-word n-gram in the prepared training "
        "text (lower-cased, punctuation and spacing collapsed; an item under 13 words counts "
        "when it occurs whole). Both arms read the same data, so contamination does not bias "
        "the paired gain; it changes what an absolute score means.")]
    if rows:
        blocks.append(Table(["run", "benchmark", "items with overlap", "share",
                             "training tokens scanned"], rows))
    if unmeasured:
        blocks.append(Paragraph(
            "Not measured for " + ", ".join(f"`{r}`" for r in unmeasured) + ": run `ftbench "
            "data contamination --config models/<run>/pair.yaml` (with the run's --data-dir)."))
    return blocks
