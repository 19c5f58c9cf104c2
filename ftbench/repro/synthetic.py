"""The paper's synthetic experiment (section 4.1; recipe section 8) as a regression check.

A baseline and one Free model per kappa are trained on the synthetic source with
`train_pair`. Each arm then generates from one prompt '<letter>>' in two ways:

- independent Z: every sample draws its own Z sequence from the prior (uniform codes);
- shared Z: samples come in groups, and a group shares one whole Z sequence (prompt
  slots included), drawn once from the same prior.

Both modes impose Z explicitly through `generate(..., shared_z_BS=...)`, so sharing is
the only difference between them (the prompt's two slots get prior Z in both, not the
posterior of section 5: the encoder sees only '<letter>>' there, and an asymmetry between
the modes would blur the comparison). Tokens are sampled at temperature 1.

What a working latent shows (paper, Fig. 4): at 1/8 bit per token, samples sharing Z
agree on the target's position and differ in noise; at 1 bit they agree on both; at 8
bits generation breaks; at 1/64 bit, sharing Z changes little.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import platform
import random
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import torch

from ftbench.config.schema import PairConfig
from ftbench.data import synthetic
from ftbench.data.tokenizer import Tokenizer
from ftbench.model.binary_mapper import kl_to_uniform, sample_uniform_codes
from ftbench.model.factory import param_seed
from ftbench.objective import nats_to_bits

SCHEMA_VERSION = 1
DEFAULT_KAPPAS = (1 / 64, 1 / 8, 1.0, 8.0)
MEASURES, SAMPLES, FIGURE = "measures.json", "samples.json", "figure4.png"
BODY = synthetic.LENGTH
PROMPT_LEN = 2  # '<letter>>'
DOC_TOKENS = PROMPT_LEN + BODY + 1  # a training document and its end-of-text token
CHANCE_START = 1 / synthetic.N_STARTS  # two uniform starts coincide
CHANCE_DIST = (synthetic.N_STARTS ** 2 - 1) / (3 * synthetic.N_STARTS)  # E|s - s'|, uniform


FULL_SAMPLES = 512
"""Samples per arm and mode in the full experiment (64 groups of 8)."""
CI_SAMPLES = 256
CI_OVERRIDES = ("latent.kappas_bits=[0.125,1.0]", "model.latent_bits=2", "run.steps=1500",
                "run.name=synthetic-ci")
"""The CI-sized check: the baseline, 1/8 bit (the paper's position claim) and 1 bit (where,
at this scale, Z does fix the position: see README, "The synthetic experiment")."""


def default_config_path() -> Path:
    """configs/synthetic.yaml of the working directory, else the one shipped with ftbench."""
    from ftbench.resources import ResourceError, config_path

    try:
        path = config_path("synthetic")
    except ResourceError as e:
        raise ReproError(f"{e}; or pass --config") from None
    if path is None:
        raise ReproError("no configs/synthetic.yaml here or among ftbench's configs; "
                         "pass --config")
    return path


class ReproError(ValueError):
    """A bad request (kappas, sample counts, a config that cannot host the task)."""


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Parsed:
    """One generated sample, read against the task's grammar."""

    text: str
    right_length: bool
    """Prompt + 64 characters, then the end-of-text token (nothing more, nothing less)."""
    start: int | None
    """`synthetic.target_start`: first visible target character, if the sample passes it."""
    starts: frozenset[int]
    """Starts s of an 8-long target consistent with the sample: body[s:s+8] holds only the
    letter or '!' and covers every visible letter. Empty means malformed."""
    noise: frozenset[int]
    """Body positions of '!' (empty unless right_length)."""

    @property
    def well_formed(self) -> bool:
        return self.start is not None and bool(self.starts)


