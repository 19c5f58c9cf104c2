"""Results as tidy tables (pandas): one row per (run, seed, arm, κ, task, metric, Z protocol),
and the per-item outcomes beside them for paired analyses.

`step` and `tokens` say where in training the weights were taken: the final export (its
last step, `snapshot` False) or an evaluation snapshot (`ftbench eval --snapshots`,
results in <arm>/snapshots/step-NNNNNN/, `snapshot` True).

The report's score tables are read from this frame, and `ftbench report` writes it as
results.csv, so the numbers a researcher loads are the report's numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ftbench.evaluation.results import ResultsError, read_result, training_point
from ftbench.report.collect import HEADLINE, ArmResults, ReportError, collect

# Column -> pandas dtype. Nullable dtypes, so that a missing value (a baseline's κ, a run
# without --limit) survives CSV, Parquet and JSON alike.
RESULT_COLUMNS = {
    "run": "string", "arm": "string", "arch": "string", "kappa_bits": "float64",
    "seed": "Int64", "fewshot_seed": "Int64", "replica": "boolean",
    "snapshot": "boolean", "step": "Int64", "tokens": "Int64",
    "suite": "string", "task": "string", "metric": "string", "headline_metric": "boolean",
    "z_protocol": "string", "headline_protocol": "boolean",
    "value": "float64", "stderr": "float64", "n_items": "Int64",
    "z_draws": "Int64", "n_samples": "Int64", "z_seed": "Int64", "limit": "Int64",
    "data_version": "string", "weights_sha256": "string", "harness": "string",
    "task_version": "string", "schema_version": "Int64", "created": "string",
}
ITEM_COLUMNS = {
    "run": "string", "arm": "string", "arch": "string", "kappa_bits": "float64",
    "seed": "Int64", "fewshot_seed": "Int64", "replica": "boolean",
    "snapshot": "boolean", "step": "Int64", "tokens": "Int64", "task": "string",
    "metric": "string", "z_protocol": "string", "headline_protocol": "boolean",
    "item": "string", "outcome": "float64",
}
FORMATS = ("csv", "parquet", "json", "md")


def results_frame(runs: list[str], results_root: Path | str = "results",
                  models_root: Path | str = "models", snapshots: bool = True):
    """Every score of the runs' results files as one tidy pandas DataFrame.

    Rows: (run, seed, arm, κ, step, task, metric, Z protocol); a Free arm's log-likelihood
    task scored under both Z protocols has a row per protocol (`headline_protocol` marks
    the one the report leads with). `replica` rows come from <arm>/seed<N>/ (other eval
    seeds); `snapshot` rows from <arm>/snapshots/step-NNNNNN/ (snapshots=False leaves them
    out). `step` and `tokens`: the training step and tokens seen of the weights scored."""
    arms, snaps = _collect(runs, results_root, snapshots)
    return frame_from_arms(arms, Path(models_root), snaps)


def items_frame(runs: list[str], results_root: Path | str = "results",
                models_root: Path | str = "models", snapshots: bool = True):
    """Per-item outcomes (one row per item, metric, Z protocol and step) for paired
    analyses: pivot on `item` to compare two arms on the same items."""
    arms, snaps = _collect(runs, results_root, snapshots)
    return items_from_arms(arms, Path(models_root), snaps)


@dataclass
class SnapshotResults:
    """The results of one evaluation snapshot of an arm (results/<run>/<arm>/snapshots/
    step-NNNNNN/), shaped like ArmResults."""
    run: str
    arm: str
    step: int
    results: dict[str, dict] = field(default_factory=dict)
    replicas: dict[str, list[dict]] = field(default_factory=dict)


def _read(path: Path) -> dict:
    try:
        return read_result(path)
    except ResultsError as e:
        raise ReportError(str(e)) from None


def collect_snapshots(results_root: Path | str, runs: list[str]) -> list[SnapshotResults]:
    """Every evaluated snapshot of the runs, by run, arm and step."""
    found = []
    for run in runs:
        run_dir = Path(results_root) / run
        if not run_dir.is_dir():
            continue
        for arm_dir in sorted(p for p in run_dir.iterdir() if (p / "snapshots").is_dir()):
            for step_dir in sorted((arm_dir / "snapshots").glob("step-*")):
                if not step_dir.is_dir() or not step_dir.name[5:].isdigit():
                    continue
                snap = SnapshotResults(run, arm_dir.name, int(step_dir.name[5:]))
                for path in sorted(step_dir.glob("*.json")):
                    if not path.name.endswith(".sandbox.json"):
                        r = _read(path)
                        snap.results[r["task"]] = r
                for path in sorted(step_dir.glob("seed*/*.json")):
                    if not path.name.endswith(".sandbox.json"):
                        r = _read(path)
                        snap.replicas.setdefault(r["task"], []).append(r)
                if snap.results:
                    found.append(snap)
    return found


def _collect(runs: list[str], results_root: Path | str, snapshots: bool = False):
    if not runs:
        raise ReportError("name at least one run (a folder under the results root)")
    snaps = collect_snapshots(results_root, list(runs)) if snapshots else []
    try:
        arms = collect(Path(results_root), list(runs))
    except ReportError:
        if not snaps:
            raise
        arms = []  # snapshots evaluated while the arms are still training
    return arms, snaps


def _files(arms: list[ArmResults], snaps: list[SnapshotResults] | None = None):
    """(arm or snapshot, result, is_replica) for every results file, one schema version
    throughout."""
    found = []
    for group in (arms, snaps or []):
        found += [(a, r, False) for a in group for r in a.results.values()]
        found += [(a, r, True) for a in group for reps in a.replicas.values() for r in reps]
    # Schema 3 added blocks (truncation counts, prompt hashes, EvalPlus deviations, the
    # timed decode workload) but no column of this frame: 2 and 3 mix.
    columns = {1: 1, 2: 2, 3: 2}
    versions = sorted({columns.get(r["schema_version"], r["schema_version"])
                       for _, r, _ in found})
    if len(versions) > 1:
        old = sorted({f"{a.run}/{a.arm}/{r['task']}" for a, r, _ in found
                      if columns.get(r["schema_version"]) == versions[0]})
        raise ReportError(f"the results mix schema versions {versions} ({len(old)} files at "
                          f"{versions[0]}, e.g. {old[0]}): re-run `ftbench eval` on those "
                          "arms so that every file has the same columns")
    return found


def data_version(data: dict) -> str:
    """A short hash of the data files a result was scored on (their sha256 and mode)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _arm_meta(models_root: Path | None, arm, cache: dict) -> dict:
    """The arm's exported config.json ({} where the models live elsewhere: κ and the final
    step unknown, scores still listed)."""
    key = (arm.run, arm.arm)
    if models_root is None:
        return {}
    if key not in cache:
        cfg = models_root / arm.run / arm.arm / "config.json"
        try:
            cache[key] = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            cache[key] = {}
    return cache[key]


