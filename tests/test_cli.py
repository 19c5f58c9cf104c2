import json
import re

import pytest
from typer.testing import CliRunner

from ftbench.cli import _human, app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["info"], ["presets"], ["train-pair"], ["export"], ["eval"],
                                     ["report"], ["repro"], ["repro", "synthetic"], ["data"],
                                     ["data", "prepare"], ["data", "contamination"],
                                     ["data", "verify"], ["data", "trace"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("group", [[], ["repro"]])
def test_command_lists_give_whole_one_line_summaries(group):
    # click cuts a summary that does not fit its column to "..." (or at the first ". ");
    # every command's line must read as a whole sentence at the default 80 columns.
    result = runner.invoke(app, group + ["--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    listing = result.output.split("Commands:\n", 1)[1]
    rows = [line for line in listing.splitlines() if line.strip()]
    names = [line.split()[0] for line in rows if line.startswith("  ") and
             not line.startswith("   ")]
    assert len(names) == len(rows), rows  # a summary wrapped onto a second line
    assert len(names) >= (11 if not group else 1), names
    for line in rows:
        assert not line.rstrip().endswith("..."), line
        assert line.rstrip().endswith("."), line  # cut at a ". " would drop the end


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
    assert "vocab 4,096 from data.tokenizer.vocab_size" in result.output  # not the preset's
    dry = json.loads(runner.invoke(app, ["train-pair", "--size", "toy", "--dry-run", "--json",
                                         "--set", f"run.out_dir={tmp_path}"]).output)
    info = json.loads(runner.invoke(app, ["info", "--size", "toy", "--json"]).output)
    assert dry["arms"]["baseline"]["params"] == info["baseline"]["params_total"]
    assert dry["arms"]["free-k0p5"]["params"] == info["free"]["params_total"]
    assert not any(tmp_path.iterdir())
    assert set(dry["memory_plan"]["arms"]) == set(dry["arms"])


def test_dry_run_memory_plan_for_a_device_and_its_bad_input(tmp_path):
    result = runner.invoke(app, ["train-pair", "--size", "1.5b", "--dry-run", "--device-memory",
                                 "80GB", "--world-size", "8"])
    assert result.exit_code == 0, result.output
    assert "memory plan per rank: 8 rank(s), cuda bfloat16" in result.output
    assert "fit" in result.output and "<- this run" in result.output
    for args, message in ((["--device-memory", "lots"], "expected a number with a unit"),
                          (["--world-size", "3"], "not divisible by world_size=3")):
        result = runner.invoke(app, ["train-pair", "--size", "toy", "--dry-run", *args])
        assert result.exit_code == 2 and message in result.output, result.output


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


def _fake_arm(folder, **meta):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _fake_run(root):
    run = root / "models" / "toy"
    for arm in ("free-k0p5", "baseline"):
        _fake_arm(run / arm)
    (run / "data" / "abc").mkdir(parents=True)
    (run / "pair.yaml").write_text("size: toy\n")
    return run


def test_run_folders_and_shell_globs_resolve_to_the_runs_arms(tmp_path):
    from ftbench.api import resolve_model_dirs

    run = _fake_run(tmp_path)
    dirs, notes = resolve_model_dirs([run])
    assert dirs == [run / "baseline", run / "free-k0p5"]  # the baseline, the reference, first
    assert notes == [f"{run}: evaluating its arms baseline, free-k0p5"]
    globbed = sorted(run.glob("*"))  # what the shell makes of models/toy/*
    dirs, notes = resolve_model_dirs(globbed)
    assert dirs == [run / "baseline", run / "free-k0p5"]
    assert notes == [f"skipping {run / 'data'} (the run's training data)",
                     f"skipping {run / 'pair.yaml'} (the run's resolved config)"]
    dirs, _ = resolve_model_dirs([run / "free-k0p5", run, run / "baseline"])
    assert dirs == [run / "free-k0p5", run / "baseline"]  # each arm once, in the order given


def test_eval_refuses_what_is_neither_an_arm_nor_a_run_folder(tmp_path):
    run = _fake_run(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (run / "free-k1").mkdir()
    (run / "free-k1" / "metrics.jsonl").write_text("{}\n")  # training stopped before export
    for path, message in [
        (tmp_path / "elsewhere", "is neither an exported ftbench model .* nor a run folder"),
        (tmp_path / "notes.txt", "is neither an exported ftbench model"),
        (tmp_path / "absent", "does not exist; give exported arms"),
        (run / "free-k1", "free-k1 is an arm that was not exported"),
        (run, "arm\\(s\\) free-k1 did not finish training"),
        (run / "data", r"no exported arms to evaluate \(skipping .*data \(the run's training"),
    ]:
        result = runner.invoke(app, ["eval", str(path), "--suite", "gsm8k"])
        assert result.exit_code == 2, result.output
        assert re.search(message, result.output), result.output
        assert len(result.output.strip().splitlines()) == 1


def test_eval_refuses_weights_that_differ_from_their_recorded_hash(tmp_path):
    arm = _fake_arm(tmp_path / "toy" / "baseline", arch="baseline", weights_sha256="0" * 64)
    result = runner.invoke(app, ["eval", str(arm), "--suite", "gsm8k"])
    assert result.exit_code == 2
    assert "model.safetensors is not the file exported with this model" in result.output
    assert "--no-verify-weights" in result.output


def test_info_states_its_vocabulary_and_matches_the_trained_model(tmp_path):
    from safetensors.torch import load_file

    from ftbench.model import build_model, get_preset
    from ftbench.training.pair import train_pair
    from tests.training.helpers import tiny_pair_config

    result = runner.invoke(app, ["info", "--size", "toy"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("preset toy: vocabulary 4,096 (data.tokenizer.vocab_size "
                                    "in configs/toy.yaml); sequence length 128")
    toy = json.loads(runner.invoke(app, ["info", "--size", "toy", "--json"]).output)
    built = get_preset("toy").replace(vocab_size=4096)
    for arch in ("baseline", "free"):
        assert toy[arch]["params_total"] == sum(
            p.numel() for p in build_model(built, arch, device="meta").parameters())
    wide = json.loads(runner.invoke(app, ["info", "--size", "toy", "--vocab", "8192",
                                          "--json"]).output)
    assert wide["vocab_from"] == "--vocab"
    assert wide["baseline"]["params_total"] - toy["baseline"]["params_total"] == 4096 * 64
    # A trained run: the counts are those of the weights it holds.
    cfg = tiny_pair_config(tmp_path)
    train_pair(cfg, log=lambda *_: None)
    run = tmp_path / cfg.run.name
    data = json.loads(runner.invoke(app, ["info", str(run), "--json"]).output)
    for arm, arch in (("baseline", "baseline"), ("free-k0p5", "free")):
        weights = load_file(str(run / arm / "model.safetensors"))
        assert data[arch]["params_total"] == sum(t.numel() for t in weights.values()), arm
    assert data["vocab_size"] < 100 and "the trained model" in data["vocab_from"]
    assert data["seq_len"] == cfg.data.seq_len
    result = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "neither an exported arm" in result.output
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 2 and "give either --size NAME or a trained run" in result.output


def test_export_hf_refuses_a_non_empty_folder_and_force_replaces_only_an_export(tmp_path):
    import os
    import stat

    from ftbench.data.tokenizer import char_tokenizer
    from ftbench.model import build_model, get_preset
    from ftbench.training.export import save_pretrained

    cfg = get_preset("toy").replace(vocab_size=40, d_model=32, n_layers=2, n_heads=2,
                                    n_kv_heads=1, ffn_hidden=64, max_seq_len=32)
    arm = tmp_path / "models" / "toy" / "baseline"
    save_pretrained(build_model(cfg, "baseline", seed=1).state_dict(), cfg, "baseline",
                    char_tokenizer("abcdefgh"), arm)
    out = tmp_path / "hf"
    result = runner.invoke(app, ["export", str(arm), "--hf", str(out)])
    assert result.exit_code == 0, result.output
    first = {p.name for p in out.iterdir()}
    assert "model.safetensors" in first and "config.json" in first
    mask = os.umask(0)
    os.umask(mask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~mask}
    (out / "stray.bin").write_bytes(b"from another export")
    result = runner.invoke(app, ["export", str(arm), "--hf", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output and "--force" in result.output
    result = runner.invoke(app, ["export", str(arm), "--hf", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == first  # replaced whole, nothing mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "models"]  # no temp folders
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    result = runner.invoke(app, ["export", str(arm), "--hf", str(other), "--force"])
    assert result.exit_code == 2 and "not a Hugging Face export" in result.output
    assert (other / "thesis.tex").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["export", str(arm), "--hf", str(empty)]).exit_code == 0


def test_presets_and_info_give_the_same_counts():
    rows = {line.split()[0]: line.split() for line in
            runner.invoke(app, ["presets"]).output.splitlines()[1:-1]}
    for name in ("toy", "1.5b"):
        info = json.loads(runner.invoke(app, ["info", "--size", name, "--json"]).output)
        assert rows[name][5] == str(info["vocab_size"])
        assert rows[name][7] == _human(info["baseline"]["params_total"])
        assert rows[name][8] == _human(info["free"]["params_total"])
    assert rows["toy"][5] == "4096"  # configs/toy.yaml's tokenizer, not the preset's 8192


def test_latent_info_and_doctor_are_commands_with_clear_errors(tmp_path):
    result = runner.invoke(app, ["latent-info", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "is not an exported ftbench model" in result.output
    result = runner.invoke(app, ["doctor", "--size", "huge"])
    assert result.exit_code == 2 and "huge" in result.output


@pytest.mark.parametrize("config,world", [("configs/1.5b.yaml", 8), ("configs/8b.yaml", 64),
                                          ("configs/8b-1t.yaml", 64)])
def test_the_papers_configs_fit_as_shipped(config, world):
    result = runner.invoke(app, ["train-pair", "--config", config, "--dry-run", "--json",
                                 "--world-size", str(world), "--device-memory", "80GB"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["memory_plan"]
    setting = "checkpointing" if plan["run_checkpointing"] else "no_checkpointing"
    assert plan["dtype"] == "bfloat16" and plan["world_size"] == world
    for arm, row in plan["arms"].items():
        assert row[setting]["fits"], (arm, row[setting]["peak_bytes"], plan["usable_memory"])


def test_train_pair_refuses_what_does_not_fit_before_writing_anything(tmp_path, data_dir):
    """toy (16 x 128 tokens per step) planned at about 125 MiB: 64MB leaves room for a
    micro-batch of 4, 8MB for none."""
    common = ["train-pair", "--size", "toy", "--data-dir", str(data_dir),
              "--set", f"run.out_dir={tmp_path}"]
    result = runner.invoke(app, [*common, "--device-memory", "64MB"])
    assert result.exit_code == 2, result.output
    assert "the run does not fit" in result.output and "nothing was written" in result.output
    assert "loss transient" in result.output and "activations" in result.output
    assert "fix: --set run.grad_accum=4 (micro-batch 4 sequences" in result.output
    result = runner.invoke(app, [*common, "--device-memory", "8MB"])
    assert result.exit_code == 2, result.output
    assert "no micro-batch fits: one sequence per device needs" in result.output
    assert not any(tmp_path.iterdir())
    # --dry-run plans for a GPU, whose context and allocator take 1 GiB + 10 % first.
    dry = runner.invoke(app, [*common, "--dry-run", "--device-memory", "64MB"])
    assert dry.exit_code == 2 and "0 B usable of 61.04 MiB" in dry.output, dry.output
    assert "no micro-batch fits" in dry.output
