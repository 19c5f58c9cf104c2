import json

from ftbench.report.contamination import contamination_blocks
from ftbench.report.document import Paragraph, Table


def write_run(root, run, key, other_key=None):
    arm = root / run / "baseline"
    arm.mkdir(parents=True)
    (arm / "config.json").write_text(json.dumps({"data_key": key}))
    for k, n in ((key, 3), (other_key, 99)):
        if k is None:
            continue
        d = root / run / "data" / k
        d.mkdir(parents=True)
        (d / "contamination.json").write_text(json.dumps({
            "fraction_scanned": 1.0, "training_tokens": 307201,
            "benchmarks": {"humanevalplus": {"items": 164, "contaminated": n,
                                             "share": n / 164, "examples": []}}}))


def test_section_shows_the_arms_data_only_and_names_unmeasured_runs(tmp_path):
    write_run(tmp_path, "toy", "aaa", other_key="bbb")  # bbb: data of another config
    (tmp_path / "bare" / "baseline").mkdir(parents=True)
    blocks = contamination_blocks(tmp_path, ["toy", "bare", "absent"])
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert table.rows == [["toy", "HumanEval+", "3 / 164", "1.83%", "100% of 307,201"]]
    notes = [b.text for b in blocks if isinstance(b, Paragraph)]
    assert any("Not measured for `bare`" in t and "ftbench data contamination" in t
               for t in notes)
    assert contamination_blocks(tmp_path, ["absent"]) == []