def parse_sample(text: str, ended: bool = True) -> Parsed:
    """`text` is the prompt plus the generated characters before the end-of-text token;
    `ended` says whether that token came (right after the 64th character)."""
    right_length = ended and len(text) == PROMPT_LEN + BODY
    start = synthetic.target_start(text) if right_length else None
    starts: frozenset[int] = frozenset()
    noise: frozenset[int] = frozenset()
    if right_length:
        body = text[PROMPT_LEN:]
        noise = frozenset(i for i, ch in enumerate(body) if ch == "!")
        if start is not None:
            letter = text[0]
            seen = [i for i, ch in enumerate(body) if ch == letter]
            first, last = seen[0], seen[-1]
            L = synthetic.TARGET_LEN
            starts = frozenset(
                s for s in range(max(0, last - L + 1), min(first, synthetic.N_STARTS - 1) + 1)
                if "_" not in body[s:s + L])
    return Parsed(text, right_length, start, starts, noise)


# --------------------------------------------------------------------------- measures


def _jaccard(a: frozenset, b: frozenset) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def pair_rates(groups: Sequence[Sequence[Parsed]]) -> dict:
    """Rates over all pairs of samples within each group (pairs pooled over groups).

    - pos_agree: pairs of well-formed samples whose targets are consistent with one
      common start (their `starts` intersect);
    - pos_agree_exact: pairs of well-formed samples with the same first visible target
      character (noise on a target's first letter moves it);
    - noise_agree: mean Jaccard index of the '!' positions, over pairs of right-length
      samples (1 when both have none);
    - identical: pairs of right-length samples with the same text;
    - pos_dist: mean |start_a - start_b| (first visible target characters) over pairs of
      well-formed samples: coarse position information shows here before exact agreement
      does (two uniform starts: (57^2 - 1) / (3 * 57) = 19.0 apart on average).
    """
    pos = pos_exact = n_pos = dist = 0
    noise = 0.0
    same = n_len = 0
    for group in groups:
        for a, b in itertools.combinations(group, 2):
            if a.well_formed and b.well_formed:
                n_pos += 1
                pos += bool(a.starts & b.starts)
                pos_exact += a.start == b.start
                dist += abs(a.start - b.start)
            if a.right_length and b.right_length:
                n_len += 1
                noise += _jaccard(a.noise, b.noise)
                same += a.text == b.text
    ratio = lambda num, den: num / den if den else None  # noqa: E731
    return {"pos_agree": ratio(pos, n_pos), "pos_agree_exact": ratio(pos_exact, n_pos),
            "noise_agree": ratio(noise, n_len), "identical": ratio(same, n_len),
            "pos_dist": ratio(dist, n_pos), "pos_pairs": n_pos, "length_pairs": n_len}


def collision_mi_bits(p_shared: float | None, p_indep: float | None) -> float | None:
    """Order-2 (collision) mutual information log2(P(same | shared Z) / P(same | indep Z)).

    With p(x|z) the position distribution under Z = z, P(same | shared) = E_z sum_x
    p(x|z)^2 and P(same | indep) = sum_x p(x)^2, both estimated without bias by pair
    agreement rates. It is >= 0 in expectation (convexity), 0 when Z says nothing about
    the position, and log2(57) = 5.83 bits when Z fixes a uniformly spread position.
    It is not Shannon's I(Z; X), but it is zero, or maximal, in the same cases.
    """
    if not p_shared or not p_indep:
        return None
    return math.log2(p_shared / p_indep)


def rates(parsed: Sequence[Parsed]) -> dict:
    n = len(parsed)
    return {"n": n,
            "well_formed": sum(p.well_formed for p in parsed) / n if n else None,
            "right_length": sum(p.right_length for p in parsed) / n if n else None}


def sample_measures(indep: Sequence[Parsed], shared_groups: Sequence[Sequence[Parsed]] | None
                    ) -> dict:
    """Everything the table reports for one arm, from its parsed samples.

    Independent-Z pairs are all pairs of independent samples (one group); shared-Z pairs
    are the pairs inside each group.
    """
    out = {"indep": {**rates(indep), **pair_rates([indep])}}
    if shared_groups is not None:
        flat = [p for g in shared_groups for p in g]
        out["shared"] = {**rates(flat), **pair_rates(shared_groups),
                         "groups": len(shared_groups),
                         "group_size": max((len(g) for g in shared_groups), default=0)}
        out["mi_pos_bits"] = collision_mi_bits(out["shared"]["pos_agree_exact"],
                                               out["indep"]["pos_agree_exact"])
    return out


