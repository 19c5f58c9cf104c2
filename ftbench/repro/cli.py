"""`ftbench repro ...`: the paper's experiments as regression checks (thin wrappers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

repro_app = typer.Typer(
    help="Reproduce the paper's experiments as scientific regression checks: a Free "
         "Transformer whose latent carries nothing fails them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click rewraps docstrings; markdown would eat <placeholders>
)


@repro_app.callback()
def _group() -> None:
    """Reproduce the paper's experiments as scientific regression checks."""


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# click ends a short help at the first ". " (here "Fig. 4"), so it is given whole.
@repro_app.command(short_help="The synthetic experiment (section 4.1, Figure 4), measured.")
def synthetic(
    kappas: Optional[str] = typer.Option(
        None, "--kappas", "-k",
        help="Free bits per token, comma-separated fractions or decimals, one Free model each "
             "(default: the config's, 1/64,1/8,1,8)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="Output folder for measures.json, samples.json and figure4.png (default: "
             "results/<run name>, so that `ftbench report <run name>` shows it)."),
    models: Optional[Path] = typer.Option(
        None, "--models",
        help="Where the trained models go, as <models>/<run name>/<arm>/ (default: the "
             "config's run.out_dir, models/). Arms already trained with the same settings "
             "are reused when the command runs again."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Pair config (default: configs/synthetic.yaml)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per arm."),
    samples: Optional[int] = typer.Option(
        None, "--samples",
        help="Samples per arm in each mode (independent Z, shared Z); a multiple of "
             "--group-size (default 512, or 256 with --ci)."),
    group_size: int = typer.Option(8, "--group-size", help="Samples sharing one Z sequence."),
    seed: Optional[int] = typer.Option(
        None, "--seed",
        help="Training and sampling seed (default: the config's run.seed, 0). Another seed "
             "gets its own run name, <name>-seed<N>, so runs of several seeds sit side by side."),
    ci: bool = typer.Option(
        False, "--ci", help="The CI-sized check: kappa 1/8 and 1, H = 2, 1500 steps, 256 "
                            "samples (about 9 minutes on one CPU thread; see --jobs)."),
    jobs: int = typer.Option(
        1, "--jobs", "-j",
        help="Arms trained at once, each in its own process with one thread (default 1: one "
             "after the other in this process). The models are the same either way."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field with a dotted key, e.g. --set optim.lr=1e-3. "
                          "Repeatable."),
) -> None:
    """The paper's synthetic experiment (section 4.1, Fig. 4).

    Trains a baseline and one Free Transformer per kappa on the toy task (an 8-long run of
    a letter at a random place in 64 '_', with '!' noise), then samples from one prompt
    per model with independent Z and in groups sharing one Z sequence. Reports how often
    samples agree on the target's position and on the noise, how often they are well
    formed, and the KL per token. A working latent makes samples that share Z agree on
    the position at 1/8 bit per token; at 8 bits generation breaks.
    """
    from ftbench.config.loader import load_pair_config
    from ftbench.data.errors import DataError
    from ftbench.model.config import ConfigError
    from ftbench.repro import synthetic as syn
    from ftbench.repro.report import load_repro, table_markdown
    from ftbench.training.checkpoint import CheckpointError
    from ftbench.training.loop import TrainingError

    try:
        items = list(syn.CI_OVERRIDES) if ci else []
        items += list(overrides)
        if kappas is not None:
            items.append(f"latent.kappas_bits={syn.parse_kappas(kappas)}")
        if steps is not None:
            items.append(f"run.steps={steps}")
        if models is not None:
            items.append(f"run.out_dir={models}")
        cfg = load_pair_config(config or syn.default_config_path(), overrides=items)
        if seed is not None and seed != cfg.run.seed:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(
                cfg.run, seed=seed, name=f"{cfg.run.name}-seed{seed}"))
        out = out or Path("results") / cfg.run.name
        n = samples if samples is not None else (syn.CI_SAMPLES if ci else syn.FULL_SAMPLES)
        if group_size < 2 or n < group_size or n % group_size:
            raise syn.ReproError(f"--samples {n} must be a positive multiple of --group-size "
                                 f"{group_size} (>= 2)")
        custom = bool(overrides or kappas or steps is not None or samples is not None
                      or config is not None or group_size != 8)  # --seed, --models: not custom
        size = "custom" if custom else ("ci" if ci else "full")
        typer.echo(f"repro synthetic: {size} run, kappas "
                   f"{', '.join(syn.kappa_text(k) for k in cfg.latent.kappas_bits)} bit/token, "
                   f"{cfg.run.steps} steps, seed {cfg.run.seed}, {n} samples per mode -> {out}")
        if jobs < 1:
            raise syn.ReproError(f"--jobs must be >= 1, got {jobs}")
        syn.run_synthetic(cfg, out, groups=n // group_size, group_size=group_size, size=size,
                          log=typer.echo, jobs=jobs)
    except (ConfigError, syn.ReproError, DataError, CheckpointError, TrainingError) as e:
        _fail(str(e))
    data = load_repro(out)
    typer.echo("")
    typer.echo(table_markdown(data["rows"], data["settings"]["chance"]))
    typer.echo("")
    for p in data["predictions"]:
        typer.echo(f"{'reproduced' if p['holds'] else 'NOT reproduced'}: {p['claim']}: "
                   f"{p['measured']}")
    typer.echo(f"\nwrote {out / syn.MEASURES}, {out / syn.SAMPLES}, {out / syn.FIGURE}")
