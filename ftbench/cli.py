"""The `ftbench` command line: thin wrappers over ftbench.api."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ftbench.model.config import ConfigError

app = typer.Typer(
    name="ftbench",
    help="Does the Free Transformer beat a matched standard decoder on code, math and QA "
         "at your scale, and at what cost?\n\nTypical flow: `ftbench info --size toy`, "
         "`ftbench train-pair --size toy`, `ftbench eval models/<run>/* --suite code,math,qa`, "
         "`ftbench report <run>`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


@app.command()
def info(
    size: str = typer.Option(..., "--size", "-s", help="Preset name: see `ftbench presets`."),
    seq_len: Optional[int] = typer.Option(
        None, help="Sequence length for the attention FLOPs (default: the preset's max_seq_len)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Parameters, FLOPs per token and the Free model's overhead for a size preset.

    Nothing is allocated: models are built on the meta device.
    """
    from ftbench.api import model_info

    try:
        data = model_info(size, seq_len)
    except ConfigError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    b, f, o = data["baseline"], data["free"], data["free_overhead"]
    typer.echo(f"preset {data['size']}  (sequence length {data['seq_len']} for attention FLOPs)")
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
    """List the size presets with their shapes and parameter counts."""
    from ftbench.model.accounting import model_cost
    from ftbench.model.presets import PRESETS

    typer.echo(f"{'name':6s}{'layers':>7s}{'D':>6s}{'heads':>7s}{'FFN':>7s}{'vocab':>8s}"
               f"{'H':>4s}{'baseline':>10s}{'free':>10s}")
    for name, cfg in PRESETS.items():
        b, f = model_cost(cfg, "baseline"), model_cost(cfg, "free")
        typer.echo(f"{name:6s}{cfg.n_layers:>7d}{cfg.d_model:>6d}"
                   f"{f'{cfg.n_heads}/{cfg.n_kv_heads}':>7s}{cfg.ffn_hidden:>7d}"
                   f"{cfg.vocab_size:>8d}{cfg.latent_bits:>4d}"
                   f"{_human(b.params_total):>10s}{_human(f.params_total):>10s}")


def _not_yet(what: str) -> None:
    _fail(f"`ftbench {what}` is not implemented in this version of ftbench yet; "
          "see the open issues.", code=3)


@app.command("train-pair", context_settings={"allow_extra_args": True,
                                             "ignore_unknown_options": True})
def train_pair() -> None:
    """Train a matched baseline/Free pair from one config. (Not implemented yet.)"""
    _not_yet("train-pair")


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_() -> None:
    """Evaluate trained models on code, math and QA suites. (Not implemented yet.)"""
    _not_yet("eval")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def report() -> None:
    """Build the HTML/Markdown comparison report. (Not implemented yet.)"""
    _not_yet("report")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