def data_reference(n: int, seed: int) -> dict:
    """The same measures on n real samples of one letter: what 'chance' is for the
    independent-Z rates (the model would match it if it learnt the task exactly)."""
    rng = random.Random(param_seed(seed, "repro/data-reference"))
    letter = rng.choice(synthetic.LETTERS)
    texts = []
    while len(texts) < n:
        text = synthetic.sample(rng)
        texts.append(letter + text[1:].replace(text[0], letter))
    return sample_measures([parse_sample(t) for t in texts], None)["indep"]


# --------------------------------------------------------------------------- sampling


def prompt_letter(seed: int, arm: str) -> str:
    """One prompt per arm, as in the paper's figure; fixed by (seed, arm)."""
    return random.Random(param_seed(seed, f"repro/prompt/{arm}")).choice(synthetic.LETTERS)


def _decode_rows(tok: Tokenizer, prompt: str, rows: list[list[int]]) -> list[Parsed]:
    out = []
    for row in rows:
        ended = bool(row) and row[-1] == tok.eot_id
        body = row[:-1] if ended else row
        out.append(parse_sample(prompt + tok.decode(body), ended=ended and len(body) == BODY))
    return out


@torch.no_grad()
def generate_study(model, tok: Tokenizer, letter: str, groups: int, group_size: int,
                   seed: int, batch: int = 256) -> tuple[list[Parsed], list[list[Parsed]] | None]:
    """(independent samples, shared-Z groups); the baseline, without Z, gets no groups.

    groups * group_size samples in each mode. Z and tokens come from separate generators
    seeded by (seed, mode); the Z of a group is one prior draw for the whole sequence.
    """
    from ftbench.inference.generation import SamplingConfig, generate

    prompt = f"{letter}>"
    prompt_ids = tok.encode(prompt)
    if len(prompt_ids) != PROMPT_LEN:
        raise ReproError(f"the tokenizer does not split {prompt!r} into {PROMPT_LEN} tokens; "
                         "the synthetic study needs data.tokenizer.kind=char")
    sampling = SamplingConfig(max_new_tokens=BODY + 1, temperature=1.0,
                              stop_token_ids=(tok.eot_id,))
    total = PROMPT_LEN + BODY + 1
    n = groups * group_size
    is_free = getattr(model, "arch", "baseline") == "free"
    device = next(model.parameters()).device

    def run(mode: str, z_NS: torch.Tensor | None) -> list[Parsed]:
        token_gen = torch.Generator().manual_seed(param_seed(seed, f"repro/{mode}/tokens"))
        parsed = []
        for s in range(0, n, batch):
            e = min(s + batch, n)
            out = generate(model, [prompt_ids] * (e - s), sampling, pad_id=tok.pad_id,
                           token_generator=token_gen,
                           shared_z_BS=None if z_NS is None else z_NS[s:e].to(device))
            parsed += _decode_rows(tok, prompt, out.tokens)
        return parsed

    if not is_free:
        return run("indep", None), None
    bits = model.cfg.latent_bits
    z_gen = torch.Generator().manual_seed(param_seed(seed, "repro/indep/z"))
    z_indep = sample_uniform_codes((n, total), bits, torch.device("cpu"), z_gen)
    z_gen = torch.Generator().manual_seed(param_seed(seed, "repro/shared/z"))
    z_group = sample_uniform_codes((groups, total), bits, torch.device("cpu"), z_gen)
    z_shared = z_group.repeat_interleave(group_size, dim=0)
    indep = run("indep", z_indep)
    flat = run("shared", z_shared)
    return indep, [flat[g * group_size:(g + 1) * group_size] for g in range(groups)]


