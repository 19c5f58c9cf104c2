"""The arms of a pair: the baseline, one Free model per kappa, an optional control."""

from __future__ import annotations

from dataclasses import dataclass

from ftbench.config.schema import PairConfig
from ftbench.model.config import ModelConfig
from ftbench.objective import bits_to_nats


@dataclass(frozen=True)
class Arm:
    name: str
    arch: str
    model: ModelConfig
    kappa_bits: float | None = None

    @property
    def kappa_nats(self) -> float | None:
        return None if self.kappa_bits is None else bits_to_nats(self.kappa_bits)


def kappa_label(bits: float) -> str:
    return f"{bits:g}".replace(".", "p")


def pair_arms(cfg: PairConfig, vocab_size: int) -> list[Arm]:
    """All arms share the model config (with the tokenizer's vocabulary) and the seed."""
    model = cfg.model.replace(vocab_size=vocab_size)
    arms = [Arm("baseline", "baseline", model)]
    arms += [Arm(f"free-k{kappa_label(k)}", "free", model, k) for k in cfg.latent.kappas_bits]
    if cfg.run.matched_control:
        # One more decoder block matches the encoder block's parameters (W_post aside).
        arms.append(Arm("baseline-control", "baseline", model.replace(n_layers=model.n_layers + 1)))
    return arms
