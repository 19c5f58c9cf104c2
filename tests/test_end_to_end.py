"""The demo pipeline as CI runs it: train the toy pair on the offline mirror, evaluate it on
every suite with a small limit, build the report, then check what came out.

The bounds were recorded from the toy config on the 2-core CPU (seed 0, 150 steps, the
token-budget data: 307,201 training tokens read once): mean training loss of
the last 10 steps 6.290 (baseline) / 6.238 (Free) from 8.33, validation CE 6.622 / prior-Z
CE 6.530, Free KL 0.228 bit/token under kappa = 0.5 bit. The last 10 steps, not the last
batch, because one batch of 16 sequences moves by 0.1-0.2 nats. They leave about 0.2
nats of slack: a regression that costs more than that, or a latent that collapses (KL
below 0.05 bit) or escapes its budget, fails here.
"""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ftbench
from ftbench.cli import app
from ftbench.evaluation.results import read_result
from ftbench.report.frame import read_frame

REPO = Path(__file__).resolve().parents[1]
TASKS = ("humanevalplus", "mbppplus", "gsm8k", "mmlu", "commonsense_qa")
ARMS = ("baseline", "free-k0p5")
runner = CliRunner()


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.open = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag not in ("meta", "br", "hr", "link", "col", "input", "wbr"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if self.open and self.open[-1] == tag:
            self.open.pop()


@pytest.mark.slow
def test_toy_pipeline_end_to_end(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = runner.invoke(app, ["train-pair", "--config", str(REPO / "configs" / "toy.yaml"),
                                "--data-dir", str(data_dir)])
    assert train.exit_code == 0, train.output
    run = tmp_path / "models" / "toy"
    base, free = (_metrics(run / arm / "metrics.jsonl") for arm in ARMS)
    assert len(base) == len(free) == 150
    # The matched pair as the run recorded it: the same batch at every step, one tokenizer.
    assert [r["batch_sha1"] for r in base] == [r["batch_sha1"] for r in free]
    assert len({r["batch_sha1"] for r in base}) == 150
    assert (run / ARMS[0] / "tokenizer.json").read_bytes() == \
        (run / ARMS[1] / "tokenizer.json").read_bytes()
    end_base, end_free = (sum(r["loss"] for r in m[-10:]) / 10 for m in (base, free))
    assert end_base < 6.5 and base[0]["loss"] - end_base > 1.8
    assert end_free < 6.45 and free[0]["loss"] - end_free > 1.8
    assert base[-1]["val_ce"] < 6.85 and free[-1]["val_ce_prior"] < 6.75
    kappa = free[-1]["kappa_bits"]
    assert kappa == 0.5 and 0.05 < free[-1]["kl_bits"] <= kappa + 0.1
    assert free[-1]["frac_above_kappa"] <= 0.1

    arms = [str(run / arm) for arm in ARMS]
    ev = runner.invoke(app, ["eval", *arms, "--suite", "code,math,qa", "--limit", "3",
                             "--data-dir", str(data_dir)])
    assert ev.exit_code == 0, ev.output
    for arm in ARMS:
        for task in TASKS:
            r = read_result(tmp_path / "results" / "toy" / arm / f"{task}.json")
            assert r["limit"] == 3 and r["model"]["arm"] == arm
            assert r["data"]["mode"] == "offline"
            if task in ("humanevalplus", "mbppplus"):  # only generate() is timed
                g = r["generation"]
                assert g["new_tokens"] > 0 and 0 < g["seconds"] < r["wall_s"]

    rep = runner.invoke(app, ["report", "toy"])
    assert rep.exit_code == 0, rep.output
    # Markdown escapes underscores (W\_post); compare the text as a reader sees it.
    md = (tmp_path / "reports" / "toy" / "report.md").read_text().replace("\\_", "_")
    for task in TASKS:
        assert task in md
    assert "SMOKE TEST" in md and "Overhead" in md and "parameters without W_post" in md
    assert "training time / token (measured)" in md
    # The report read the pair's records and found it matched at every step.
    assert "PAIR NOT MATCHED" not in md
    section = md.split("## Matched pair", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| free-k0p5 |"))
    assert "identical at 150 of 150 steps" in row and "shared tensors)" in row, row
    assert row.count("identical") == 4, row
    html = (tmp_path / "reports" / "toy" / "report.html").read_text()
    tags = _Tags()
    tags.feed(html)
    assert not tags.open, tags.open
    assert len(tags.imgs) >= 3
    assert all(img["src"].startswith("data:image/png;base64,") for img in tags.imgs)
    assert "http://" not in html and "https://" not in html
    _check_results_table(tmp_path, md)


def _check_results_table(tmp_path: Path, md: str) -> None:
    """results.csv beside the report is ftbench.results_frame, holds every task and arm, and
    its headline scores are the report's main table's."""
    import pandas as pd

    frame = read_frame(tmp_path / "reports" / "toy" / "results.csv")
    pd.testing.assert_frame_equal(frame, ftbench.results_frame(["toy"]))
    assert set(zip(frame["arm"], frame["task"])) == {(a, t) for a in ARMS for t in TASKS}
    assert (frame["limit"] == 3).all() and frame["weights_sha256"].notna().all()
    assert set(frame.loc[frame["arm"] == "free-k0p5", "kappa_bits"]) == {0.5}
    for task in ("mmlu", "commonsense_qa"):  # log-likelihood: a row per Z protocol scored
        r = read_result(tmp_path / "results" / "toy" / "free-k0p5" / f"{task}.json")
        rows = frame[(frame["arm"] == "free-k0p5") & (frame["task"] == task)]
        assert set(rows["z_protocol"]) == set(r["protocol"]["protocols"])
    assert "[results.csv](results.csv)" in md
    main = frame[frame["headline_metric"] & frame["headline_protocol"]]
    for task in TASKS:
        row = next(line for line in md.splitlines() if line.startswith(f"| ") and
                   f"| {task} (" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        for arm, cell in zip(ARMS, cells[2:4]):
            value = main.loc[(main["arm"] == arm) & (main["task"] == task), "value"].item()
            # Not significant gains are in *italics*.
            assert cell.strip("*").split(" ")[0] == f"{100 * value:.1f}", (task, arm, cell)