@torch.no_grad()
def measured_kl_bits(model, tok: Tokenizer, n_docs: int, seed: int) -> float:
    """Mean KL(Q(Z_t|S) || prior) per token in bits, on fresh documents laid out as in
    training (a document and its end-of-text token per sequence)."""
    rng = random.Random(param_seed(seed, "repro/kl-docs"))
    rows = [tok.encode(synthetic.sample(rng)) + [tok.eot_id] for _ in range(n_docs)]
    total, count = 0.0, 0
    for s in range(0, n_docs, 128):
        x = torch.tensor(rows[s:s + 128], device=next(model.parameters()).device)
        kl = kl_to_uniform(model.latent_logits(x))
        total += float(kl.sum())
        count += kl.numel()
    return nats_to_bits(total / count)


# --------------------------------------------------------------------------- the run


def parse_kappas(text: str) -> list[float]:
    """'1/64,1/8,1,8' or '0.015625,0.125' -> bits per token, in the given order."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(Fraction(item))
        except (ValueError, ZeroDivisionError):
            raise ReproError(f"--kappas: {item!r} is not a number or fraction "
                             "(e.g. 1/64,1/8,1,8)") from None
        if not value > 0 or not math.isfinite(value):
            raise ReproError(f"--kappas: {item!r} must be > 0 bits per token")
        out.append(value)
    if not out:
        raise ReproError("--kappas: give at least one value, e.g. 1/64,1/8,1,8")
    if len(set(out)) != len(out):
        raise ReproError(f"--kappas: repeated value in {text!r}")
    return out


def kappa_text(bits: float | None) -> str:
    """1/64, 1/8, 1, 8 as the paper writes them."""
    if bits is None:
        return "-"
    f = Fraction(bits)  # exact: 1/64 is a binary fraction, 0.3 is not
    return str(f) if f.denominator <= 1024 else f"{bits:g}"


def check_config(cfg: PairConfig) -> None:
    """The study reads the data layout it relies on; fail early with the field to change."""
    if [s.kind for s in cfg.data.sources] != ["synthetic"]:
        raise ReproError("data.sources: the synthetic study needs exactly one source of "
                         "kind synthetic")
    if cfg.data.tokenizer.kind != "char":
        raise ReproError("data.tokenizer.kind: the synthetic study needs the char tokenizer")
    if cfg.model.max_seq_len < DOC_TOKENS:
        raise ReproError(f"model.max_seq_len: needs >= {DOC_TOKENS} (prompt, body, end of text)")


def _arm_process(config_file: str, name: str) -> None:
    """One arm of the pair, trained and exported in this process (see train_in_parallel).

    The same steps as train_pair's loop for one arm, on the data the parent prepared."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ftbench.config.loader import load_pair_config
    from ftbench.data.budget import planned_tokens
    from ftbench.data.pipeline import data_directory, open_prepared
    from ftbench.training.arms import pair_arms
    from ftbench.training.distributed import DistContext
    from ftbench.training.export import save_pretrained
    from ftbench.training.loop import train_arm
    from ftbench.training.pair import arm_fingerprint, recorded_config, run_dir

    torch.set_num_threads(1)
    cfg = load_pair_config(config_file)
    root = run_dir(cfg)
    data = open_prepared(data_directory(cfg.data, cfg.run.seed, planned_tokens(cfg),
                                        root / "data"))
    if data is None:
        raise ReproError(f"{root / 'data'}: the prepared data is missing or incomplete")
    (arm,) = [a for a in pair_arms(cfg, data.tokenizer.vocab_size) if a.name == name]
    fingerprint = arm_fingerprint(cfg, arm, data.meta["key"])
    torch.manual_seed(cfg.run.seed)
    ctx = DistContext()
    result = train_arm(arm, cfg, data.train, data.val, root / name, ctx, fingerprint,
                       log=lambda line: print(line, flush=True))
    state = get_model_state_dict(result.model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))
    info = {"tokens_per_s": result.tokens_per_s, "mfu": result.mfu,
            "peak_memory_bytes": result.peak_memory_bytes, "wall_s": result.wall_s,
            "final_val": result.final_val, "world_size": ctx.world, "device": str(ctx.device)}
    save_pretrained(state, arm.model, arm.arch, data.tokenizer, root / name, extra={
        "arm": arm.name, "kappa_bits": arm.kappa_bits, "steps": result.steps,
        "seed": cfg.run.seed, "data_key": data.meta["key"], "fingerprint": fingerprint,
        "summary": info,
        "pair_config": dataclasses.asdict(recorded_config(cfg, data.tokenizer.vocab_size))})
    print(f"{name}: exported to {root / name}", flush=True)


