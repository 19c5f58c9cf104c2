"""Token budgets: what a run consumes, what the data holds, and the repetition guard.

A run consumes run.steps x run.batch_size windows of seq_len + 1 tokens; consecutive
windows share one token, so it reads steps x batch x seq_len + 1 tokens once per epoch.
The data config prepares data.train_tokens unique tokens (0: exactly that many), split
over the sources by weight, in tokens.
"""

from __future__ import annotations

from ftbench.config.schema import DataConfig, PairConfig
from ftbench.data.errors import DataError
from ftbench.data.units import source_label


def needed_tokens(cfg: PairConfig) -> int:
    return cfg.run.steps * cfg.run.batch_size * cfg.data.seq_len + 1


def planned_tokens(cfg: PairConfig) -> int:
    return cfg.data.train_tokens or needed_tokens(cfg)


def quotas(data: DataConfig, planned: int) -> list[int]:
    """Training tokens per source: shares of `planned` by weight, summing to it exactly."""
    total = sum(s.weight for s in data.sources)
    out = [int(planned * s.weight / total) for s in data.sources]
    out[-1] += planned - sum(out)
    return out


def epochs(cfg: PairConfig, unique_tokens: int) -> float:
    """How many times the run reads its data (the sampler's windows of seq_len + 1)."""
    windows = max(0, (unique_tokens - 1) // cfg.data.seq_len)
    return float("inf") if windows == 0 else cfg.run.steps * cfg.run.batch_size / windows


def check_repetition(cfg: PairConfig, unique_tokens: int, what: str = "holds") -> float:
    """The epoch count, or a DataError that says how to fix a run that repeats too much."""
    e = epochs(cfg, unique_tokens)
    if e > cfg.data.max_epochs + 1e-9:
        need = needed_tokens(cfg)
        raise DataError(
            f"the run reads {need:,} training tokens (run.steps {cfg.run.steps} x batch "
            f"{cfg.run.batch_size} x seq_len {cfg.data.seq_len}) but the data {what} "
            f"{unique_tokens:,} unique tokens: {e:.2f} epochs, over data.max_epochs="
            f"{cfg.data.max_epochs}. Prepare more data (--set data.train_tokens={need}, or 0 "
            f"for exactly what the run needs), train fewer steps, or allow the repetition "
            f"with --set data.max_epochs={e:.2f}")
    return e


def plan_figures(cfg: PairConfig, index: dict | None = None) -> dict:
    """The budget as --dry-run shows it: before preparation from the config (and the
    sources' declared sizes), after it from the prepared index."""
    need, planned = needed_tokens(cfg), planned_tokens(cfg)
    q = quotas(cfg.data, planned)
    rows = []
    for i, (src, quota) in enumerate(zip(cfg.data.sources, q)):
        row = {"source": source_label(src, i), "weight": src.weight, "quota_tokens": quota}
        if src.tokens_available:
            row["tokens_available"] = int(src.tokens_available)
            row["source_epochs"] = quota / src.tokens_available
        if src.docs_available and src.tokens_available:
            row["docs_estimated"] = int(src.docs_available * min(1.0, quota /
                                                                 src.tokens_available))
        if index is not None:
            got = index["sources"][i]
            row.update(prepared_tokens=got["tokens"], docs=got["docs"],
                       val_tokens=got["val_tokens"])
        rows.append(row)
    unique = index["train"]["tokens"] if index is not None else planned
    out = {"tokens_needed": need, "tokens_planned": planned,
           "tokens_prepared": index["train"]["tokens"] if index is not None else None,
           "epochs": epochs(cfg, unique), "max_epochs": cfg.data.max_epochs,
           "sources": rows, "warnings": []}
    for row in rows:
        if row.get("source_epochs", 0) > 1:
            out["warnings"].append(
                f"source {row['source']}: its share is {row['quota_tokens']:,} tokens but its "
                f"dataset card states {row['tokens_available']:,}: it would run out. Lower its "
                "weight or use a larger dataset.")
    if out["epochs"] > cfg.data.max_epochs + 1e-9:
        out["warnings"].append(f"{out['epochs']:.2f} epochs > data.max_epochs="
                               f"{cfg.data.max_epochs}: train-pair will refuse to start")
    return out
