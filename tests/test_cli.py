import json

import pytest
from typer.testing import CliRunner

from ftbench.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["info"], ["presets"], ["train-pair"], ["export"], ["eval"],
                                     ["report"], ["repro"], ["repro", "synthetic"], ["data"],
                                     ["data", "prepare"], ["data", "contamination"],
                                     ["data", "verify"], ["data", "trace"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_info_json_reports_overhead():
    result = runner.invoke(app, ["info", "--size", "1.5b", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["baseline"]["params_total"] == 1_511_609_856
    assert data["free"]["params_post_sampler"] == 2**16 * 1536
    # One extra block of 28: the paper's ~3.6 % (parameters, without W_post: 3.1 %).
    assert 0.030 < data["free_overhead"]["params_without_post_sampler"] < 0.037
    assert 0.030 < data["free_overhead"]["forward_flops"] < 0.040
    assert data["free_overhead"]["decode_flops"] == 0


def test_unknown_preset_is_a_clear_error():
    result = runner.invoke(app, ["info", "--size", "1.5"])
    assert result.exit_code == 2
    assert "unknown preset '1.5'" in result.output and "1.5b" in result.output


def test_report_bad_format_and_missing_results_are_clear(tmp_path):
    result = runner.invoke(app, ["report", "toy", "--format", "pdf", "--results", str(tmp_path)])
    assert result.exit_code == 2 and "choose from html, md" in result.output
    result = runner.invoke(app, ["report", "toy", "--results", str(tmp_path)])
    assert result.exit_code == 2 and "no results for run 'toy'" in result.output


def test_train_pair_dry_run_prints_arms_and_trains_nothing(tmp_path):
    result = runner.invoke(app, ["train-pair", "--size", "toy", "--dry-run",
                                 "--set", f"run.out_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "free-k0p5" in result.output
    assert "tokens per step" in result.output
    assert not any(tmp_path.iterdir())


def test_train_pair_bad_input_exits_with_a_message(tmp_path):
    result = runner.invoke(app, ["train-pair", "--size", "toy", "--set", "optim.lrr=1"])
    assert result.exit_code == 2 and "optim.lrr: unknown key" in result.output
    result = runner.invoke(app, ["train-pair"])
    assert result.exit_code == 2 and "--size" in result.output
    result = runner.invoke(app, ["train-pair", "--size", "toy", "--data-dir",
                                 str(tmp_path / "absent"), "--set", f"run.out_dir={tmp_path}"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_dry_run_plans_the_papers_token_budgets_without_repetition():
    result = runner.invoke(app, ["train-pair", "--size", "1.5b", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)["data"]
    assert d["tokens_needed"] == 90_000 * 128 * 4096 + 1 == d["tokens_planned"]  # 47.2B
    assert d["epochs"] <= 1.0 and not d["warnings"] and d["tokens_prepared"] is None
    assert all(r.get("source_epochs", 0) < 1 for r in d["sources"])
    result = runner.invoke(app, ["train-pair", "--config", "configs/8b-1t.yaml", "--dry-run",
                                 "--json"])
    d = json.loads(result.output)["data"]
    assert d["tokens_planned"] >= 1e12 and d["epochs"] <= 1.0 and not d["warnings"]
    result = runner.invoke(app, ["train-pair", "--size", "1.5b", "--dry-run"])
    assert "tokens needed 47,185,920,001" in result.output and "epochs 1.000" in result.output


def test_repetition_guard_stops_train_pair_before_anything_is_written(tmp_path):
    result = runner.invoke(app, ["train-pair", "--size", "toy", "--set", f"run.out_dir={tmp_path}",
                                 "--set", "data.train_tokens=100000"])
    assert result.exit_code == 2, result.output
    assert "3.07 epochs, over data.max_epochs=1.0" in result.output
    assert "--set data.max_epochs=3.07" in result.output
    assert not any(tmp_path.iterdir())


def test_data_commands_prepare_verify_trace_and_measure_contamination(tmp_path, data_dir):
    common = ["--size", "toy", "--data-dir", str(data_dir), "--set", f"run.out_dir={tmp_path}",
              "--set", "run.steps=20", "--set", "data.tokenizer.train_chars=300000"]
    result = runner.invoke(app, ["data", "prepare", *common, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "40,961 training tokens" in result.output  # 20 x 16 x 128 + 1
    result = runner.invoke(app, ["data", "verify", *common])
    assert result.exit_code == 0 and "match their recorded sizes and hashes" in result.output
    result = runner.invoke(app, ["data", "trace", "40960", *common])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)) == {"source", "doc_id", "token_in_doc", "shard"}
    result = runner.invoke(app, ["data", "contamination", *common])
    assert result.exit_code == 0, result.output
    assert "humanevalplus" in result.output and "/ 14,042" in result.output
    dry = json.loads(runner.invoke(app, ["train-pair", "--dry-run", "--json", *common]).output)
    assert dry["data"]["tokens_prepared"] == 40_961 and dry["vocab_size"] == 4096
    assert sum(r["docs"] for r in dry["data"]["sources"]) > 6
    result = runner.invoke(app, ["data", "verify", "--size", "toy", "--set",
                                 f"run.out_dir={tmp_path / 'none'}"])
    assert result.exit_code == 2 and "run `ftbench data prepare`" in result.output


@pytest.mark.parametrize("content,message", [
    (b"just a string\n", "not a string"), (b"- toy\n", "not a list"),
    (b"size: toy\n\xff\xfe\n", "not UTF-8 text"), (b"", "is empty"),
])
@pytest.mark.parametrize("extra", [[], ["--set", "run.steps=3"], ["--data-dir", "."]])
def test_config_errors_are_one_line_with_exit_2(tmp_path, content, message, extra):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    for command in (["train-pair"], ["data", "verify"]):
        result = runner.invoke(app, [*command, "--config", str(path), *extra])
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: config:") and message in lines[0]
