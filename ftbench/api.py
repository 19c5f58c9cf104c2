"""Typed entry points behind the CLI; tests call these directly."""

from __future__ import annotations

from pathlib import Path

from ftbench.model.accounting import model_cost, overhead
from ftbench.model.factory import build_model
from ftbench.model.presets import get_preset


def model_info(size: str | None = None, seq_len: int | None = None, *,
               vocab_size: int | None = None, trained: Path | None = None) -> dict:
    """Parameters and FLOPs per token of a baseline and its Free model.

    The model is what `train-pair --size NAME` trains (configs/NAME.yaml, else the bare
    preset), or the model a run folder / arm folder holds (`trained`). The vocabulary and
    the sequence length are resolved the same way and stated with their origin, because
    both change the counts: the toy preset's 8192-token embedding alone is a third of its
    parameters, and the toy run's tokenizer has 4096.

    Analytic counts are cross-checked against the real modules, built on the meta
    device (no memory is allocated, so the 8B preset is as cheap as the toy).
    """
    if (size is None) == (trained is None):
        from ftbench.model.config import ConfigError

        raise ConfigError("info: give either --size NAME or a trained run folder (e.g. "
                          "models/toy)" + (", not both" if size is not None else ""))
    if trained is not None:
        cfg, label, vocab_from, seq, seq_from = _trained_model(Path(trained))
    else:
        cfg, label, vocab_from, seq, seq_from = planned_model(size)
    if vocab_size is not None:
        if vocab_size < 2:
            from ftbench.model.config import ConfigError

            raise ConfigError(f"--vocab: must be at least 2, got {vocab_size}")
        cfg, vocab_from = cfg.replace(vocab_size=vocab_size), "--vocab"
    if seq_len is not None:
        seq, seq_from = seq_len, "--seq-len"
    costs = {}
    for arch in ("baseline", "free"):
        cost = model_cost(cfg, arch, seq)
        built = sum(p.numel() for p in build_model(cfg, arch, device="meta").parameters())
        if built != cost.params_total:
            raise AssertionError(f"analytic parameter count {cost.params_total} != "
                                 f"module count {built} for {label}/{arch}")
        costs[arch] = cost.as_dict()
    return {
        "size": label,
        "config": {k: v for k, v in vars(cfg).items()},
        "vocab_size": cfg.vocab_size,
        "vocab_from": vocab_from,
        "seq_len": costs["baseline"]["seq_len"],
        "seq_len_from": seq_from,
        "baseline": costs["baseline"],
        "free": costs["free"],
        "free_overhead": overhead(model_cost(cfg, "baseline", seq),
                                  model_cost(cfg, "free", seq)),
    }


def planned_model(size: str):
    """(model config, label, vocabulary origin, sequence length, its origin) of what
    `train-pair --size NAME` trains."""
    preset = get_preset(size)  # an unknown size fails here with the list of presets
    path = find_size_config(size)
    if path is None:
        return (preset, size, "the preset's", preset.max_seq_len, "the preset's max_seq_len")
    from ftbench.config.loader import load_pair_config

    cfg = load_pair_config(path)
    where = f"configs/{path.name}"
    model, vocab_from = cfg.model, "the preset's"
    tok = cfg.data.tokenizer
    if tok.kind == "bpe":
        # The BPE is trained to this size; the preset's vocab_size is never used by a run.
        model = model.replace(vocab_size=tok.vocab_size)
        vocab_from = f"data.tokenizer.vocab_size in {where}"
    else:
        vocab_from = (f"the preset's: {where} uses a {tok.kind} tokenizer, whose size is known "
                      "once the data is prepared (see `ftbench info models/<run>`)")
    return model, cfg.size, vocab_from, cfg.data.seq_len, f"data.seq_len in {where}"


