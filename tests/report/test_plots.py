"""The report figures from synthetic metrics: real PNGs of a sensible size for one or more
arms, gaps and NaNs tolerated, clear errors for empty input, no pyplot state touched."""

import math
import struct
import subprocess
import sys

import numpy as np
import pytest

from ftbench.report import plots
from ftbench.report.stats import PairedComparison

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) in pixels from the IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_png(path, min_w=500, min_h=200):
    assert path.is_file() and path.stat().st_size > 5_000
    w, h = png_size(path)
    assert min_w <= w <= 2500 and min_h <= h <= 4000, (w, h)
    assert not list(path.parent.glob(f".{path.name}.*")), "a temporary file was left behind"


def drawn_pixels(path, colour: str, rows: slice = slice(None)) -> int:
    """How many pixels of the PNG (of its `rows`) are exactly `colour` (a line's or a bar's
    own colour, not its anti-aliased edge): a panel that leaves an arm out has none."""
    from matplotlib import colors, image

    rgb = np.round(image.imread(path)[rows, :, :3] * 255).astype(int)
    want = np.round(np.array(colors.to_rgb(colour)) * 255).astype(int)
    return int(np.all(rgb == want, axis=-1).sum())


def synthetic_curves(steps=50, eval_every=10, kappa=0.5):
    """A baseline and a Free arm shaped like training/loop.py's metrics.jsonl records."""
    base, free = [], []
    for step in range(1, steps + 1):
        ce = 8.0 * math.exp(-step / 20) + 3.0
        common = {"step": step, "lr": 3e-4, "grad_norm": 1.0, "tokens_per_s": 1e4, "mfu": None,
                  "peak_memory_bytes": 2**30}
        base.append({**common, "loss": ce, "ce": ce})
        kl = 0.02 * step
        free.append({**common, "loss": ce - 0.05 + max(0.0, kl - kappa), "ce": ce - 0.05,
                     "hinge": max(0.0, kl - kappa), "frac_above_kappa": min(1.0, kl / 2),
                     "kl_bits": kl, "kappa_bits": kappa})
        if step % eval_every == 0:
            base[-1]["val_ce"] = ce + 0.1
            free[-1].update(val_ce_prior=ce + 0.08, val_elbo=ce + 0.12, val_kl_bits=kl)
    return {"baseline": base, "free-k0p5": free}


def gain_points():
    return [
        {"task": "humanevalplus", "suite": "code", "arm": "free-k0p5", "rel_gain": 0.25,
         "rel_ci_low": 0.05, "rel_ci_high": 0.5, "significant": True},
        {"task": "gsm8k", "suite": "math", "arm": "free-k0p5", "rel_gain": -0.04,
         "rel_ci_low": -0.2, "rel_ci_high": 0.1, "significant": False},
        {"task": "mmlu", "suite": "qa", "arm": "free-k0p5", "rel_gain": None,
         "rel_ci_low": None, "rel_ci_high": None, "significant": False},
        {"task": "gsm8k", "suite": "math", "arm": "free-k2", "rel_gain": 0.1,
         "rel_ci_low": float("nan"), "rel_ci_high": 0.3, "significant": True},
    ]


def test_relative_gains_draws_a_png(tmp_path):
    out = plots.relative_gains(gain_points(), tmp_path / "gains.png")
    assert out == tmp_path / "gains.png"
    assert_png(out)
    colours = plots.arm_colours(["free-k0p5", "free-k2"])
    for arm in ("free-k0p5", "free-k2"):  # both arms' gains are drawn
        assert drawn_pixels(out, colours[arm]) > 50, arm


def test_relative_gains_takes_paired_comparisons_and_a_single_arm(tmp_path):
    c = PairedComparison(n=100, baseline=0.3, other=0.5, diff=0.2, ci_low=0.1, ci_high=0.3,
                         rel_gain=0.667, rel_ci_low=0.3, rel_ci_high=1.1, p_value=0.003,
                         test="mcnemar-exact")

    class Point:  # the same fields as attributes, the way a dataclass would carry them
        task, suite, arm = "gsm8k", "math", "free"
        rel_gain, rel_ci_low, rel_ci_high = c.rel_gain, c.rel_ci_low, c.rel_ci_high
        significant = c.significant

    assert_png(plots.relative_gains([Point()], tmp_path / "one.png"), min_h=150)


