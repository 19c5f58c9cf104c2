"""`ftbench data ...`: build, check and inspect a run's token shards (thin wrappers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(
    help="Prepare a run's training data ahead of training, verify it, trace tokens to their "
         "documents, measure benchmark contamination, and build an offline data mirror.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _config(config, size, overrides, data_dir):
    from ftbench.api import resolve_pair_config
    from ftbench.model.config import ConfigError

    try:
        return resolve_pair_config(config, size, list(overrides), data_dir)
    except ConfigError as e:
        _fail(str(e))


_CONFIG = typer.Option(None, "--config", "-c", help="Pair config YAML (see configs/).")
_SIZE = typer.Option(None, "--size", "-s", help="Shorthand for --config configs/<size>.yaml.")
_SET = typer.Option([], "--set", help="Override a config field, e.g. --set data.train_tokens=1e9. "
                                      "Repeatable.")
_DATA_DIR = typer.Option(None, "--data-dir", help="Local data mirror (offline; default "
                                                  "$FTBENCH_DATA_DIR, else online).")


def _prepared(config, size, overrides, data_dir):
    from ftbench.data.errors import DataError
    from ftbench.data.pipeline import open_prepared, prepared_directory

    cfg = _config(config, size, overrides, data_dir)
    directory = prepared_directory(cfg)
    try:
        prepared = open_prepared(directory)
    except DataError as e:
        _fail(str(e))
    if prepared is None:
        _fail(f"no complete data in {directory}; run `ftbench data prepare` with the same "
              "config first")
    return cfg, prepared


@data_app.command()
def prepare(
    config: Optional[Path] = _CONFIG, size: Optional[str] = _SIZE,
    overrides: list[str] = _SET, data_dir: Optional[Path] = _DATA_DIR,
    workers: int = typer.Option(0, "--workers", "-w", help="Tokeniser processes (default: up "
                                "to 4 of this machine's cores). The output is byte-identical "
                                "for any number."),
) -> None:
    """Build a run's tokenizer and token shards ahead of training.

    Sources stream in units (bounded memory); each source contributes its weight's share of
    the run's training tokens (data.train_tokens, or exactly what the run reads). The output
    goes to models/<run>/data/<key>/, where train-pair finds it. A killed build keeps its
    complete parts and continues from them when rerun.
    """
    from ftbench.data.errors import DataError
    from ftbench.data.pipeline import prepare_for_run

    cfg = _config(config, size, overrides, data_dir)
    try:
        prepared = prepare_for_run(cfg, workers=workers or None)
    except DataError as e:
        _fail(str(e))
    idx = prepared.meta
    typer.echo(f"{prepared.directory}: {idx['train']['tokens']:,} training tokens in "
               f"{len(idx['train']['shards'])} shards, {idx['val']['tokens']:,} validation")
    for s in idx["sources"]:
        typer.echo(f"  {s['label']:48s} {s['tokens']:>14,} tokens  {s['docs']:>10,} docs")


@data_app.command(short_help="Check every shard against its size and sha256.")
def verify(
    config: Optional[Path] = _CONFIG, size: Optional[str] = _SIZE,
    overrides: list[str] = _SET, data_dir: Optional[Path] = _DATA_DIR,
) -> None:
    """Check every shard of a run's prepared data against its recorded size and sha256."""
    from ftbench.data.shards import verify_shards

    _, prepared = _prepared(config, size, overrides, data_dir)
    problems = verify_shards(prepared.directory, prepared.meta)
    for p in problems:
        typer.secho(f"corrupt: {p}", fg=typer.colors.RED, err=True)
    if problems:
        _fail(f"{len(problems)} shard(s) damaged; delete them and rerun `ftbench data "
              "prepare` (the intact parts are kept)", code=1)
    typer.echo(f"ok: {sum(len(prepared.meta[s]['shards']) for s in ('train', 'val'))} shards "
               "match their recorded sizes and hashes")


@data_app.command()
def trace(
    token: int = typer.Argument(..., help="Global index of a training token."),
    config: Optional[Path] = _CONFIG, size: Optional[str] = _SIZE,
    overrides: list[str] = _SET, data_dir: Optional[Path] = _DATA_DIR,
) -> None:
    """Which source and document a training token comes from."""
    from ftbench.data.shards import trace_token

    _, prepared = _prepared(config, size, overrides, data_dir)
    if not 0 <= token < len(prepared.train):
        _fail(f"token {token} is outside 0..{len(prepared.train) - 1}")
    typer.echo(json.dumps(trace_token(prepared.directory, prepared.meta, prepared.train, token)))


@data_app.command(short_help="13-gram overlap of training text with benchmarks.")
def contamination(
    config: Optional[Path] = _CONFIG, size: Optional[str] = _SIZE,
    overrides: list[str] = _SET, data_dir: Optional[Path] = _DATA_DIR,
    max_tokens: float = typer.Option(0, "--max-tokens", help="Scan only this many training "
                                     "tokens, spread over every shard (0: all)."),
) -> None:
    """13-gram overlap between a run's training text and every benchmark's items.

    Writes the share of contaminated items per benchmark (HumanEval+, MBPP+, GSM8K test,
    MMLU test, CommonsenseQA validation) to models/<run>/data/<key>/contamination.json;
    `ftbench report` shows it.
    """
    from ftbench.data.contamination import measure
    from ftbench.data.errors import DataError
    from ftbench.data.mirror import resolve_data_dir

    cfg, prepared = _prepared(config, size, overrides, data_dir)
    try:
        out = measure(prepared, resolve_data_dir(cfg.data.data_dir), int(max_tokens))
    except DataError as e:
        _fail(str(e))
    for name, b in out["benchmarks"].items():
        typer.echo(f"  {name:16s} {b['contaminated']:>6,} / {b['items']:<6,} items "
                   f"({b['share']:.2%})")


@data_app.command(short_help="Download and verify the data mirror.")
def mirror(
    directory: Path = typer.Argument(..., help="Folder to make a complete data mirror "
                                     "(created if missing; what it holds already is checked "
                                     "and kept)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Fetch every file as "
                                           "<URL>/<path> from a mirror laid out the same way, "
                                           "instead of from the public origins (default "
                                           "$FTBENCH_MIRROR_URL)."),
    only: list[str] = typer.Option([], "--only", help="Build only the files whose path "
                                   "starts with this, e.g. --only corpus/ (then no "
                                   "SHA256SUMS, which marks a complete mirror). Repeatable."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Download and verify the data mirror (benchmarks and the training corpus).

    Every file comes from its public origin at a pinned version (raw files of the source
    repositories, an upstream archive, a Debian package), or is rebuilt from upstream texts
    by the recorded procedure, and is checked against the sha256 in the manifest shipped with
    ftbench. A download that breaks continues from its .part file when rerun; a corrupt file
    is refused. A complete mirror is verified and left as it is. Writes SHA256SUMS.
    """
    from ftbench.data.errors import DataError
    from ftbench.data.mirror_build import build_mirror

    try:
        out = build_mirror(directory, base_url=base_url, progress=not quiet,
                           only=list(only) or None,
                           log=lambda m: typer.echo(m, err=True))
    except DataError as e:
        _fail(" ".join(str(e).split()))
    except OSError as e:
        _fail(f"cannot write the mirror in {directory}: {e}")
    what = "complete" if out["sums"] else "the files asked for are complete"
    typer.echo(f"{directory}: {what}, {out['files']} files verified ({out['fetched']} fetched, "
               f"{out['kept']} already present)" + ("; SHA256SUMS written" if out["sums"] else
                                                    ""))
