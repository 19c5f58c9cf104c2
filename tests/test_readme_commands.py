"""The README's "Commands" section, pasted: every command runs at toy size or is listed
in INFEASIBLE with the reason.

Commands run in-process (CliRunner) from an empty working directory, in README order,
so that the toy pair the README trains is the one the README's export, eval, report and
data commands then read. Only sizes and limits are changed, each by a rule below that
names what it changes; a command that no rule covers fails the test, so a new README
command cannot go untested by accident.
"""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from ftbench.cli import app

ROOT = Path(__file__).resolve().parents[1]

# A toy pair in seconds: 2 steps of 4 sequences of 64 tokens, a BPE trained on 100k
# characters (the toy run's own tokenizer recipe, smaller). Every command that reads the
# toy run's data must carry the same settings, or it would look for another data build.
TOY = ["--set", "run.steps=2", "--set", "run.batch_size=4", "--set", "data.seq_len=64",
       "--set", "data.train_tokens=20000", "--set", "data.tokenizer.train_chars=100000",
       "--set", "run.eval_every=2", "--set", "run.checkpoint_every=2",
       "--set", "run.val_batches=1"]
# The benchmarks at toy size: one cheap log-likelihood task (two items, two Z draws), and
# for the oracle a generative task too. The full suites are tests/evaluation's subject.
EVAL_TOY = ["--suite", "commonsense_qa", "--limit", "2", "--z-draws", "2"]
ORACLE_TOY = ["--suite", "commonsense_qa,gsm8k", "--limit", "2"]

INFEASIBLE = {
    "ftbench report toy-s0 toy-s1 toy-s2":
        "needs three seeds of the toy pair trained and evaluated (three times this test's "
        "cost); several runs are aggregated in tests/report",
    "ftbench repro synthetic":
        "trains for 22 minutes on one thread (--ci: about 9); `make test-science` runs the "
        "--ci run against its bounds",
    "python -m ftbench.evaluation.lm_eval_main --model ftbench --model_args "
    "path=models/toy/baseline --tasks ...":
        "`--tasks ...` is a placeholder, and lm-eval's CLI indexes its 14k tasks first "
        "(15-50 s); tests/evaluation/test_lm_eval_main.py runs this entry point",
    "python -m ftbench.evaluation.lm_eval_main --model hf --model_args pretrained=out/ "
    "--tasks ...":
        "the same placeholder; tests/evaluation/test_lm_eval_main.py runs lm-eval's hf model "
        "through this entry point on an exported toy baseline (parity with --model ftbench)",
    "pip install ftbench[tensorboard]":
        "make setup installs the tensorboard extra; tests/training/test_trackers.py checks the "
        "message that names it when it is missing",
    "tensorboard --logdir models/toy":
        "starts a web server; tests/training/test_trackers.py reads the event files back with "
        "tensorboard's own reader",
    "ftbench doctor":
        "trains and times small models in several processes (25 s quiet, up to 3 min busy); "
        "tests/doctor/test_doctor.py runs it and checks every row",
    "ftbench data prepare --size 1.5b --workers 64":
        "the 1.5b mix is streamed from the Hugging Face hub (offline here) and is 47B tokens; "
        "the toy run's data is prepared by train-pair above",
}


