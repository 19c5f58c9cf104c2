"""`ftbench doctor`: the check to run first on any machine, before a long job.

ftbench/cli.py registers `doctor` as a command. Nothing here imports torch at module
level, so `ftbench --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _row_line(r: dict) -> str:
    mark = "PASS" if r["passed"] else "FAIL"
    return (f"{mark}  {r['name']}\n      measured: {r['measured']}\n      expected: "
            f"{r['expected']}   ({r['seconds']:.1f} s)")


def doctor(
    size: str = typer.Option(None, "--size", "-s", help="Preset whose shape the timed step "
                             "and the memory row use (default small); with --simulate, the "
                             "run to rehearse: configs/NAME.yaml."),
    nproc: int = typer.Option(2, "--nproc", help="Ranks for the FSDP2 and resharding rows "
                              "(gloo processes on CPU, one per GPU with NCCL)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Layers of the timed model "
                                         "(even; default 2). With --simulate: layers traced "
                                         "(default: the config's), same widths, vocabulary, "
                                         "sequence and world size."),
    batch: int = typer.Option(0, "--batch", help="Sequences per timed step (0: 4 on CPU, "
                              "8 on GPU)."),
    seq: int = typer.Option(0, "--seq", help="Tokens per sequence of the timed step (0: 128 "
                            "on CPU, 2048 on GPU)."),
    simulate: bool = typer.Option(False, "--simulate", help="Rehearse a GPU run on this "
                                  "machine instead: each arm's real training step on fake "
                                  "tensors, as rank 0 of --world-size ranks (see below)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="With --simulate: the "
                                          "pair config to rehearse (instead of --size)."),
    overrides: list[str] = typer.Option([], "--set", help="With --simulate: override a config "
                                        "field, e.g. --set run.checkpoint_policy=selective."),
    world_size: int = typer.Option(8, "--world-size", help="With --simulate: ranks (GPUs) of "
                                   "the run."),
    nodes: int = typer.Option(1, "--nodes", help="With --simulate: nodes the ranks span "
                              "(run.shard_ranks 0 then shards within a node: HSDP)."),
    gpu: str = typer.Option("h100", "--gpu", help="With --simulate: the GPU (h100, h200, a100, "
                            "...; ftbench.training.hardware.GPUS) whose memory, peak FLOP/s "
                            "and bandwidths the rows use."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Check this machine before a long run: device, dtype and backend; bf16 vs fp32 (both
    arms); torch.compile vs eager; FSDP2 on --nproc ranks vs one process; a checkpoint saved
    at --nproc ranks and resumed at one; a timed training step of --size (tokens/s, MFU,
    Free/baseline time vs FLOP ratio); measured peak memory vs the memory plan. Each row
    prints pass/fail, the figure and the expected range. Exit status 1 if any row fails.
    About 25 s on a quiet 2-core CPU, up to ~3 min on a busy one (a cold inductor cache
    adds up to a minute).

    With --simulate, rehearse a GPU run here instead, before spending GPU hours on it:
    each arm's real training step (the run's FSDP2 sharding, mixed precision, activation
    checkpointing, fused loss, micro-batches; forward, backward, clipping, the metric
    all-reduce, the optimiser step, one validation micro-batch) runs on fake tensors as
    rank 0 of --world-size ranks under a fake process group. Rows per arm: traced peak
    memory per rank vs the memory plan (within 10 %), counted FLOPs per token vs the
    accounting (within 2 %), every collective on the device (a host tensor fails, as
    NCCL would), whether it fits the --gpu, and a roofline step time and MFU; then the
    Free/baseline step-time ratio. E.g. `ftbench doctor --simulate --size 1.5b
    --world-size 8 --layers 2` (about 2 minutes on 2 cores; docs/training.md).
    """
    if simulate:
        _simulate(size, config, overrides, world_size, nodes, gpu, layers, as_json)
        return
    from ftbench.doctor.checks import run_doctor
    from ftbench.model.config import ConfigError
    from ftbench.model.presets import get_preset

    size = size or "small"
    try:
        get_preset(size)
    except ConfigError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)

    def log(row):
        if not as_json:
            typer.echo(_row_line(row.as_dict()))

    import torch

    gpu_here = torch.cuda.is_available()
    try:
        result = run_doctor(size=size, nproc=nproc, layers=layers or 2,
                            batch=batch or (8 if gpu_here else 4),
                            seq=seq or (2048 if gpu_here else 128), log=log)
    except ValueError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    _finish(result, as_json)


def _finish(result: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        n_fail = sum(not r["passed"] for r in result["rows"])
        typer.echo(f"{'all rows passed' if not n_fail else f'{n_fail} row(s) FAILED'} "
                   f"in {result['seconds']:.0f} s")
    if not result["passed"]:
        raise typer.Exit(1)


def _simulate(size, config, overrides, world_size, nodes, gpu, layers, as_json) -> None:
    from ftbench.api import resolve_pair_config
    from ftbench.doctor.simulate import simulate
    from ftbench.model.config import ConfigError

    def fail(message: str) -> None:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)

    if world_size < 1 or nodes < 1:
        fail(f"--world-size {world_size} and --nodes {nodes} must be >= 1")
    try:
        cfg = resolve_pair_config(config, size, list(overrides))
    except ConfigError as e:
        fail(str(e))

    def log(row: dict) -> None:
        if not as_json:
            typer.echo(f"{'PASS' if row['passed'] else 'FAIL'}  {row['name']}\n"
                       f"      measured: {row['measured']}\n      expected: {row['expected']}")

    if not as_json:
        typer.echo(f"rehearsing {cfg.run.name} ({cfg.size}) as rank 0 of {world_size} ranks on "
                   f"{nodes} node(s); each arm traced in its own process ...", err=True)
    try:
        result = simulate(cfg, world_size, nodes, gpu, layers, log=log)
    except (ValueError, ConfigError) as e:
        fail(str(e))
    _finish(result, as_json)


def main() -> None:
    """`python -m ftbench.doctor.cli`: the doctor alone, without the rest of the CLI."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(doctor)
    app()


if __name__ == "__main__":
    main()
