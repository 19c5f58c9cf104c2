"""A figure in the spirit of the paper's Fig. 4, drawn from samples.json and measures.json.

One panel per arm: a blue box of samples with independent Z, then green boxes of samples
that share one Z sequence. Samples that are not well formed are drawn in red.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftbench.repro.synthetic import FIGURE, MEASURES, SAMPLES, kappa_text

INDEP_SHOWN, GROUPS_SHOWN, PER_GROUP_SHOWN = 6, 3, 4
BLUE, GREEN, RED = "#1f5fbf", "#2e8b3a", "#c0392b"
MAX_CHARS = 70  # longer (malformed) samples are cut
GAP = 0.45  # blank space between boxes, in lines


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _title(row: dict) -> tuple[str, str]:
    """Panel heading and a line of its measures."""
    wf = f"well-formed {_pct(row['indep']['well_formed'])}"
    if row["arch"] != "free":
        return f"baseline (no Z), prompt {row['prompt']}", wf
    return (f"Free Transformer, \u03ba = {kappa_text(row['kappa_bits'])} bit/token, prompt "
            f"{row['prompt']}",
            f"{wf};  same position: shared Z {_pct(row['shared']['pos_agree'])}, independent Z "
            f"{_pct(row['indep']['pos_agree'])};  KL {row['kl_bits']:.3f} bit/token")


def _layout(arms: list[dict], samples: dict) -> tuple[list[tuple], float]:
    """Lines with their y (in line units, top-down): ("title" | "sub", y, text) or
    ("sample", y, text, ok, box key); and the total height."""
    lines: list[tuple] = []
    y = 0.0
    for row in arms:
        s = samples[row["arm"]]
        head, sub = _title(row)
        lines.append(("title", y, head))
        lines.append(("sub", y + 1.0, sub))
        y += 2.2
        boxes = [("indep", list(zip(s["indep"], s["indep_well_formed"]))[:INDEP_SHOWN])]
        for g, (group, oks) in enumerate(list(zip(s["shared"] or [],
                                                  s["shared_well_formed"] or []))[:GROUPS_SHOWN]):
            boxes.append((g, list(zip(group, oks))[:PER_GROUP_SHOWN]))
        for key, items in boxes:
            for text, ok in items:
                lines.append(("sample", y, text, ok, (row["arm"], key)))
                y += 1.0
            y += GAP
        y += 0.8
    return lines, y


def write_figure(out: Path, path: Path | None = None) -> Path:
    """Render out/figure4.png (or `path`) from out/samples.json and out/measures.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(out)
    samples = json.loads((out / SAMPLES).read_text())
    arms = json.loads((out / MEASURES).read_text())["arms"]
    lines, height = _layout(arms, samples)

    # Monospace at 6.5 pt: a character is about 0.6 x 6.5 pt wide, a line about 9.5 pt.
    char_in, line_in = 0.6 * 6.5 / 72, 9.5 / 72
    width = MAX_CHARS + 4
    fig = plt.figure(figsize=(width * char_in + 0.3, (height + 1.5) * line_in + 0.2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.5, width)
    ax.set_ylim(height + 1.5, -1.0)
    ax.axis("off")
    boxes: dict[tuple, list[float]] = {}
    for line in lines:
        if line[0] in ("title", "sub"):
            bold = line[0] == "title"
            ax.text(0, line[1], line[2], fontsize=6.5 if bold else 5.5, va="center",
                    fontweight="bold" if bold else "normal", color="black" if bold else "#333333")
            continue
        _, y, text, ok, key = line
        shown = text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 1] + "\u2026"
        ax.text(1.5, y, shown, family="monospace", fontsize=6.5, va="center",
                color="black" if ok else RED)
        boxes.setdefault(key, []).append(y)
    for key, ys in boxes.items():
        ax.add_patch(Rectangle((0.8, min(ys) - 0.55), MAX_CHARS + 1.4, max(ys) - min(ys) + 1.1,
                               fill=False, linewidth=0.9,
                               edgecolor=BLUE if key[1] == "indep" else GREEN))
    ax.text(0, height + 0.5, "blue: independent Z per sample;  green: one Z sequence shared "
            "by the box;  red: not well formed", fontsize=5.5, color="#444444", va="center")
    path = Path(path) if path else out / FIGURE
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=160)
    plt.close(fig)
    tmp.replace(path)
    return path