def _training_point(a, r: dict, meta: dict) -> dict:
    """snapshot, step and tokens of a result: recorded in it (results written by this
    ftbench), else, for a final export, the exported arm's last step."""
    model = r["model"]
    snapshot = isinstance(a, SnapshotResults)
    if "step" in model:
        return {"snapshot": snapshot, "step": model.get("step"), "tokens": model.get("tokens")}
    if snapshot:
        return {"snapshot": True, "step": a.step, "tokens": None}
    point = training_point(Path(model.get("path") or "."), meta) if meta else {}
    return {"snapshot": False, "step": point.get("step"), "tokens": point.get("tokens")}


def _protocol_blocks(r: dict):
    """(Z protocol, is headline, metrics, per_item): the top-level block, then the others."""
    headline = r["protocol"].get("z_protocol")
    yield headline, True, r["metrics"], r["per_item"]
    for name, block in (r.get("protocols") or {}).items():
        if name != headline:
            yield name, False, block["metrics"], block["per_item"]


def _number(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")  # lm-eval writes "N/A" for a stderr it cannot compute


def _identity(a: ArmResults, r: dict, replica: bool, meta: dict) -> dict:
    return {"run": a.run, "arm": a.arm, "arch": r["protocol"].get("arch"),
            "kappa_bits": meta.get("kappa_bits"), "seed": r["seed"],
            "fewshot_seed": r.get("fewshot_seed", 0), "replica": replica,
            **_training_point(a, r, meta)}


def frame_from_arms(arms: list[ArmResults], models_root: Path | None = None,
                    snapshots: list[SnapshotResults] | None = None):
    """The rows of results_frame from collected arms and snapshots (models_root: where κ
    and the final step are read from)."""
    import pandas as pd

    rows, metas = [], {}
    for a, r, replica in _files(arms, snapshots):
        ident = _identity(a, r, replica, _arm_meta(models_root, a, metas))
        p = r["protocol"]
        for z, is_headline, metrics, _ in _protocol_blocks(r):
            for metric, m in metrics.items():
                rows.append({**ident, "suite": r["suite"], "task": r["task"], "metric": metric,
                             "headline_metric": HEADLINE.get(r["task"]) == metric,
                             "z_protocol": z, "headline_protocol": is_headline,
                             "value": _number(m["value"]), "stderr": _number(m["stderr"]),
                             "n_items": r["n_items"] if is_headline else
                             r["protocols"][z].get("n_items", r["n_items"]),
                             "z_draws": p.get("z_draws"),
                             "n_samples": p.get("z_samples", p.get("n_samples")),
                             "z_seed": p.get("z_seed"), "limit": r["limit"],
                             "data_version": data_version(r["data"]),
                             "weights_sha256": r["model"].get("weights_sha256"),
                             "harness": r["harness"], "task_version": r.get("task_version"),
                             "schema_version": r["schema_version"], "created": r["created"]})
    return _typed(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), RESULT_COLUMNS)


