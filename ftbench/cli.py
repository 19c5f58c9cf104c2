"""The `ftbench` command line: thin wrappers over ftbench.api."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

# Nothing here imports torch at module level (ftbench.model does, through its package):
# `ftbench --help` and `--version` would otherwise spend seconds loading it.

app = typer.Typer(
    name="ftbench",
    help="Does the Free Transformer beat a matched standard decoder on code, math and QA "
         "at your scale, and at what cost?\n\nTypical flow: `ftbench info --size toy`, "
         "`ftbench train-pair --size toy`, `ftbench eval models/toy --suite code,math,qa` "
         "(a run folder: all its arms), `ftbench report toy`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click rewraps docstrings; markdown would eat <placeholders>
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from ftbench import __version__

        typer.echo(f"ftbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Does the Free Transformer beat a matched standard decoder on code, math and QA at
    your scale, and at what cost?"""


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


@app.command(short_help="Parameters, FLOPs per token and the Free model's overhead.")
def info(
    trained: Optional[Path] = typer.Argument(
        None, help="A trained run folder (models/<run>) or arm: count the model it holds."),
    size: Optional[str] = typer.Option(
        None, "--size", "-s", help="What `train-pair --size NAME` trains: configs/NAME.yaml "
                                   "(its tokenizer's vocabulary and data.seq_len), else the "
                                   "preset (see `ftbench presets`)."),
    vocab: Optional[int] = typer.Option(
        None, "--vocab", help="Vocabulary size to assume instead (the embedding and output "
                              "head scale with it)."),
    seq_len: Optional[int] = typer.Option(
        None, help="Sequence length for the attention FLOPs (default: the run's data.seq_len, "
                   "else the preset's max_seq_len)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Parameters, FLOPs per token and the Free model's overhead, for a size or a trained run.

    The vocabulary and sequence length used are printed with where they come from; with
    the same ones, these are the numbers of the report's overhead table. Nothing is
    allocated: models are built on the meta device.
    """
    from ftbench.api import model_info
    from ftbench.model.config import ConfigError

    try:
        data = model_info(size, seq_len, vocab_size=vocab, trained=trained)
    except ConfigError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    b, f, o = data["baseline"], data["free"], data["free_overhead"]
    typer.echo(f"{'run' if trained is not None else 'preset'} {data['size']}: vocabulary "
               f"{data['vocab_size']:,} ({data['vocab_from']}); sequence length "
               f"{data['seq_len']:,} for attention FLOPs ({data['seq_len_from']})")
    rows = [
        ("parameters, total", b["params_total"], f["params_total"], o["params_total"]),
        ("  without post-sampler", b["params_total"],
         f["params_total"] - f["params_post_sampler"], o["params_without_post_sampler"]),
        ("  encoder (block, zeta, readout)", 0, f["params_encoder"], None),
        ("  post-sampler W_post (2^H x D)", 0, f["params_post_sampler"], None),
        ("training FLOPs / token", b["train_flops_per_token"], f["train_flops_per_token"],
         o["train_flops"]),
        ("forward (prefill) FLOPs / token", b["forward_flops_per_token"],
         f["forward_flops_per_token"], o["forward_flops"]),
        ("decode FLOPs / token", b["decode_flops_per_token"], f["decode_flops_per_token"],
         o["decode_flops"]),
    ]
    typer.echo(f"{'':34s}{'baseline':>12s}{'free':>12s}{'overhead':>11s}")
    for label, bv, fv, ov in rows:
        ov_s = "" if ov is None else f"{100 * ov:+.2f}%"
        typer.echo(f"{label:34s}{_human(bv):>12s}{_human(fv):>12s}{ov_s:>11s}")


@app.command()
def presets() -> None:
    """List the size presets with their shapes and parameter counts.

    The vocabulary is the one `train-pair --size NAME` trains (configs/NAME.yaml's
    tokenizer; else the preset's), so the counts are `ftbench info --size NAME`'s.
    """
    from ftbench.api import planned_model
    from ftbench.model.accounting import model_cost
    from ftbench.model.presets import PRESETS

    typer.echo(f"{'name':6s}{'layers':>7s}{'D':>6s}{'heads':>7s}{'FFN':>7s}{'vocab':>8s}"
               f"{'H':>4s}{'baseline':>10s}{'free':>10s}")
    notes = []
    for name in PRESETS:
        cfg, _, vocab_from, _, _ = planned_model(name)
        b, f = model_cost(cfg, "baseline"), model_cost(cfg, "free")
        mark = "" if vocab_from.startswith("data.tokenizer") else "*"
        if mark:
            notes.append(name)
        typer.echo(f"{name:6s}{cfg.n_layers:>7d}{cfg.d_model:>6d}"
                   f"{f'{cfg.n_heads}/{cfg.n_kv_heads}':>7s}{cfg.ffn_hidden:>7d}"
                   f"{f'{cfg.vocab_size}{mark}':>8s}{cfg.latent_bits:>4d}"
                   f"{_human(b.params_total):>10s}{_human(f.params_total):>10s}")
    typer.echo("vocab: the tokenizer size set in configs/<name>.yaml"
               + (f"; * the preset's ({', '.join(notes)}: no BPE size in a config)"
                  if notes else ""))


@app.command("train-pair")
def train_pair(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Pair config YAML (see configs/)."),
    size: Optional[str] = typer.Option(
        None, "--size", "-s", help="Shorthand for --config configs/<size>.yaml."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field with a dotted key, e.g. --set optim.lr=1e-3. "
                          "Repeatable."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Local data mirror, laid out as in docs/data-mirror.md (offline mode; "
                                 "default $FTBENCH_DATA_DIR, else online)."),
    dry: bool = typer.Option(False, "--dry-run", help="Print the resolved config, the data "
                             "budget (tokens needed, planned or prepared, epochs, per source), "
                             "parameters, FLOPs and memory per arm; train nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: machine-readable JSON."),
    world_size: int = typer.Option(1, "--world-size", help="With --dry-run: ranks the memory "
                                   "plan assumes (FSDP2 shards weights, grads and AdamW)."),
    device_memory: Optional[str] = typer.Option(
        None, "--device-memory", help="Memory per device, e.g. 80GB (default: a GPU's own; "
                                      "CPU runs are not checked without it). Training stops "
                                      "with exit 2 before any work when an arm's planned peak "
                                      "exceeds it, naming a run.grad_accum that fits. With "
                                      "--dry-run (which plans for a GPU): whether each arm "
                                      "fits, the largest micro-batch that does and how many "
                                      "GPUs a 1-sequence micro-batch needs; exit 2 if one "
                                      "does not fit."),
    gpu: str = typer.Option("h100", "--gpu", help="With --dry-run: the GPU (h100, h200, a100, "
                            "...) whose datasheet bf16 peak the GPU-hour estimate uses."),
    mfu: Optional[float] = typer.Option(
        None, "--mfu", help="With --dry-run: the model-FLOPs utilisation the GPU-hour "
                            "estimate assumes (default: the rehearsal's roofline figure "
                            "for the ladder's sizes on an H100, else 0.40, what the 1.5B "
                            "recipe reaches)."),
) -> None:
    """Train a matched baseline/Free pair from one config.

    Every arm (the baseline, one Free model per kappa in latent.kappas_bits, and optionally
    an (L+1)-layer control) shares the tokenizer, the data order and the initial decoder
    weights. Outputs: models/<run>/<arm>/ (model.safetensors, config.json, tokenizer.json,
    metrics.jsonl). Running the same command again resumes from the newest complete
    checkpoint. A run that would repeat its data more than data.max_epochs refuses to
    start, and so does one whose memory plan does not fit the GPU (--device-memory).
    Missing token shards are built first; for large corpora build them ahead with
    `ftbench data prepare --workers N`. For several processes or GPUs launch with torchrun,
    e.g. `torchrun --nproc_per_node=8 -m ftbench train-pair --size 1.5b`.
    """
    from ftbench.api import resolve_pair_config
    from ftbench.model.config import ConfigError

    try:
        cfg = resolve_pair_config(config, size, list(overrides), data_dir)
    except ConfigError as e:
        _fail(str(e))
    if device_memory is not None:
        from ftbench.training.memory_plan import parse_memory

        try:
            parse_memory(device_memory)
        except ValueError as e:
            _fail(f"--device-memory: {e}")
    if dry:
        from ftbench.config.loader import dump_pair_config
        from ftbench.data.errors import DataError
        from ftbench.training.pair import dry_run

        try:
            info = dry_run(cfg, world_size=world_size, device_memory=device_memory)
        except (DataError, ValueError) as e:
            _fail(str(e))
        from ftbench.training.memory_plan import (compute_plan, format_compute_plan,
                                                  format_memory_plan, refusal_lines, run_fits)

        try:
            info["compute_plan"] = compute_plan(cfg, info, gpu=gpu, world_size=world_size,
                                                mfu=mfu)
        except ValueError as e:
            _fail(f"--gpu/--mfu: {e}")
        too_big = run_fits(info["memory_plan"])
        if as_json:
            typer.echo(json.dumps(info, indent=2, default=str))
            if too_big:
                raise typer.Exit(2)
            return
        typer.echo(dump_pair_config(cfg))
        _echo_budget(info["data"])
        typer.echo(f"tokens per step {info['tokens_per_step']:,}; vocab {info['vocab_size']:,} "
                   f"from {info['vocab_from']}")
        for name, a in info["arms"].items():
            typer.echo(f"  {name:18s} params {_human(a['params']):>8s}  train FLOPs/token "
                       f"{_human(a['train_flops_per_token']):>8s}  weights+grads+AdamW "
                       f"{a['state_memory_bytes'] / 2**30:.2f} GiB")
        for line in format_memory_plan(info["memory_plan"]):
            typer.echo(line)
        for line in format_compute_plan(info["compute_plan"]):
            typer.echo(line)
        if too_big:
            _fail("\n".join(refusal_lines(info["memory_plan"], too_big, cfg)))
        return
    from ftbench.api import run_train_pair

    run_train_pair(cfg, fail=_fail, device_memory=device_memory)


def _echo_budget(d: dict) -> None:
    prepared = d["tokens_prepared"]
    typer.echo(f"data: tokens needed {d['tokens_needed']:,} (steps x batch x seq_len + 1); "
               f"planned {d['tokens_planned']:,}; "
               + (f"prepared {prepared:,}" if prepared is not None else "not prepared yet")
               + f"; epochs {d['epochs']:.3f} (limit data.max_epochs={d['max_epochs']})")
    for r in d["sources"]:
        docs = (f"{r['docs']:,} docs" if "docs" in r else
                f"~{r['docs_estimated']:,} docs (estimated)" if "docs_estimated" in r else
                "docs: after `ftbench data prepare`")
        avail = (f", {r['source_epochs']:.2f} of its stated {_human(r['tokens_available'])}"
                 if "tokens_available" in r else "")
        got = f", prepared {r['prepared_tokens']:,}" if "prepared_tokens" in r else ""
        typer.echo(f"  {r['source']:48s} weight {r['weight']:<5g} quota "
                   f"{_human(r['quota_tokens']):>7s} tokens{avail}{got}; {docs}")
    for w in d["warnings"]:
        typer.secho(f"  warning: {w}", fg=typer.colors.YELLOW)


@app.command(short_help="Export a trained arm as a Hugging Face transformers folder.")
def export(
    model_dir: Path = typer.Argument(..., help="An exported arm, e.g. models/toy/baseline."),
    hf: Path = typer.Option(..., "--hf", help="Write the Hugging Face folder here (new or "
                                              "empty)."),
    force: bool = typer.Option(False, "--force", help="Replace a folder that holds an earlier "
                               "Hugging Face export (nothing else is ever replaced)."),
    results: Path = typer.Option(Path("results"), "--results", help="Results root folder: a "
                                 "Free arm's model card lists results/<run>/<arm>/*.json."),
) -> None:
    """Export a trained arm as a Hugging Face folder (config, safetensors, tokenizer) that
    `transformers` loads offline. A baseline becomes a LlamaForCausalLM; a Free arm gets its
    own modeling file and a model card (README.md), and loads with
    AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True), ftbench not needed.
    Its plain forward uses prior Z (the encoder never sees the tokens it scores);
    generate() takes posterior Z over the prompt, as ftbench does.

    The folder is written beside its destination and moved into place when complete, so
    it never mixes files of two exports and a failed export leaves the old one intact.
    """
    from ftbench.api import ExportError, export_hf_atomic
    from ftbench.training.export import ModelLoadError

    try:
        out = export_hf_atomic(model_dir, hf, force=force, results_root=results)
    except (ModelLoadError, ExportError) as e:
        _fail(str(e))
    remote = (out / "modeling_free_transformer.py").is_file()
    typer.echo(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained"
               f"{', trust_remote_code=True' if remote else ''})")


@app.command("eval")
def eval_(
    model_dirs: list[Path] = typer.Argument(
        None, help="Run folders (all their arms), e.g. models/toy, or exported arms, e.g. "
                   "models/toy/baseline; models/toy/* works too (data/ and pair.yaml are "
                   "skipped). Omit with --model oracle."),
    suite: str = typer.Option("code,math,qa", "--suite",
                              help="Suites (code, math, qa) and/or task names (gsm8k, gsm8k_cot, "
                                   "mmlu, commonsense_qa, humanevalplus, mbppplus), comma-separated."),
    limit: Optional[int] = typer.Option(
        None, "--limit", help="Score only the first N items of each task (a smoke test: marked "
                              "in the results and flagged in reports)."),
    z_draws: Optional[int] = typer.Option(
        None, "--z-draws", help="Free models: Z draws per log-likelihood item, shared by its "
                                "choices and combined by log-mean-exp (default 8)."),
    z_protocol: str = typer.Option("posterior", "--z-protocol",
                                   help="Free models, the headline protocol: 'posterior' (the "
                                        "encoder sees the context only, new tokens get prior Z) "
                                        "or 'prior' (uniform Z everywhere)."),
    compare_protocols: bool = typer.Option(
        True, "--compare-protocols/--no-compare-protocols",
        help="Free models, log-likelihood tasks: also score the other Z protocol (from the "
             "same pass over the first half); the report shows both."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Z draws and of token sampling (not "
                             "of the few-shot examples). Seed 0 gives the main results; other "
                             "seeds are replicas kept in <arm>/seed<N>/, whose spread the "
                             "report shows."),
    fewshot_seed: int = typer.Option(0, "--fewshot-seed", help="Seed of the few-shot examples' "
                                     "choice and order, which changes gsm8k's prompts only "
                                     "(mmlu takes its first 5 dev examples, gsm8k_cot has "
                                     "fixed examples, commonsense_qa and the code tasks are "
                                     "zero-shot). Replicas go to <arm>/seed<N>-fewshot<M>/; "
                                     "each result records a hash of its prompts."),
    batch_size: int = typer.Option(8, "--batch-size", help="Contexts (log-likelihood) or "
                                   "sequences (generation) per forward pass."),
    n_samples: Optional[int] = typer.Option(
        None, "--n-samples", help="Generative tasks (GSM8K, HumanEval+, MBPP+): samples per "
                                  "prompt, each with its own Z (default 5 for Free models; 1 "
                                  "for baselines unless --temperature > 0). Mean, its "
                                  "standard error across samples and pass@k are recorded."),
    temperature: float = typer.Option(0.0, "--temperature",
                                      help="Token sampling temperature for generative tasks "
                                           "(0: greedy; Free samples then differ by Z only)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Local data mirror, laid out as in docs/data-mirror.md (offline; default "
                                 "$FTBENCH_DATA_DIR, else the Hugging Face hub)."),
    results: Path = typer.Option(Path("results"), "--results", help="Results root folder."),
    model: Optional[str] = typer.Option(
        None, "--model", help="'oracle': answer with the gold answers through the same code "
                              "paths; must score 1.0 (checks a data mirror and the harness)."),
    verify_weights: bool = typer.Option(
        True, "--verify-weights/--no-verify-weights",
        help="Check each model.safetensors against the sha256 recorded when it was exported "
             "and refuse a mismatch (skip only for weights changed on purpose)."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Also show lm-eval's and datasets' own logs and progress "
                                      "bars (one bar per MMLU subject); by default one progress "
                                      "line per task and the scores."),
    snapshots: Optional[str] = typer.Option(
        None, "--snapshots", help="Evaluate each arm's training snapshots "
                                  "(<arm>/snapshots/step-NNNNNN/, written every "
                                  "run.snapshot_every steps): all, last-third (steps past 2/3 "
                                  "of the run) or steps such as 25,50; all and last-third add "
                                  "the final export (the last step) once the arm has finished. "
                                  "Arms still training are evaluated on the snapshots so far; "
                                  "results go to results/<run>/<arm>/snapshots/step-NNNNNN/."),
) -> None:
    """Evaluate trained models on code, math and QA benchmarks.

    Results go to results/<run>/<arm>/<task>.json (a versioned schema with per-item
    outcomes, data and weight hashes, the Z protocol and library versions). Free models are
    scored with 8 Z draws per log-likelihood item under both Z protocols and with 5 Z
    samples per generation prompt, and the spread over draws and samples is recorded;
    baselines get one deterministic pass. Finished tasks are kept when the same command
    runs again. With --snapshots, each arm's training snapshots are evaluated too (a
    curve over training in the report, and the average over its last third); each
    result records the step and the tokens seen. To spread the items over several processes
    or GPUs, launch with torchrun: `torchrun --nproc_per_node=8 -m ftbench eval ...` (the
    scores are the same for any number of ranks).
    """
    from ftbench.api import resolve_model_dirs
    from ftbench.data.errors import DataError
    from ftbench.evaluation.runner import EvalError, EvalSettings, evaluate_models, expand_suites
    from ftbench.training.distributed import init_distributed, shutdown
    from ftbench.training.export import ModelLoadError, check_weights

    ctx = init_distributed()
    try:
        tasks = expand_suites(suite)
        if model == "oracle":
            dirs = [None]
        elif model is not None:
            raise EvalError(f"--model: {model!r} is not supported (only 'oracle')")
        elif snapshots is not None:
            from ftbench.evaluation.snapshots import select

            if not model_dirs:
                raise EvalError("--snapshots: give run folders (models/<run>) or arms")
            points, notes = select(list(model_dirs), snapshots)
            dirs = [p.path for p in points]
            if ctx.is_main:
                for note in notes:
                    typer.echo(f"note: {note}", err=True)
                typer.echo(f"note: {len(points)} model(s) to evaluate: " + "; ".join(
                    f"{a.name} steps {', '.join(str(p.step) for p in points if p.arm_dir == a)}"
                    for a in dict.fromkeys(p.arm_dir for p in points)), err=True)
        else:
            if not model_dirs:
                raise EvalError("give run folders (models/<run>), exported arms "
                                "(models/<run>/<arm>) or --model oracle")
            dirs, notes = resolve_model_dirs(list(model_dirs))
            if ctx.is_main:
                for note in notes:
                    typer.echo(f"note: {note}", err=True)
            if verify_weights:
                # Before any task starts: a corrupt copy stops here, not halfway through.
                for d in dirs:
                    check_weights(d)
        if z_protocol not in ("posterior", "prior"):
            raise EvalError(f"--z-protocol: {z_protocol!r} is not one of posterior, prior")
        for name, value in (("--z-draws", z_draws), ("--n-samples", n_samples)):
            if value is not None and value < 1:
                raise EvalError(f"{name}: must be at least 1, got {value}")
        settings = EvalSettings(limit=limit, z_protocol=z_protocol,
                                compare_protocols=compare_protocols, z_draws=z_draws, seed=seed,
                                fewshot_seed=fewshot_seed, batch_size=batch_size,
                                n_samples=n_samples, temperature=temperature,
                                # Checked above, before any task; snapshots as each loads:
                                # hashing them all up front would repeat at every rerun.
                                verify_weights=snapshots is not None and verify_weights)
        evaluate_models(dirs, tasks, settings, results, str(data_dir) if data_dir else None,
                        results / ".cache", ctx=ctx, verbose=verbose)
    except (EvalError, DataError, ModelLoadError, ValueError) as e:
        _fail(str(e))
    finally:
        shutdown(ctx)


@app.command(short_help="Write the HTML and Markdown report of one or more runs.")
def report(
    runs: list[str] = typer.Argument(..., help="Run names under the results folder, e.g. toy "
                                     "(several runs of one config with different seeds are "
                                     "aggregated)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default "
                                       "reports/<first run>)."),
    results: Path = typer.Option(Path("results"), "--results", help="Results root folder."),
    models: Path = typer.Option(Path("models"), "--models", help="Trained models root (for the "
                                "overhead table and training curves)."),
    fmt: str = typer.Option("html,md", "--format", help="Output formats, comma-separated: "
                            "html (one self-contained file), md (plots as PNG files beside it)."),
) -> None:
    """Build the comparison report from results and model files (nothing is recomputed).

    The main table gives each benchmark's score per arm with the absolute and relative gain
    over the baseline, a paired 95 % interval and a p-value; then the spread across seeds and
    Z draws, the Free model's overhead (parameters, FLOPs, measured time and memory), training
    curves and latent diagnostics, the synthetic-task reproduction when the run has one, and
    the settings. Banners flag --limit runs, mixed Z protocols and mixed data versions.
    Runs of several sizes of one recipe (e.g. `ftbench report 125m 350m 760m`) add each
    benchmark's baseline score and Free gains against training FLOPs; runs that differ in
    more than size and seed are not put on that axis.
    """
    from ftbench.report.collect import ReportError
    from ftbench.report.compose import build_report, report_inputs

    formats = {f.strip() for f in fmt.split(",") if f.strip()}
    if not formats or formats - {"md", "html"}:
        _fail(f"--format: {fmt!r}; choose from html, md (comma-separated)")
    out_dir = out or Path("reports") / runs[0]
    try:
        from ftbench.report.render import to_html, to_markdown

        doc = build_report(report_inputs(runs, results, models), out_dir / "figures",
                           table_csv=out_dir / "results.csv")
    except (ReportError, ValueError) as e:
        _fail(str(e))
    if "md" in formats:
        typer.echo(f"wrote {to_markdown(doc, out_dir)}")
    if "html" in formats:
        typer.echo(f"wrote {to_html(doc, out_dir)}  (open it in a browser)")


@app.command("results", short_help="The runs' scores as one table (csv, json, md or parquet).")
def results_table(
    runs: list[str] = typer.Argument(..., help="Run names under the results folder, e.g. toy."),
    fmt: str = typer.Option("csv", "--format", help="csv, parquet, json or md."),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default: stdout, "
                                       "for csv, json and md)."),
    items: bool = typer.Option(False, "--items", help="Per-item outcomes instead of scores "
                               "(one row per item, for paired analyses)."),
    results: Path = typer.Option(Path("results"), "--results", help="Results root folder."),
    models: Path = typer.Option(Path("models"), "--models", help="Trained models root (each "
                                "Free arm's κ is read from its config.json)."),
) -> None:
    """Write the runs' results as one tidy table: a row per (run, seed, arm, κ, step, task,
    metric, Z protocol) with the step and tokens seen (snapshot rows from `ftbench eval
    --snapshots`, the final export at its last step), value, standard error, n items, Z
    protocol, K, n samples, limit, data version and weights hash; the table the report is built from. In Python:
    `ftbench.results_frame(["toy"])` and `ftbench.items_frame(["toy"])`."""
    import sys

    from ftbench.report.collect import ReportError
    from ftbench.report.frame import FORMATS, frame_bytes, items_frame, results_frame, write_frame

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}; choose from {', '.join(FORMATS)}")
    if out is None and fmt == "parquet":
        _fail("--format parquet is binary: name a file with --out FILE.parquet")
    try:
        frame = (items_frame if items else results_frame)(runs, results, models)
        if out is None:
            sys.stdout.buffer.write(frame_bytes(frame, fmt))
            return
        typer.echo(f"wrote {write_frame(frame, out, fmt)} ({len(frame)} rows)", err=True)
    except ReportError as e:
        _fail(str(e))


@app.command("latent-info", short_help="How much information a Free arm's latent Z carries.")
def latent_info(
    arms: list[Path] = typer.Argument(..., help="Exported Free arms, e.g. models/toy/free-k0p5."),
    windows: int = typer.Option(64, "--windows", help="Validation sequences to read."),
) -> None:
    """Measure how much information a Free arm's latent carries, on its run's validation
    split: KL to the prior, an upper bound on the mutual information between Z and the text
    (per token, and beyond what the position alone explains) and the spread of the encoder's
    bit logits. A KL paid with no information (MI < 0.01 bit/token) is flagged LATENT
    UNUSED. Written to <arm>/latent_info.json, which the report reads; training logs the
    same figures at each validation step (val_mi_bits), so this is for arms trained
    before that or for another number of windows."""
    from ftbench.diagnostics.latent_info import main as _measure

    code = _measure([*map(str, arms), "--windows", str(windows)])
    if code:
        raise typer.Exit(code)


from ftbench.data.cli import data_app  # noqa: E402  (after the commands they join)
from ftbench.doctor.cli import doctor as _doctor  # noqa: E402
from ftbench.repro.cli import repro_app  # noqa: E402

app.command("doctor", short_help="Check this machine before a long run, or rehearse one.")(
    _doctor)

app.add_typer(data_app, name="data",
              short_help="Prepare, verify and trace training data; get the mirror.")
app.add_typer(repro_app, name="repro",
              short_help="The paper's experiments as scientific regression checks.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