def readme_commands(text: str) -> list[str]:
    """Command lines of the shell blocks (``` or ```bash) between '## Commands' and the next
    '## ' (```python blocks are examples for the reader's own scripts)."""
    section = re.search(r"^## Commands\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Commands' section"
    commands = []
    blocks, lang, lines = [], None, []
    for line in section.group(1).splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                if lang in ("", "bash", "sh"):
                    blocks.append("\n".join(lines) + "\n")
                lang = None
        elif lang is not None:
            lines.append(line)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(shlex.split(line, comments=True))
            if line:
                commands.append(line)
    return commands


def variants(command: str) -> list[list[str]]:
    """`[--json]` is optional: the command without it and with it."""
    argv = shlex.split(command)
    optional = [a for a in argv if a.startswith("[") and a.endswith("]")]
    bare = [a for a in argv if a not in optional]
    with_all = [a[1:-1] if a in optional else a for a in argv]
    return [bare, with_all] if optional else [bare]


def toy_size(argv: list[str], data_dir: Path) -> list[list[str]]:
    """The ftbench arguments that run `argv` at toy size; each rule says what it changes."""
    if argv[0] == "torchrun":  # one process here: the same command without the launcher
        argv = ["ftbench", *argv[argv.index("ftbench") + 1:]]
    assert argv[0] == "ftbench", f"classify this README command: {shlex.join(argv)}"
    args = [str(data_dir) if a == "DIR" else a for a in argv[1:]]
    command = args[0] if args[0] != "data" else f"data {args[1]}"
    size = args[args.index("--size") + 1] if "--size" in args else None
    if command == "train-pair" and "--dry-run" not in args:
        if size == "toy":
            return [args + TOY]
        return [args + ["--dry-run"]]  # beyond CPU size: config, budget and arms only
    if command == "eval":
        argv = [a for a in args if "*" not in a] + sorted(glob.glob(next(
            (a for a in args if "*" in a), "")))  # the shell's expansion
        if "--model" in args:
            return [_replace(argv, "--suite", ORACLE_TOY)]
        return [_replace(_replace(argv, "--limit", []), "--suite", EVAL_TOY)]
    if command in ("data verify", "data trace", "data contamination"):
        # The toy run's data stands for the 1.5b's, which needs the hub.
        args = _replace(args, "--size", ["--size", "toy", "--data-dir", str(data_dir), *TOY])
        if command == "data trace":
            args[2] = "1000"  # a token index inside the toy run's 20,000 training tokens
        return [_dedupe_data_dir(args)]
    return [args]


def _replace(args: list[str], option: str, new: list[str]) -> list[str]:
    """args with `option VALUE` replaced by `new` (or dropped if new is empty)."""
    if option not in args:
        return args
    i = args.index(option)
    return args[:i] + new + args[i + 2:]


def _dedupe_data_dir(args: list[str]) -> list[str]:
    out, seen = [], False
    i = 0
    while i < len(args):
        if args[i] == "--data-dir":
            if not seen:
                out += args[i:i + 2]
            seen = True
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def test_readme_command_blocks_run_at_toy_size(tmp_path, monkeypatch, data_dir):
    commands = readme_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 10, commands
    assert set(INFEASIBLE) <= set(commands), set(INFEASIBLE) - set(commands)  # none stale
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # --config configs/small.yaml
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FTBENCH_DATA_DIR", raising=False)  # only what the command says
    runner = CliRunner()
    ran = []
    for command in commands:
        if command in INFEASIBLE:
            continue
        for argv in variants(command):
            for args in toy_size(argv, data_dir):
                result = runner.invoke(app, args)
                assert result.exit_code == 0, (command, args, result.output[-3000:])
                ran.append((command, args, result.output))

    def output_of(readme_prefix: str) -> str:
        """The output of the one README command that starts so (all its variants)."""
        matches = {c for c, _, _ in ran if c.startswith(readme_prefix)}
        assert len(matches) == 1, (readme_prefix, matches)
        return "".join(out for c, _, out in ran if c in matches)

    # What the commands made, read back.
    assert "toy" in output_of("ftbench presets")
    info = output_of("ftbench info --size 1.5b")  # both variants: without and with --json
    assert "vocabulary 131,072" in info and '"params_total": 1511609856' in info
    arms = ["baseline", "free-k0p5"]
    for arm in arms:
        assert (tmp_path / "models/toy" / arm / "model.safetensors").is_file()
        assert (tmp_path / "results/toy" / arm / "commonsense_qa.json").is_file()
    evaluated = output_of("ftbench eval models/toy")
    if "ftbench eval models/toy/*" in " ".join(commands):  # the shell's glob: data/ skipped
        assert "note: skipping models/toy/data (the run's training data)" in evaluated
    else:  # the run folder: all its arms
        assert "note: models/toy: evaluating its arms baseline, free-k0p5" in evaluated
    assert (tmp_path / "out/config.json").is_file()  # export --hf out/
    assert (tmp_path / "out-free/modeling_free_transformer.py").is_file()  # a Free arm
    assert "commonsense_qa" in output_of("ftbench results toy")
    assert (tmp_path / "reports/toy/report.html").is_file()
    assert "1.0000" in output_of("ftbench eval --model oracle")
    assert "match their recorded sizes and hashes" in output_of("ftbench data verify")
    assert "commonsense_qa" in output_of("ftbench data contamination")
    assert "tokens needed" in output_of("ftbench train-pair --config configs/small.yaml")
    assert not (tmp_path / "models/small").exists()  # --dry-run: nothing trained
    plan = output_of("ftbench train-pair --size 1.5b --dry-run --world-size 8")
    assert "memory plan per rank: 8 rank(s), cuda bfloat16" in plan and "fit" in plan
    assert "vocabulary" in output_of("ftbench info models/toy")
    assert "MI" in output_of("ftbench latent-info models/toy/free-k0p5")
    assert (tmp_path / "models/toy/free-k0p5/latent_info.json").is_file()


# The shell blocks elsewhere: the README outside "## Commands", docs/*.md and examples/*.md.
# A line that the Commands section also holds runs in the test above. Every other line is
# either listed here with why it does not run as part of the suite, or is not ftbench's
# (make, pip, scripts: see below); its ftbench arguments are still parsed by the CLI, so an
# option renamed or a value of the wrong type in a document fails this test.
NOT_RUN = {
    "ftbench data mirror data-mirror":
        "downloads the mirror from the internet; tests/data/test_mirror_build.py builds it "
        "from a local server",
    "ftbench doctor --size 1.5b --layers 2 --seq 4096 --batch 2":
        "the 1.5B shape's 2^17 vocabulary at 4,096 tokens: a GPU check (benchmarks/gpu_check.sh "
        "runs it); tests/doctor runs the doctor at CPU sizes",
    "ftbench train-pair --size 1.5b --dry-run --world-size 8":
        "the Commands section runs the same dry run with --device-memory 80GB",
    "torchrun --nproc_per_node=8 -m ftbench eval models/1.5b --suite code,math,qa "
    "--data-dir DIR":
        "needs a trained 1.5B pair and 8 GPUs; tests/evaluation/test_distributed_eval.py runs "
        "eval under torchrun at toy size",
    "ftbench report 1.5b":
        "needs the 1.5B pair's results; the Commands section runs `ftbench report toy`",
}
DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix()
                                  for p in (ROOT / "docs").glob("*.md")),
             *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.md"))]