def items_from_arms(arms: list[ArmResults], models_root: Path | None = None,
                    snapshots: list[SnapshotResults] | None = None):
    """MMLU-style per-subject outcomes ("<subject>/<metric>") are pooled under the metric,
    as "<subject>:<doc>" items, the same ids the report pairs on."""
    import pandas as pd

    rows, metas = [], {}
    for a, r, replica in _files(arms, snapshots):
        ident = _identity(a, r, replica, _arm_meta(models_root, a, metas))
        for z, is_headline, _, per_item in _protocol_blocks(r):
            for key, outcomes in per_item.items():
                subject, metric = key.split("/", 1) if "/" in key else (None, key)
                if subject is not None and metric in per_item:
                    continue  # the pooled metric is stored as well: keep it once
                for doc, outcome in outcomes.items():
                    rows.append({**ident, "task": r["task"], "metric": metric, "z_protocol": z,
                                 "headline_protocol": is_headline,
                                 "item": f"{subject}:{doc}" if subject else str(doc),
                                 "outcome": _number(outcome)})
    return _typed(pd.DataFrame(rows, columns=list(ITEM_COLUMNS)), ITEM_COLUMNS)


def _typed(df, columns: dict):
    return df.astype(columns)


def headline_scores(frame) -> dict[tuple[str, str, str], float]:
    """(run, arm, task) -> the headline score of the arm's main results file (the final
    export's, not a snapshot's)."""
    sel = frame[frame["headline_metric"] & frame["headline_protocol"] & ~frame["replica"]
                & ~frame["snapshot"]]
    return {(r.run, r.arm, r.task): float(r.value) for r in sel.itertuples()}


def headline_replicas(frame) -> dict[tuple[str, str, str], list[tuple[int, int, float]]]:
    """(run, arm, task) -> [(seed, fewshot seed, headline score)], main file first (the
    final export's results, not a snapshot's)."""
    sel = frame[frame["headline_metric"] & frame["headline_protocol"] & ~frame["snapshot"]]
    out: dict = {}
    for r in sel.sort_values("replica", kind="stable").itertuples():
        out.setdefault((r.run, r.arm, r.task), []).append(
            (int(r.seed), int(r.fewshot_seed), float(r.value)))
    return out


def frame_bytes(df, fmt: str) -> bytes:
    """The frame in one of FORMATS; read it back with read_frame."""
    if fmt == "csv":
        return df.to_csv(index=False).encode()
    if fmt == "json":
        return df.to_json(orient="records", indent=1).encode()
    if fmt == "md":
        return markdown_table(df).encode()
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ReportError("--format parquet needs pyarrow: pip install pyarrow") from None
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    raise ReportError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")


def write_frame(df, path: Path, fmt: str | None = None) -> Path:
    """Atomically write the frame; the format defaults to the file's suffix."""
    from ftbench.report.render import write_atomic

    fmt = fmt or Path(path).suffix.lstrip(".")
    return write_atomic(Path(path), frame_bytes(df, fmt))


def read_frame(path: Path | str, items: bool = False):
    """A frame written by write_frame (csv, parquet or json), with its column types."""
    import pandas as pd

    columns = ITEM_COLUMNS if items else RESULT_COLUMNS
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt == "csv":
        df = pd.read_csv(path, dtype={c: t for c, t in columns.items() if t == "string"},
                         keep_default_na=True)
    elif fmt == "parquet":
        df = pd.read_parquet(path)
    elif fmt == "json":
        df = pd.read_json(path, orient="records", dtype=False)
        if df.empty:
            df = pd.DataFrame(columns=list(columns))
    else:
        raise ReportError(f"{path}: read csv, parquet or json files")
    return _typed(df, columns)


def markdown_table(df) -> str:
    import pandas as pd

    def cell(x) -> str:
        if pd.isna(x):
            return ""
        return f"{x:.6g}" if isinstance(x, float) else str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
