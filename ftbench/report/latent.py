"""Whether each Free arm's latent is used: what Z costs (KL) beside what it carries (mutual
information, logit spread) and what it changes (items scored differently from the baseline).

Costs and information come from training's validation records (metrics.jsonl: val_kl_bits,
val_mi_bits, val_mi_content_bits, val_logit_std at the last validation step), or, for arms
trained before those were logged, from <arm>/latent_info.json written by
`python -m ftbench.diagnostics.latent_info`. Differing items come from the results files'
per-item outcomes. Nothing is recomputed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftbench.diagnostics.latent_info import FILE as LATENT_INFO_FILE
from ftbench.diagnostics.latent_info import UNUSED_MI_BITS
from ftbench.report.collect import HEADLINE, ArmResults, item_outcomes
from ftbench.report.document import Banner, Paragraph, Table

APPROXIMATION = (
    "MI is I(X; Z_t) ≈ mean_t KL(Q(Z_t|S) ‖ P) − KL(Q̄ ‖ P), with Q̄ the aggregate posterior "
    "over the validation tokens, computed per bit (Q̄ replaced by the product of its per-bit "
    "marginals, as the factorised encoder allows): Σ_h [H(p̄_h) − mean_t H(p_t,h)]. This is an "
    "upper bound on the mixture's information, so a value near zero proves the latent unused; "
    "it counts information about the position too, which the decoder already has: "
    "\"beyond position\" takes Q̄ per position across sequences instead.")


@dataclass(frozen=True)
class LatentRow:
    label: str
    kl_bits: float | None
    kappa_bits: float | None
    mi_bits: float | None
    mi_content_bits: float | None
    logit_std: float | None
    source: str
    differing: int | None
    paired: int | None
    per_task: dict[str, tuple[int, int]]

    @property
    def unused(self) -> bool | None:
        return None if self.mi_bits is None else self.mi_bits < UNUSED_MI_BITS

    @property
    def position_only(self) -> bool:
        return (not self.unused and self.mi_content_bits is not None
                and self.mi_content_bits < UNUSED_MI_BITS)


def differing_items(base: ArmResults | None, free: ArmResults) -> tuple[int, int, dict]:
    """(items whose headline outcome differs from the baseline's, items paired, per task)."""
    per_task = {}
    if base is None:
        return 0, 0, per_task
    for task, r in sorted(free.results.items()):
        if task not in HEADLINE or task not in base.results:
            continue
        ours, theirs = item_outcomes(r), item_outcomes(base.results[task])
        shared = ours.keys() & theirs.keys()
        per_task[task] = (sum(ours[k] != theirs[k] for k in shared), len(shared))
    return (sum(d for d, _ in per_task.values()), sum(n for _, n in per_task.values()),
            per_task)


def _from_metrics(records: list[dict]) -> dict | None:
    vals = [r for r in records if "val_mi_bits" in r]
    if not vals:
        return None
    last = vals[-1]
    return {"kl_bits": last.get("val_kl_bits"), "mi_bits": last["val_mi_bits"],
            "mi_content_bits": last.get("val_mi_content_bits"),
            "logit_std": last.get("val_logit_std"),
            "source": f"training validation, step {last.get('step', '?')}"}


def _from_file(arm_dir: Path) -> dict | None:
    path = arm_dir / LATENT_INFO_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {"kl_bits": d.get("kl_bits"), "mi_bits": d.get("mi_bits"),
            "mi_content_bits": d.get("mi_content_bits"), "logit_std": d.get("logit_std"),
            "source": f"{LATENT_INFO_FILE} ({d.get('source', 'measured after training')})"}


def latent_rows(arms: list[ArmResults], curves: dict[str, list[dict]], models_root: Path,
                label_of) -> list[LatentRow]:
    """One row per Free arm. `curves` maps labels to metrics records; `label_of(arm)` gives
    an arm's label."""
    bases = {a.run: a for a in arms if a.arm == "baseline"}
    rows = []
    for a in arms:
        label = label_of(a)
        records = curves.get(label, [])
        is_free = (any("kl_bits" in r for r in records)
                   or any(r["protocol"].get("arch") == "free" for r in a.results.values()))
        if not is_free:
            continue
        info = _from_metrics(records) or _from_file(models_root / a.run / a.arm) or {}
        kl = info.get("kl_bits")
        if kl is None:
            kls = [r["kl_bits"] for r in records if "kl_bits" in r]
            kl = kls[-1] if kls else None
        kappas = [r["kappa_bits"] for r in records if r.get("kappa_bits") is not None]
        differing, paired, per_task = differing_items(bases.get(a.run), a)
        rows.append(LatentRow(label, kl, kappas[-1] if kappas else None, info.get("mi_bits"),
                              info.get("mi_content_bits"), info.get("logit_std"),
                              info.get("source", "not measured (trained before MI was "
                                       "logged): run `python -m ftbench.diagnostics.latent_info "
                                       f"models/{a.run}/{a.arm}`"),
                              differing if paired else None, paired or None, per_task))
    return rows


def _num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def verdict(row: LatentRow) -> str:
    if row.unused is None:
        return "MI not measured"
    if row.unused:
        return "UNUSED"
    if row.position_only:
        return "position only"
    return "used"


def latent_blocks(rows: list[LatentRow]) -> list:
    if not rows:
        return []
    table = []
    for r in rows:
        share = ("—" if r.paired is None else
                 f"{r.differing} / {r.paired} ({100 * r.differing / r.paired:.1f} %)")
        kappa = "" if r.kappa_bits is None else f" (κ {r.kappa_bits:g})"
        table.append([r.label, _num(r.kl_bits) + kappa, _num(r.mi_bits),
                      _num(r.mi_content_bits), _num(r.logit_std), share, verdict(r)])
    blocks = [
        Paragraph("What each Free arm's latent costs and what it carries, on validation data. "
                  "KL is the rate paid per token (bits); MI is the information Z_t actually "
                  "carries about the input (bits per token); the logit spread is the standard "
                  "deviation of the encoder's bit logits across positions (0: the same "
                  "posterior everywhere); the last columns count the evaluation items whose "
                  "headline outcome differs from the baseline's. A latent is flagged UNUSED "
                  f"when MI < {UNUSED_MI_BITS:g} bit/token, whatever its KL. " + APPROXIMATION),
        Table(["arm", "KL bits/token", "MI bits/token", "MI beyond position", "logit sd",
               "items differing from baseline", "latent"], table),
    ]
    per_task = [f"{r.label}: " + ", ".join(f"{t} {d}/{n}" for t, (d, n) in r.per_task.items())
                for r in rows if len(r.per_task) > 1]
    if per_task:
        blocks.append(Paragraph("Items differing from the baseline, per benchmark: "
                                + "; ".join(per_task) + "."))
    sources = {r.source for r in rows}
    blocks.append(Paragraph(f"Measured from: {next(iter(sources))}." if len(sources) == 1 else
                            "Measured from: " + "; ".join(f"{r.label}: {r.source}"
                                                          for r in rows) + "."))
    for r in rows:
        if r.unused:
            items = ("" if r.paired is None else
                     f"; {r.differing} of {r.paired} evaluation items differ from the baseline")
            blocks.append(Paragraph(
                f"**{r.label}: latent unused.** It pays a KL of {_num(r.kl_bits, 3)} bit/token "
                f"but its Z carries at most {_num(r.mi_bits)} bit/token (encoder logit sd "
                f"{_num(r.logit_std)} across positions){items}. Its comparison with the baseline "
                "tests injected noise, not a working latent."))
        elif r.position_only:
            blocks.append(Paragraph(
                f"**{r.label}: latent carries the position only.** Z varies with the position "
                f"(MI {_num(r.mi_bits)} bit/token) but not with the text (beyond position "
                f"{_num(r.mi_content_bits)}), and the decoder already knows the position."))
    return blocks


def latent_banners(rows: list[LatentRow]) -> list[Banner]:
    """For the top of the report: a reader must not take the gains of an unused latent for
    the Free Transformer's."""
    out = []
    for r in rows:
        if r.unused:
            out.append(Banner(
                f"LATENT UNUSED: {r.label}'s Z carries at most {_num(r.mi_bits)} bit/token "
                f"while it pays a KL of {_num(r.kl_bits, 3)} bit/token; its gains compare "
                "injected noise with the baseline, not a working latent (see \"Free arms: is "
                "the latent used?\")."))
        elif r.position_only:
            out.append(Banner(f"LATENT CARRIES POSITION ONLY: {r.label}'s Z varies with the "
                              "position, not with the text (see \"Free arms: is the latent "
                              "used?\")."))
    return out