def _trained_model(path: Path):
    import json

    from ftbench.model.config import ConfigError, ModelConfig

    arms = exported_arms(path) if not (path / "config.json").is_file() else [path]
    if not arms:
        raise ConfigError(f"info: {path} is neither an exported arm (config.json, "
                          "model.safetensors) nor a run folder holding arms (models/<run>)")
    arm = arms[0]
    try:
        meta = json.loads((arm / "config.json").read_text())
        cfg = ModelConfig(**meta["model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"info: {arm / 'config.json'} is not an ftbench export ({e})") from None
    seq = ((meta.get("pair_config") or {}).get("data") or {}).get("seq_len")
    # The report's overhead table reads the same fields, so the two agree.
    return (cfg, str(path), f"the trained model, {arm / 'config.json'}",
            seq or cfg.max_seq_len,
            f"the run's data.seq_len, {arm / 'config.json'}" if seq else "the model's max_seq_len")


def is_exported_arm(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _is_unfinished_arm(path: Path) -> bool:
    return path.is_dir() and not is_exported_arm(path) and (
        (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir())


def exported_arms(run: Path) -> list[Path]:
    """A run folder's exported arms, the baseline first (the reference of every gain)."""
    if not run.is_dir():
        return []
    arms = [p for p in run.iterdir() if is_exported_arm(p)]
    return sorted(arms, key=lambda p: (not p.name.startswith("baseline"), p.name != "baseline",
                                       p.name))


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "pair.yaml").is_file() or bool(exported_arms(path)))


def resolve_model_dirs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Arm folders to evaluate, from arms and run folders, and notes on what was skipped.

    `models/<run>/*` is what a shell makes of the documented command: it also matches the
    run's data/ and pair.yaml, which are skipped (with a note) because they belong to a
    run folder. Anything else that is not an arm is an error: guessing there would
    evaluate fewer models than the user named.
    """
    from ftbench.training.export import ModelLoadError

    dirs: list[Path] = []
    notes: list[str] = []
    for path in paths:
        if is_exported_arm(path):
            found = [path]
        elif _is_unfinished_arm(path):
            raise ModelLoadError(
                f"{path} is an arm that was not exported (its training did not finish): run "
                "the same `ftbench train-pair` command again to finish it, or leave it out")
        elif _is_run_folder(path):
            found = exported_arms(path)
            unfinished = [p.name for p in sorted(path.iterdir()) if _is_unfinished_arm(p)]
            if unfinished:
                raise ModelLoadError(
                    f"{path}: arm(s) {', '.join(unfinished)} did not finish training; run the "
                    "same `ftbench train-pair` command again, or name the finished arms")
            if not found:
                raise ModelLoadError(f"{path} is a run folder without exported arms; train "
                                     "them with `ftbench train-pair`")
            notes.append(f"{path}: evaluating its arms {', '.join(p.name for p in found)}")
        elif path.exists() and _is_run_folder(path.parent):
            what = ("the run's training data" if path.name == "data" else
                    "the run's resolved config" if path.name == "pair.yaml" else "not an arm")
            notes.append(f"skipping {path} ({what})")
            continue
        elif not path.exists():
            raise ModelLoadError(f"{path} does not exist; give exported arms "
                                 "(models/<run>/<arm>) or run folders (models/<run>)")
        else:
            raise ModelLoadError(
                f"{path} is neither an exported ftbench model (config.json and "
                "model.safetensors) nor a run folder holding them (models/<run>); train one "
                "with `ftbench train-pair`")
        for d in found:
            if d.resolve() not in {x.resolve() for x in dirs}:
                dirs.append(d)
    if not dirs:
        raise ModelLoadError(f"no exported arms to evaluate ({'; '.join(notes)}); give "
                             "models/<run> or models/<run>/<arm>")
    return dirs, notes


def find_size_config(size: str) -> Path | None:
    """configs/<size>.yaml from the working directory, else the configs shipped with ftbench."""
    from ftbench.config.loader import size_config_path

    return size_config_path(size)


def resolve_pair_config(config: Path | None, size: str | None, overrides: list[str],
                        data_dir: Path | None = None):
    """--config FILE, or --size NAME for configs/<NAME>.yaml, then --set and --data-dir."""
    from ftbench.config.loader import load_pair_config
    from ftbench.model.config import ConfigError
    from ftbench.resources import config_dirs

    if config is None and size is None:
        raise ConfigError("train-pair: give --config FILE or --size NAME (e.g. --size toy)")
    if config is None:
        get_preset(size)  # an unknown size fails here with the list of presets
        config = find_size_config(size)
        if config is None:
            raise ConfigError(f"size: no configs/{size}.yaml found in "
                              f"{', '.join(str(d) for d in config_dirs())}")
    if data_dir is not None:
        overrides = [*overrides, f"data.data_dir={Path(data_dir).resolve()}"]
    return load_pair_config(config, overrides=overrides)


def run_train_pair(cfg, fail, device_memory: str | None = None) -> dict:
    """Train a pair, turning the errors a user can fix into one clear message."""
    from ftbench.data.errors import DataError
    from ftbench.training.checkpoint import CheckpointError
    from ftbench.training.loop import TrainingError
    from ftbench.training.memory_plan import MemoryPlanError
    from ftbench.training.pair import train_pair
    from ftbench.training.trackers import TrackerUnavailable

    try:
        return train_pair(cfg, device_memory=device_memory)
    except (DataError, CheckpointError, TrainingError, TrackerUnavailable,
            MemoryPlanError) as e:
        fail(str(e))


class ExportError(RuntimeError):
    """An export destination that cannot be written without losing or mixing files."""


def export_hf_atomic(model_dir: Path, out: Path, *, force: bool = False,
                     results_root: Path | None = None) -> Path:
    """A Hugging Face export (Llama for a baseline, trust_remote_code for a Free arm) into
    a sibling folder, moved into place once complete.

    Writing in place would leave a mix of two exports when the destination is not empty
    (and half of one after a crash). --force replaces only a folder that is itself a
    Hugging Face export by ftbench: a mistyped path must never delete unrelated files.
    """
    import os
    import shutil

    from ftbench.interop.hf_export import export_hf_any, is_hf_export
    from ftbench.training.export import publish_mode

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--hf {out}: is a file; give a folder")
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not force:
        raise ExportError(f"--hf {out}: the folder is not empty; give a new folder, or "
                          "--force to replace an earlier export there")
    if occupied and not is_hf_export(out):
        raise ExportError(f"--hf {out}: holds files that are not a Hugging Face export; "
                          "--force replaces only an earlier export. Give a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_hf_any(model_dir, tmp, results_root)
        for f in tmp.iterdir():
            publish_mode(f)
        if out.is_dir() and not occupied:
            out.rmdir()
        if occupied:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
