"""The Markdown report: banners, the main table, the appendix. Built from results only."""

from __future__ import annotations

import json
from pathlib import Path

from ftbench.report.collect import ArmResults, banners
from ftbench.report.tables import main_table, markdown_table


def build_markdown(arms: list[ArmResults], runs: list[str]) -> str:
    tasks, labels, cells = main_table(arms)
    suites = {t: next(a.results[t]["suite"] for a in arms if t in a.results) for t in tasks}
    parts = [f"# ftbench report: {', '.join(runs)}", ""]
    for b in banners(arms):
        parts += [f"> **{b}**", ""]
    parts += ["## Main comparison", "",
              "Scores in %. Free arms: absolute gain over the run's baseline in points, relative "
              "gain, a paired 95 % bootstrap interval of the gain and a p-value (exact McNemar "
              "for pass/fail items, else paired bootstrap); '(n.s.)' marks p >= 0.05. The "
              "paper's column is the paper's scale and data, not this run's.", "",
              markdown_table(tasks, labels, cells, suites), ""]
    parts += ["## Appendix: evaluation settings", ""]
    for a in arms:
        for task, r in sorted(a.results.items()):
            parts.append(f"- `{a.run}/{a.arm}/{task}`: n={r['n_items']}, limit={r['limit']}, "
                         f"protocol={json.dumps(r['protocol'])}, harness={r['harness']}, "
                         f"data={r['data'].get('mode')}")
    versions = next(iter(next(iter(arms)).results.values()))["versions"]
    parts += ["", f"Library versions: `{json.dumps(versions)}`", ""]
    return "\n".join(parts)


def write_markdown(text: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