def train_in_parallel(cfg: PairConfig, jobs: int, log: Callable[[str], None] = print) -> dict:
    """Every arm of `cfg`, `jobs` arms at a time, each in its own process with one torch
    thread; returns train_pair's summary.

    The arms are independent once the data is prepared (their initial weights, data order
    and Z noise come from seeded generators, not from global state), so each process
    exports the weights that train_pair would. The data is prepared here first; then
    train_pair, finding every arm exported, records the run and reads the summaries back.
    Arms already exported with the same settings are not trained again.
    """
    import os
    import subprocess
    import sys
    import tempfile

    from ftbench.config.loader import dump_pair_config
    from ftbench.data.pipeline import prepare_for_run
    from ftbench.training.arms import pair_arms
    from ftbench.training.distributed import DistContext
    from ftbench.training.pair import (PAIR_YAML_HEADER, _finished, arm_fingerprint,
                                       recorded_config, run_dir, train_pair)

    if jobs < 1:
        raise ReproError(f"--jobs must be >= 1, got {jobs}")
    root = run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    data = prepare_for_run(cfg, log=log)
    # An arm exported with other settings stops the run here, before any training.
    key = data.meta["key"]
    names = [a.name for a in pair_arms(cfg, data.tokenizer.vocab_size)
             if not _finished(root / a.name, arm_fingerprint(cfg, a, key), cfg, key)]
    if names:
        recorded = recorded_config(cfg, data.tokenizer.vocab_size)
        tmp = root / "pair.yaml.tmp"
        tmp.write_text(PAIR_YAML_HEADER + dump_pair_config(recorded))
        tmp.replace(root / "pair.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="ftbench-repro-") as tmpdir:
        config_file = Path(tmpdir) / "config.yaml"
        config_file.write_text(dump_pair_config(cfg))
        pending, running, failed = list(names), {}, []
        if names:
            log(f"training {len(names)} arm(s), up to {jobs} at a time, one process each: "
                f"{', '.join(names)}")
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    name = pending.pop(0)
                    running[name] = subprocess.Popen(
                        [sys.executable, "-c", "import sys; from ftbench.repro.synthetic "
                         "import _arm_process; _arm_process(sys.argv[1], sys.argv[2])",
                         str(config_file), name], env=env)
                for name, proc in list(running.items()):
                    if proc.poll() is not None:
                        del running[name]
                        if proc.returncode:
                            failed.append(f"{name} (exit status {proc.returncode})")
                time.sleep(0.2)
        finally:  # interrupted (Ctrl-C): no arm keeps training in the background
            for proc in running.values():
                proc.kill()
                proc.wait()
    if failed:
        raise ReproError(f"training failed for {', '.join(failed)}; the output above says "
                         f"why. Finished arms in {root} are kept and reused on the next run")
    # Everything is exported now: train_pair checks each export against its fingerprint
    # and returns the summaries without training.
    return train_pair(cfg, log=log, ctx=DistContext())


def run_synthetic(cfg: PairConfig, out: Path, *, groups: int = 64, group_size: int = 8,
                  kl_docs: int = 512, sample_seed: int | None = None, size: str = "custom",
                  log: Callable[[str], None] = print, jobs: int = 1) -> dict:
    """Train every arm of `cfg` (skipping arms already trained with the same settings under
    <run.out_dir>/<run.name>/), run the sampling study and write out/measures.json,
    out/samples.json and out/figure4.png.

    `jobs` > 1 trains that many arms at once, each in its own process (train_in_parallel).
    `size` ("full", "ci" or "custom") is recorded so that reports
    can flag a reduced run. Returns the measures (the content of measures.json).
    """
    from ftbench.repro.figure import write_figure
    from ftbench.report.render import write_atomic
    from ftbench.training.distributed import DistContext
    from ftbench.training.export import load_pretrained
    from ftbench.training.pair import run_dir, train_pair

    check_config(cfg)
    if groups < 1 or group_size < 2:
        raise ReproError(f"need groups >= 1 and group_size >= 2, got {groups} and {group_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg.run.seed if sample_seed is None else sample_seed
    t0 = time.perf_counter()
    if jobs > 1:
        summary = train_in_parallel(cfg, jobs, log=log)
    else:
        summary = train_pair(cfg, log=log, ctx=DistContext())
    t_train = time.perf_counter() - t0

    arms, samples = [], {}
    for name in summary:
        t_arm = time.perf_counter()
        model, tok, meta = load_pretrained(run_dir(cfg) / name)
        letter = prompt_letter(seed, name)
        indep, shared = generate_study(model, tok, letter, groups, group_size, seed)
        row = {"arm": name, "arch": meta["arch"], "kappa_bits": meta.get("kappa_bits"),
               "prompt": f"{letter}>", **sample_measures(indep, shared),
               "val": summary[name].get("final_val", {}),
               "train_wall_s": summary[name].get("wall_s")}
        if meta["arch"] == "free":
            row["kl_bits"] = measured_kl_bits(model, tok, kl_docs, seed)
            row["kl_collapsed"] = row["kl_bits"] < 0.01
        samples[name] = {
            "prompt": f"{letter}>", "indep": [p.text for p in indep],
            "indep_well_formed": [p.well_formed for p in indep],
            "shared": None if shared is None else [[p.text for p in g] for g in shared],
            "shared_well_formed": None if shared is None else
            [[p.well_formed for p in g] for g in shared]}
        row["sample_wall_s"] = time.perf_counter() - t_arm
        arms.append(row)
        log(f"{name}: {format_row(row)}")

    result = {
        "schema_version": SCHEMA_VERSION,
        "task": "synthetic (paper section 4.1)",
        "size": size,
        "seeds": {"train": cfg.run.seed, "sampling": seed},
        "kappas_bits": list(cfg.latent.kappas_bits),
        "settings": {"groups": groups, "group_size": group_size,
                     "samples_per_mode": groups * group_size, "temperature": 1.0,
                     "z": "prior (uniform codes) at every slot, prompt included; shared = one "
                          "Z sequence per group",
                     "kl_docs": kl_docs, "steps": cfg.run.steps, "batch_size": cfg.run.batch_size,
                     "latent_bits": cfg.model.latent_bits, "run": cfg.run.name,
                     "models": str(run_dir(cfg))},
        "chance": {"pos_agree_uniform": CHANCE_START, "pos_dist_uniform": CHANCE_DIST,
                   "data": data_reference(groups * group_size, seed)},
        "arms": arms,
        "config": dataclasses.asdict(cfg),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "threads": torch.get_num_threads(), "training_processes": jobs},
        "wall_s": {"train": t_train, "total": time.perf_counter() - t0},
    }
    write_atomic(out / SAMPLES, json.dumps(samples, indent=1))
    write_atomic(out / MEASURES, json.dumps(result, indent=1))
    log(f"figure: {write_figure(out)}")
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_row(row: dict) -> str:
    """One line of the progress log."""
    parts = [f"well-formed {_pct(row['indep']['well_formed'])}",
             f"pos agree indep {_pct(row['indep']['pos_agree'])}"]
    if "shared" in row:
        parts += [f"shared {_pct(row['shared']['pos_agree'])}",
                  f"noise agree shared {_pct(row['shared']['noise_agree'])} "
                  f"indep {_pct(row['indep']['noise_agree'])}",
                  f"KL {row['kl_bits']:.3f} bits/token"]
    return ", ".join(parts)
