from pathlib import Path

import pytest

from ftbench.config import dump_pair_config, load_pair_config, pair_config_from_dict
from ftbench.model import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = load_pair_config(path)
    again = pair_config_from_dict(__import__("yaml").safe_load(dump_pair_config(cfg)))
    assert again == cfg


def test_model_fields_override_the_preset():
    cfg = load_pair_config(size="toy", overrides=["model.d_model=128", "optim.lr=1e-3",
                                                  "latent.kappas_bits=[0.25, 1]"])
    assert cfg.model.d_model == 128 and cfg.model.n_layers == 4  # rest of the toy preset
    assert cfg.optim.lr == 1e-3 and cfg.latent.kappas_bits == [0.25, 1.0]


@pytest.mark.parametrize("override,message", [
    (["optim.lrr=1"], r"optim.lrr: unknown key; did you mean lr"),
    (["optim.lr=fast"], r"optim.lr: expected a number"),
    (["run.steps=0"], r"run.steps: must be >= 1"),
    (["model.n_layers=5"], r"model.n_layers.*even"),
    (["data.tokenizer.kind=wordpiece"], r"data.tokenizer.kind.*bpe, char"),
    (["latent.kappas_bits=[-1]"], r"latent.kappas_bits"),
    (["run.compile=maybe"], r"run.compile: expected true or false"),
    (["nonsense"], r"expected KEY=VALUE"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pair_config(size="toy", overrides=override)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_pair_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pair_config(bad)
    bad.write_text("data: {sources: [{kind: arrow, path: x}]}\n")
    with pytest.raises(ConfigError, match=r"data.sources\[0\].kind: 'arrow'"):
        load_pair_config(bad)


def test_character_budget_of_earlier_versions_points_to_tokens(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data: {total_chars: 3000000}\n")
    with pytest.raises(ConfigError, match="data.total_chars: data budgets are in tokens now: "
                                          "use data.train_tokens"):
        load_pair_config(old)


@pytest.mark.parametrize("content,message", [
    (b"just a string\n", r"must hold a mapping .* not a string"),
    (b"- toy\n- small\n", r"must hold a mapping .* not a list"),
    (b"42\n", r"must hold a mapping .* not a number"),
    (b"size: toy\nrun: {name: caf\xe9}\n", r"is not UTF-8 text \(line 2, byte 25: b'\\xe9'\)"),
    (b"", r"is empty .*size: <preset>"),
    (b"# only a comment\n", r"is empty"),
])
@pytest.mark.parametrize("overrides", [[], ["run.steps=3"]])
def test_unusable_files_are_config_errors_with_or_without_overrides(tmp_path, content, message,
                                                                    overrides):
    # The overrides walk the mapping: they used to meet a string and raise AttributeError.
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_pair_config(path, overrides=overrides)


def test_an_empty_section_takes_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("size: toy\nrun:\n")
    assert load_pair_config(path, overrides=["run.steps=3"]).run.steps == 3


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_a_dumped_config_hashes_like_the_original(path):
    """pair.yaml states every default; reloaded, its data key and arm fingerprints must be
    the original's (JSON tells 0 from 0.0), or `--config models/<run>/pair.yaml` would look
    for another data build and call the trained arms foreign."""
    from ftbench.data.budget import planned_tokens
    from ftbench.data.pipeline import data_key
    from ftbench.training.arms import pair_arms
    from ftbench.training.pair import arm_fingerprint

    cfg = load_pair_config(path)
    again = pair_config_from_dict(__import__("yaml").safe_load(dump_pair_config(cfg)))
    key = data_key(cfg.data, cfg.run.seed, planned_tokens(cfg))
    assert data_key(again.data, again.run.seed, planned_tokens(again)) == key
    for a, b in zip(pair_arms(cfg, 1000), pair_arms(again, 1000)):
        assert arm_fingerprint(cfg, a, key) == arm_fingerprint(again, b, key)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_config_writes_the_run_its_size_names(path):
    # `train-pair --size NAME` writes models/<run.name>/ and `ftbench report NAME` reads
    # models/NAME and results/NAME: the two names must agree for every shipped config.
    assert load_pair_config(path).run.name == path.stem
