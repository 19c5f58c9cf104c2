"""YAML <-> typed dataclasses, with strict dotted overrides (`--set optim.lr=3e-4`).

Unknown keys, wrong types and bad values fail with a message that names the field; an
unknown key also lists the close ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from ftbench.config.schema import PairConfig
from ftbench.model.config import ConfigError
from ftbench.model.presets import get_preset


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


# Keys of earlier versions, with what replaced them.
RENAMED = {"total_chars": "data budgets are in tokens now: use data.train_tokens (0 prepares "
                          "exactly what the run consumes) instead of data.total_chars"}


def _check_keys(cls, data: dict, where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key in RENAMED and key not in names:
            raise ConfigError(f"{where}.{key}: {RENAMED[key]}")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown key{hint} (known: {', '.join(names)})")


def _build(cls, data: dict, where: str, base=None):
    _check_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], sub)
            if f.default is not dataclasses.MISSING and kwargs[f.name] == f.default:
                # The default object itself: data keys and fingerprints hash configs as
                # JSON, where 0 and 0.0 differ, and a reloaded pair.yaml states every
                # default that the original config left out (`tokens_available: 0`).
                kwargs[f.name] = f.default
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def pair_config_from_dict(data: dict) -> PairConfig:
    """Build and validate a PairConfig; `model` fields override the `size` preset."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    _check_keys(PairConfig, data, "")
    size = _coerce(data.pop("size", "toy"), str, "size")
    preset = get_preset(size)
    model_data = data.pop("model", {}) or {}
    if not isinstance(model_data, dict):
        raise ConfigError(f"model: expected a mapping, got {model_data!r}")
    model = _build(type(preset), model_data, "model", base=preset)
    rule, steps_given = _pop_token_rule(data)
    rest = _build(PairConfig, data, "")
    cfg = dataclasses.replace(rest, size=size, model=model).validate()
    if rule is None:
        return cfg
    steps = steps_for_tokens_per_param(cfg, rule)
    if steps_given is not None and steps_given != steps:
        raise ConfigError(
            f"run.steps: {steps_given} disagrees with data.tokens_per_param={rule:g}, which "
            f"gives {steps:,} steps ({rule:g} x {baseline_params(cfg):,} baseline parameters "
            f"/ {cfg.run.batch_size * cfg.data.seq_len:,} tokens per step); drop run.steps, or "
            "set data.tokens_per_param=0 to choose run.steps yourself")
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=steps)).validate()


TOKEN_RULE_KEY = "tokens_per_param"


def _pop_token_rule(data: dict) -> tuple[float | None, int | None]:
    """data.tokens_per_param (taken out of `data`) and run.steps as given. The rule is an
    input only: the resolved config (and pair.yaml) states the steps it gives, so the
    data key and checkpoint fingerprints depend on the steps, not on how they were chosen."""
    section = data.get("data")
    if not isinstance(section, dict) or TOKEN_RULE_KEY not in section:
        return None, None
    section = dict(section)
    rule = _coerce(section.pop(TOKEN_RULE_KEY), float, f"data.{TOKEN_RULE_KEY}")
    data["data"] = section
    if rule < 0:
        raise ConfigError(f"data.{TOKEN_RULE_KEY}: must be >= 0 (0: run.steps as given), "
                          f"got {rule:g}")
    run = data.get("run")
    steps = None
    if isinstance(run, dict) and "steps" in run:
        steps = _coerce(run["steps"], int, "run.steps")
    return (rule or None), steps


def baseline_params(cfg: PairConfig) -> int:
    """The baseline's parameters, embedding included, with the vocabulary the run will
    have: data.tokenizer.vocab_size for a BPE (fixed before the tokenizer is trained, so
    the steps never change afterwards), the model's otherwise."""
    from ftbench.model.accounting import model_cost

    tok = cfg.data.tokenizer
    vocab = tok.vocab_size if tok.kind == "bpe" else cfg.model.vocab_size
    return model_cost(cfg.model.replace(vocab_size=vocab), "baseline",
                      cfg.data.seq_len).params_total


def steps_for_tokens_per_param(cfg: PairConfig, tokens_per_param: float) -> int:
    """The fewest optimiser steps whose tokens (steps x batch x seq_len) reach
    tokens_per_param x the baseline's parameters."""
    per_step = cfg.run.batch_size * cfg.data.seq_len
    return max(1, math.ceil(tokens_per_param * baseline_params(cfg) / per_step))


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: cannot parse the value ({e})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a raw config mapping (validation happens when it is built)."""
    data = yaml.safe_load(yaml.safe_dump(data)) if data else {}
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:  # `run:` with nothing under it reads as null
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def read_config_file(path: str | os.PathLike) -> dict:
    """The top-level mapping of a config file; every way it can be unusable is a ConfigError.

    Checked here, before any override is applied: an override walks the mapping, so a file
    holding a string or a list would otherwise fail deep inside with a Python error.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: no such file {str(p)!r}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise ConfigError(f"config: {p} is not UTF-8 text (line {line}, byte {e.start}: "
                          f"{e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {p} ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # PyYAML's messages span lines; one line keeps the error a single readable line.
        raise ConfigError(f"config: {p} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        # An empty file would otherwise train a full default run that nobody asked for.
        raise ConfigError(f"config: {p} is empty (or only comments); give at least "
                          "`size: <preset>`, e.g. copy configs/toy.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"config: {p} must hold a mapping of sections (size, model, data, "
                          f"optim, latent, run) at the top level, not a "
                          f"{_yaml_kind(data)}; see configs/toy.yaml")
    return data


def _yaml_kind(value) -> str:
    return {str: "string", list: "list", int: "number", float: "number",
            bool: "boolean"}.get(type(value), type(value).__name__)


def load_pair_config(path: str | os.PathLike | None = None, *, size: str | None = None,
                     overrides: list[str] = ()) -> PairConfig:
    """A config file (or the preset `size` alone), then dotted overrides, validated."""
    data: dict = read_config_file(path) if path is not None else {}
    if size is not None:
        data["size"] = size
    return pair_config_from_dict(apply_overrides(data, list(overrides)))


def size_config_path(size: str) -> Path | None:
    """configs/<size>.yaml: the working directory's configs/ first (a user's edited copy),
    then the configs shipped with ftbench (ftbench.resources); None if neither has it."""
    from ftbench.resources import config_path

    return config_path(size)


def dump_pair_config(cfg: PairConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
