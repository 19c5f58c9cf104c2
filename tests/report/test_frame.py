"""Results as a tidy table: the frame holds every task and arm with the report's numbers,
round-trips through CSV, Parquet and JSON, refuses mixed schema versions, and
`ftbench results` / `ftbench report` write it."""

import pandas as pd
import pytest
from typer.testing import CliRunner

import ftbench
from ftbench.cli import app
from ftbench.evaluation.results import write_result
from ftbench.report.collect import ReportError, collect
from ftbench.report.compose import build_report, report_inputs
from ftbench.report.frame import read_frame, write_frame
from ftbench.report.tables import main_table
from tests.report.test_compose import _free_ll_result, _outcomes, _write_model
from tests.report.test_tables import _result

runner = CliRunner()
ARMS = ("baseline", "free-k0p5")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Run s0: gsm8k and humanevalplus for both arms, commonsense_qa with the Free arm scored
    under both Z protocols, and a replica of the Free arm's gsm8k under eval seed 1."""
    tmp = tmp_path_factory.mktemp("frame")
    results, models = tmp / "results", tmp / "models"
    for seed, (arm, arch, rate) in enumerate((("baseline", "baseline", 0.3),
                                              ("free-k0p5", "free", 0.5))):
        d = results / "s0" / arm
        write_result(d / "gsm8k.json", _result("gsm8k", "math", "exact_match,strict-match",
                                               _outcomes(rate), arch=arch))
        write_result(d / "humanevalplus.json", _result("humanevalplus", "code", "pass@1,plus",
                                                       _outcomes(0.1), arch=arch))
        _write_model(models, "s0", arm, arch, 1000.0, 2**30, seed)
    write_result(results / "s0" / "baseline" / "commonsense_qa.json",
                 _result("commonsense_qa", "qa", "acc,none", _outcomes(0.30)))
    write_result(results / "s0" / "free-k0p5" / "commonsense_qa.json",
                 _free_ll_result(_outcomes(0.40), _outcomes(0.70), [0.4] * 8, [0.7] * 8))
    replica = _result("gsm8k", "math", "exact_match,strict-match", _outcomes(0.6), arch="free")
    replica["seed"] = 1
    write_result(results / "s0" / "free-k0p5" / "seed1" / "gsm8k.json", replica)
    return results, models


@pytest.fixture(scope="module")
def frame(roots):
    return ftbench.results_frame(["s0"], *roots)


def test_frame_holds_every_task_and_arm_with_the_reports_numbers(roots, frame):
    results, _ = roots
    assert set(frame["arm"]) == set(ARMS)
    assert set(frame["task"]) == {"gsm8k", "humanevalplus", "commonsense_qa"}
    assert frame.groupby("arm")["task"].nunique().to_dict() == {a: 3 for a in ARMS}
    free = frame[frame["arm"] == "free-k0p5"]
    assert set(free["kappa_bits"]) == {0.5} and frame[frame["arm"] == "baseline"][
        "kappa_bits"].isna().all()
    # Both Z protocols of the Free log-likelihood task, the headline one marked.
    csqa = free[free["task"] == "commonsense_qa"].set_index("z_protocol")
    assert csqa.loc["posterior", "value"] == 0.4 and csqa.loc["posterior", "headline_protocol"]
    assert csqa.loc["prior", "value"] == 0.7 and not csqa.loc["prior", "headline_protocol"]
    assert set(csqa["z_draws"]) == {8}
    replica = free[free["replica"]]
    assert replica[["task", "seed", "value"]].values.tolist() == [["gsm8k", 1, 0.6]]
    assert frame["data_version"].nunique() == 1 and (frame["n_items"] == 100).all()
    # The report's main table reads its scores from the same frame.
    tasks, labels, cells = main_table(collect(results, ["s0"]), n_boot=200)
    main = frame[frame["headline_metric"] & frame["headline_protocol"] & ~frame["replica"]]
    assert {(r.task, r.arm): r.value for r in main.itertuples()} == {
        key: cell.score for key, cell in cells.items()}


def test_items_frame_pairs_arms_item_by_item(roots):
    items = ftbench.items_frame(["s0"], *roots)
    gsm = items[(items["task"] == "gsm8k") & ~items["replica"]]
    wide = gsm.pivot(index="item", columns="arm", values="outcome")
    assert len(wide) == 100 and list(wide.mean()) == [0.3, 0.5]
    csqa = items[(items["task"] == "commonsense_qa") & (items["arm"] == "free-k0p5")]
    assert csqa.groupby("z_protocol")["outcome"].mean().to_dict() == {"posterior": 0.4,
                                                                       "prior": 0.7}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_round_trip(roots, frame, fmt, tmp_path):
    pd.testing.assert_frame_equal(read_frame(write_frame(frame, tmp_path / f"r.{fmt}")), frame)
    items = ftbench.items_frame(["s0"], *roots)
    back = read_frame(write_frame(items, tmp_path / f"i.{fmt}"), items=True)
    pd.testing.assert_frame_equal(back, items)


def test_mixed_schema_versions_are_refused(tmp_path):
    for arm, version in (("baseline", 1), ("free-k0p5", 2)):
        r = _result("gsm8k", "math", "exact_match,strict-match", _outcomes(0.3))
        r["schema_version"] = version
        write_result(tmp_path / "run" / arm / "gsm8k.json", r)
    with pytest.raises(ReportError, match=r"mix schema versions \[1, 2\].*run/baseline/gsm8k"):
        ftbench.results_frame(["run"], tmp_path)
    out = runner.invoke(app, ["results", "run", "--results", str(tmp_path)])
    assert out.exit_code == 2 and "re-run `ftbench eval`" in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_results_command(roots, frame, tmp_path):
    results, models = roots
    args = ["--results", str(results), "--models", str(models)]
    md = runner.invoke(app, ["results", "s0", "--format", "md", *args])
    assert md.exit_code == 0, md.output
    lines = md.stdout.splitlines()
    assert lines[0].startswith("| run | arm |") and len(lines) == 2 + len(frame)
    out = tmp_path / "t.parquet"
    pq = runner.invoke(app, ["results", "s0", "--format", "parquet", "--out", str(out), *args])
    assert pq.exit_code == 0, pq.output
    pd.testing.assert_frame_equal(read_frame(out), frame)
    items = runner.invoke(app, ["results", "s0", "--items", *args])
    assert items.exit_code == 0 and items.stdout.startswith("run,arm,arch,kappa_bits")
    for bad, message in ((["s0", "--format", "xlsx"], "--format 'xlsx'; choose from"),
                         (["s0", "--format", "parquet"], "name a file with --out"),
                         (["nope"], "no results for run 'nope'")):
        r = runner.invoke(app, ["results", *bad, *args])
        assert r.exit_code == 2 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_report_writes_the_csv_beside_it_and_links_it(roots, frame, tmp_path):
    results, models = roots
    doc = build_report(report_inputs(["s0"], results, models), tmp_path / "figures",
                       table_csv=tmp_path / "results.csv")
    pd.testing.assert_frame_equal(read_frame(tmp_path / "results.csv"), frame)
    from ftbench.report.render import to_html, to_markdown

    assert "[results.csv](results.csv)" in to_markdown(doc, tmp_path).read_text()
    assert '<a href="results.csv">results.csv</a>' in to_html(doc, tmp_path).read_text()