def shell_lines(text: str) -> list[str]:
    """Command lines of the ``` / ```bash / ```sh blocks (continuations joined); other
    languages (python, bibtex, yaml) are not commands."""
    lines = []
    for match in re.finditer(r"^```([\w-]*)\n(.*?)^```", text, re.M | re.S):
        if match.group(1) in ("", "bash", "sh", "console", "shell"):
            for line in match.group(2).replace("\\\n", " ").splitlines():
                line = " ".join(shlex.split(line, comments=True))
                if line:
                    lines.append(line)
    return lines


def ftbench_args(line: str) -> list[str] | None:
    """The arguments after `ftbench` (also under torchrun or python -m), else None."""
    argv = shlex.split(line)
    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return None
    if argv[0] == "ftbench":
        return argv[1:]
    if argv[0] in ("torchrun", "python", "python3") and "ftbench" in argv:
        i = argv.index("ftbench")
        if argv[i - 1] == "-m":
            return argv[i + 1:]
    return None


def parse_only(args: list[str]):
    """Parse `ftbench ARGS` as the CLI would, without running the command."""
    import typer.main

    command = typer.main.get_command(app)
    ctx = command.make_context("ftbench", list(args))
    while hasattr(command, "resolve_command"):  # a group: descend into the subcommand
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def test_documents_shell_blocks_run_or_say_why_not():
    readme = (ROOT / "README.md").read_text()
    run_above = set(readme_commands(readme))
    makefile = (ROOT / "Makefile").read_text()
    seen, problems = set(), []
    for doc in DOCUMENTS:
        for line in shell_lines((ROOT / doc).read_text()):
            seen.add(line)
            argv = shlex.split(line)
            args = ftbench_args(line)
            if args is not None:
                if line not in run_above and line not in NOT_RUN:
                    problems.append(f"{doc}: `{line}` is neither run by the Commands test nor "
                                    "listed in NOT_RUN with a reason")
                if "..." not in args:  # a placeholder: lm_eval_main's own CLI
                    try:
                        parse_only([a for a in args if not a.startswith("[")])
                    except Exception as e:  # click's UsageError and its subclasses
                        problems.append(f"{doc}: `{line}`: {e}")
            elif argv[0] == "make":
                targets = [a for a in argv[1:] if "=" not in a]
                problems += [f"{doc}: `{line}`: no target {t}" for t in targets
                             if not re.search(rf"^{re.escape(t)}:", makefile, re.M)]
            elif argv[0] in ("pip", "python3", "tensorboard", "wandb", "sha256sum"):
                pass  # installers and other tools: not ftbench's to test
            else:  # a script of this repository, run by bash, sbatch or a variable prefix
                scripts = [a for a in argv if "/" in a and not a.startswith(("-", "/"))
                           and "=" not in a]
                problems += [f"{doc}: `{line}`: no file {s}" for s in scripts
                             if not (ROOT / s).exists()]
    assert not problems, "\n".join(problems)
    assert set(NOT_RUN) <= seen, set(NOT_RUN) - seen  # none stale


def test_the_document_check_catches_a_renamed_option():
    # The parser the check above relies on refuses what the CLI refuses.
    import pytest

    with pytest.raises(Exception, match="No such option: --sizee"):
        parse_only(["data", "prepare", "--sizee", "1.5b"])
    with pytest.raises(Exception, match="integer"):
        parse_only(["train-pair", "--size", "1.5b", "--world-size", "eight"])
    assert parse_only(["doctor", "--simulate", "--size", "1.5b"]).params["simulate"] is True
