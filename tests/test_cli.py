import json

import pytest
from typer.testing import CliRunner

from ftbench.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["info"], ["presets"], ["train-pair"], ["export"], ["eval"],
                                     ["report"], ["repro"], ["repro", "synthetic"]])
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
