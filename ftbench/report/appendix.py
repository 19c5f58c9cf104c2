"""The report's appendix as tables a reader can scan: each results file's settings, and each
run's pair.yaml flattened to "setting: value" rows, empty fields dropped, data sources as
their own table (fields shared by every source said once)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ftbench.report.collect import ArmResults
from ftbench.report.document import Bullets, Paragraph, Preformatted, Table


def _empty(v) -> bool:
    return v is None or v == "" or v == [] or v == {}


def _value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k} {_value(x)}" for k, x in v.items() if not _empty(x))
    return str(v)


def protocol_text(protocol: dict) -> str:
    """The protocol's settings as 'key value' pairs; arch and the estimator's prose are
    shown elsewhere, empty fields dropped."""
    parts = []
    for k, v in protocol.items():
        if k in ("arch", "estimator") or _empty(v):
            continue
        parts.append(f"{k.replace('_', ' ')} {'+'.join(map(str, v)) if isinstance(v, list) else v}")
    return ", ".join(parts) or "—"


def results_blocks(arms: list[ArmResults]) -> list:
    rows, estimators = [], {}
    for a in arms:
        for task, r in sorted(a.results.items()):
            limit = r.get("limit")
            lim = (r.get("generation") or {}).get("limits")
            gen = ("—" if not lim else
                   f"max {lim['max_gen_toks_requested'][-1] if lim.get('max_gen_toks_requested') else '?'}"
                   f" new tokens; capped {lim.get('capped', 0)}/{lim.get('requests', 0)}, "
                   f"prompts cut {lim.get('context_truncated', 0)}")
            rows.append([f"{a.run}/{a.arm}", task,
                         f"{r['n_items']}" + (f" (limit {limit})" if limit is not None else ""),
                         protocol_text(r["protocol"]), r.get("harness", "—"),
                         (r.get("data") or {}).get("mode", "—"), str(r.get("seed", "—")),
                         gen, f"{r['wall_s']:.0f} s"])
            est = r["protocol"].get("estimator")
            if est:
                estimators.setdefault(est, []).append(f"{a.arm}/{task}")
    blocks = [Table(["results file", "benchmark", "items", "protocol", "harness", "data",
                     "seed", "generation limits", "wall"], rows)]
    if estimators:
        blocks.append(Paragraph("Estimators, as the results files state them:"))
        blocks.append(Bullets([f"{est} ({', '.join(where)})" for est, where in estimators.items()]))
    blocks += deviation_blocks(arms)
    return blocks


def deviation_blocks(arms: list[ArmResults]) -> list:
    """What the code results do differently from a plain EvalPlus run, as each results
    file lists it ("deviations"; files written before it was recorded say nothing)."""
    found: dict[str, list[str]] = {}
    for a in arms:
        for task, r in sorted(a.results.items()):
            for d in r.get("deviations") or []:
                found.setdefault(d, []).append(f"{a.arm}/{task}")
    if not found:
        return []
    return [Paragraph("Deviations from plain EvalPlus 0.3.1 (prompt, stop strings, sanitiser "
                      "and the 768-token budget are EvalPlus's own), as the results files "
                      "list them:"),
            Bullets([f"{d} ({', '.join(where)})" for d, where in found.items()])]


def _sections(d: dict) -> list[tuple[str, list[tuple[str, object]]]]:
    """(section, [(key, value)]) with nested mappings as their own dotted sections; top-level
    scalars form the first section, "run"."""
    top, out = [], []

    def walk(name: str, m: dict) -> None:
        items = [(k, v) for k, v in m.items() if not isinstance(v, dict) and not _empty(v)]
        if items:
            out.append((name, items))
        for k, v in m.items():
            if isinstance(v, dict):
                walk(f"{name}.{k}", v)

    for k, v in d.items():
        if isinstance(v, dict):
            walk(k, v)
        elif not _empty(v):
            top.append((k, v))
    return ([("(top level)", top)] if top else []) + out


def _sources_table(sources: list[dict]) -> list:
    keys = list(dict.fromkeys(k for s in sources for k in s))
    filled = [k for k in keys if any(not _empty(s.get(k)) for s in sources)]
    # With several sources, a field equal in all of them is said once, under the table.
    shared = ([k for k in filled if k not in ("kind", "path", "weight")
               and len({_value(s.get(k)) for s in sources}) == 1] if len(sources) > 1 else [])
    columns = [k for k in filled if k not in shared]
    rows = [["" if _empty(s.get(k)) else _value(s.get(k)) for k in columns] for s in sources]
    blocks = [Table([c.replace("_", " ") for c in columns], rows)]
    if shared:
        blocks.append(Paragraph("Every source: " + ", ".join(
            f"{k.replace('_', ' ')} {_value(sources[0][k])}" for k in shared) + "."))
    return blocks


def config_blocks(run: str, path: Path) -> list:
    """pair.yaml as tables; the raw text if it does not parse as a mapping."""
    text = path.read_text()
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        cfg = None
    intro = Paragraph(f"Configuration of run `{run}` (models/{run}/pair.yaml; empty fields "
                      "left out; a setting is `section.key`, as `--set` takes it):")
    if not isinstance(cfg, dict):
        return [intro, Preformatted(text)]
    sources = (cfg.get("data") or {}).get("sources") if isinstance(cfg.get("data"), dict) else None
    rest = dict(cfg)
    if isinstance(sources, list) and all(isinstance(s, dict) for s in sources):
        rest["data"] = {k: v for k, v in cfg["data"].items() if k != "sources"}
    else:
        sources = None
    # The keys as they are spelled, so that a reader can pass one back with --set.
    rows = [[section, "; ".join(f"{k} = {_value(v)}" for k, v in items)]
            for section, items in _sections(rest)]
    blocks = [intro, Table(["section", "settings"], rows)]
    if sources:
        blocks += [Paragraph(f"Data sources of run `{run}`:"), *_sources_table(sources)]
    return blocks