def test_training_curves_with_validation_and_no_kl_panel(tmp_path):
    out = plots.training_curves(synthetic_curves(), tmp_path / "curves.png")
    h = png_size(out)[1]
    assert_png(out)
    colours = plots.arm_colours(["baseline", "free-k0p5"])
    for arm in ("baseline", "free-k0p5"):  # both arms' curves, in each of the two panels
        assert drawn_pixels(out, colours[arm], slice(0, h // 2)) > 200, arm
        assert drawn_pixels(out, colours[arm], slice(h // 2, h)) > 40, arm  # 5 points
    # Two panels (training, validation) stack up taller than one panel would.
    single = plots.training_curves({"baseline": [{"step": 1, "ce": 5.0}, {"step": 2, "ce": 4.0}]},
                                   tmp_path / "single.png")
    assert h > 1.7 * png_size(single)[1]
    # The KL is drawn once, in the latent figure: a Free arm adds no panel here.
    base_only = {"baseline": synthetic_curves()["baseline"]}
    assert png_size(plots.training_curves(base_only, tmp_path / "b.png"))[1] == h


def test_running_mean_is_the_final_training_figure():
    values = np.array([6.0, 6.2, np.nan, 6.4, 5.4])
    assert plots.running_mean(values, 2).tolist()[-2:] == pytest.approx([6.4, 5.9])
    assert plots.running_mean(values, 3)[3] == pytest.approx(6.3)  # NaN skipped
    records = [{"step": s, "ce": 6.2 + 0.1 * (-1) ** s} for s in range(1, 150)]
    records.append({"step": 150, "ce": 5.4})  # one lucky batch at the end
    mean, sd, k = plots.final_running(records, "ce")
    assert k == plots.smoothing_window(150) == 10
    assert mean == pytest.approx((6.2 * 9 + 0.1 * (-1 * 5 + 4) + 5.4) / 10, abs=1e-9)
    assert mean > 6.0 and sd > 0.2
    assert plots.smoothing_window(3) == 3 and plots.smoothing_window(1000) == 66


def _latent_axes(curves, **kw):
    from matplotlib.figure import Figure
    ax = Figure().add_subplot()
    free = {k: v for k, v in curves.items() if plots._is_free(v)}
    plots._plot_latent_bits(ax, free, plots.arm_colours(list(curves)), 0.01, kw.get("extra", {}))
    return ax


def test_latent_legend_kappa_swatch_is_its_line():
    curves = synthetic_curves()
    curves["free-k2"] = [{**r, "kappa_bits": 2.0} for r in curves["free-k0p5"]]
    ax = _latent_axes(curves)
    colours = plots.arm_colours(list(curves))
    legend = ax.get_legend()
    entries = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles))
    for arm, kappa in (("free-k0p5", 0.5), ("free-k2", 2.0)):
        swatch = entries[f"{arm}: \u03ba = {kappa:g} bit"]
        line = next(l for l in ax.lines if l.get_label() == f"{arm}: \u03ba = {kappa:g} bit")
        assert swatch.get_color() == line.get_color() == colours[arm]
        assert swatch.get_linestyle() == line.get_linestyle() == "--"
        assert line.get_ydata()[0] == kappa


def test_latent_figure_draws_mi_beside_kl_and_flags_an_unused_latent(tmp_path):
    curves = synthetic_curves()
    for r in curves["free-k0p5"]:
        if "val_kl_bits" in r:
            r.update(val_mi_bits=0.0, val_logit_std=0.0)  # a KL paid, nothing carried
    ax = _latent_axes(curves)
    labels = [l.get_label() for l in ax.lines]
    assert "free-k0p5: MI (information carried)" in labels
    assert "free-k0p5: KL (cost)" in labels
    assert ax.get_yscale() == "log"  # MI 0 against KL ~0.5: decades apart
    mi = next(l for l in ax.lines if l.get_label().endswith("MI (information carried)"))
    assert min(mi.get_ydata()) == plots.LOG_FLOOR  # zero drawn at the floor, and said so
    assert any("drawn at" in t.get_text() for t in ax.get_legend().get_texts())
    assert plots.unused(curves["free-k0p5"], 0.01)
    assert_png(plots.latent_diagnostics(curves, tmp_path / "unused.png"))
    # An arm measured after training only: one MI point.
    old = synthetic_curves()
    ax = _latent_axes(old, extra={"free-k0p5": (50, 0.0011)})
    assert "free-k0p5: MI (measured after training)" in [l.get_label() for l in ax.lines]


def test_training_curves_tolerate_missing_keys_and_nans(tmp_path):
    curves = synthetic_curves(steps=30)
    for r in curves["baseline"]:
        del r["ce"]                       # falls back to "loss"
        r.pop("step")                     # counted by position
    curves["free-k0p5"][5]["kl_bits"] = float("nan")
    curves["free-k0p5"][6]["ce"] = None
    curves["free-k0p5"][7]["kappa_bits"] = "?"
    assert_png(plots.training_curves(curves, tmp_path / "c.png"))
    long = {"free": [{"step": s, "ce": 3 + 1 / s, "kl_bits": 0.1, "kappa_bits": 0.5}
                     for s in range(1, 400)]}  # long enough to be smoothed
    assert_png(plots.training_curves(long, tmp_path / "long.png"))


def test_overhead_bars(tmp_path):
    rows = [("parameters, total", 1.036, None), ("parameters without W_post", 1.031, 1.031),
            ("training FLOPs / token", 1.04, 1.036), ("generation time / token", None, None),
            ("peak memory", float("nan"), None), ("smaller", 0.98, None)]
    assert_png(plots.overhead_bars(rows, tmp_path / "overhead.png"))
    assert_png(plots.overhead_bars([("only", 1.1, None)], tmp_path / "one.png"), min_h=150)
    # Measured rows with a spread, and one that is not a finding (drawn hollow, grey).
    measured = [("training FLOPs / token", 1.156, None),
                ("training time / token", 1.14, None, 0.02, None),
                ("generation time / token", 1.654, None, 0.3, "unreliable: load 6.4")]
    assert_png(plots.overhead_bars(measured, tmp_path / "measured.png"))


def test_latent_diagnostics_flags_collapse(tmp_path):
    curves = synthetic_curves()
    assert_png(plots.latent_diagnostics(curves, tmp_path / "latent.png"))
    assert not plots.collapsed(curves["free-k0p5"], 0.01)
    for r in curves["free-k0p5"]:
        r["kl_bits"] = 1e-4 + 0.5 * math.exp(-r["step"] / 3)  # decays to (nearly) zero
        del r["frac_above_kappa"]
    curves["free-k0p5"][-1]["kl_bits"] = float("nan")  # the last finite value decides
    assert plots.collapsed(curves["free-k0p5"], 0.01)
    assert_png(plots.latent_diagnostics(curves, tmp_path / "collapsed.png", collapse_bits=0.01))


@pytest.mark.parametrize("call", [
    lambda p: plots.relative_gains([], p),
    lambda p: plots.training_curves({}, p),
    lambda p: plots.training_curves({"baseline": []}, p),
    lambda p: plots.overhead_bars([], p),
    lambda p: plots.latent_diagnostics({}, p),
    lambda p: plots.latent_diagnostics({"baseline": [{"step": 1, "ce": 3.0}]}, p),
])
def test_empty_input_is_a_clear_error(tmp_path, call):
    with pytest.raises(ValueError, match=r"no (points|arms|metrics records|rows|Free arm)"):
        call(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_arm_colours_do_not_depend_on_the_figure():
    every = plots.arm_colours(["baseline", "free-k0p5", "free-k2"])
    only_free = plots.arm_colours(["free-k2", "free-k0p5"])
    assert every["free-k2"] == only_free["free-k2"] != every["free-k0p5"]
    assert every["baseline"] not in plots.FREE_COLOURS


def test_plotting_leaves_pyplot_alone(tmp_path):
    code = ("import sys, matplotlib; from ftbench.report import plots; "
            f"plots.overhead_bars([('p', 1.03, None)], {str(tmp_path / 'o.png')!r}); "
            "print('matplotlib.pyplot' in sys.modules, matplotlib.rcParams['axes.spines.top'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    # The report's style (no top spine) was scoped to the drawing, not left behind.
    assert plots.STYLE["axes.spines.top"] is False
    assert out == ["False", "True"]
