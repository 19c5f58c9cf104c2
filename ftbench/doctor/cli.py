"""`ftbench doctor`: the check to run first on any machine, before a long job.

Register in ftbench/cli.py with:
    from ftbench.doctor.cli import doctor as _doctor  # noqa: E402
    app.command("doctor")(_doctor)
(nothing here imports torch at module level, so `ftbench --help` stays fast).
"""

from __future__ import annotations

import json

import typer


def _row_line(r: dict) -> str:
    mark = "PASS" if r["passed"] else "FAIL"
    return (f"{mark}  {r['name']}\n      measured: {r['measured']}\n      expected: "
            f"{r['expected']}   ({r['seconds']:.1f} s)")


def doctor(
    size: str = typer.Option("small", "--size", "-s", help="Preset whose shape the timed step "
                             "and the memory row use (with --layers layers)."),
    nproc: int = typer.Option(2, "--nproc", help="Ranks for the FSDP2 and resharding rows "
                              "(gloo processes on CPU, one per GPU with NCCL)."),
    layers: int = typer.Option(2, "--layers", help="Layers of the timed model (even)."),
    batch: int = typer.Option(0, "--batch", help="Sequences per timed step (0: 4 on CPU, "
                              "8 on GPU)."),
    seq: int = typer.Option(0, "--seq", help="Tokens per sequence of the timed step (0: 128 "
                            "on CPU, 2048 on GPU)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Check this machine before a long run: device, dtype and backend; bf16 vs fp32 (both
    arms); torch.compile vs eager; FSDP2 on --nproc ranks vs one process; a checkpoint saved
    at --nproc ranks and resumed at one; a timed training step of --size (tokens/s, MFU,
    Free/baseline time vs FLOP ratio); measured peak memory vs the memory plan. Each row
    prints pass/fail, the figure and the expected range. Exit status 1 if any row fails.
    About 25 s on a quiet 2-core CPU, up to ~3 min on a busy one (a cold inductor cache
    adds up to a minute)."""
    from ftbench.doctor.checks import run_doctor
    from ftbench.model.config import ConfigError
    from ftbench.model.presets import get_preset

    try:
        get_preset(size)
    except ConfigError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)

    def log(row):
        if not as_json:
            typer.echo(_row_line(row.as_dict()))

    import torch

    gpu = torch.cuda.is_available()
    try:
        result = run_doctor(size=size, nproc=nproc, layers=layers,
                            batch=batch or (8 if gpu else 4), seq=seq or (2048 if gpu else 128),
                            log=log)
    except ValueError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        n_fail = sum(not r["passed"] for r in result["rows"])
        typer.echo(f"{'all rows passed' if not n_fail else f'{n_fail} row(s) FAILED'} "
                   f"in {result['seconds']:.0f} s")
    if not result["passed"]:
        raise typer.Exit(1)


def main() -> None:
    """`python -m ftbench.doctor.cli` until the command is registered in ftbench/cli.py."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(doctor)
    app()


if __name__ == "__main__":
    main()
