"""Typed run configs: one `PairConfig` describes a whole matched pair.

YAML is only the serialisation (see `ftbench.config.loader`). Every field has a default
and a docstring; `validate()` names the first bad field and what it allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftbench.model.config import ConfigError, ModelConfig

SOURCE_KINDS = ("jsonl", "parquet", "text", "python_tree", "stdlib", "synthetic", "gsm8k", "hf")
TOKENIZER_KINDS = ("bpe", "char")
DTYPES = ("auto", "float32", "bfloat16")
# Live dashboards (ftbench.training.trackers); metrics.jsonl is always written.
TRACKERS = ("tensorboard", "wandb")


@dataclass
class SourceConfig:
    """One stream of the training mix."""

    kind: str = "jsonl"
    """jsonl: .jsonl or .jsonl.gz files (a file or a folder) with a text field; parquet:
    .parquet files (a file or a folder) with a text column; text: .txt files; python_tree: every
    *.py under a folder; stdlib: the running interpreter's standard library; gsm8k: the
    GSM8K train split as 'Question: ...\\nAnswer: ...'; synthetic: the paper's toy task
    (section 8); hf: a Hugging Face dataset streamed online (see `hf_id`)."""
    path: str = ""
    """File or folder. Relative paths resolve against data.data_dir."""
    weight: float = 1.0
    """Share of the training tokens drawn from this source (weights are normalised)."""
    text_field: str = "text"
    """The field (jsonl) or column (parquet, hf) that holds the text."""
    hf_id: str = ""
    """Dataset ID for kind=hf, e.g. 'HuggingFaceFW/fineweb-edu'."""
    hf_config: str = ""
    hf_split: str = "train"
    hf_revision: str = ""
    """A hub commit or tag, so that a rerun reads the same bytes (empty: the newest)."""
    shuffle_buffer: int = 10_000
    """kind=hf: documents held by the seeded shuffle buffer inside each file."""
    max_docs: int = 0
    """Cap on training documents taken from this source (0: no cap)."""
    tokens_available: float = 0
    """The source's size in tokens as its dataset card states it (0: unknown). Only for
    planning: --dry-run shows the epochs over each source before anything is downloaded;
    the builder counts the real tokens and stops with an error if a source runs out."""
    docs_available: float = 0
    """The source's document count from its dataset card (0: unknown); for --dry-run."""


@dataclass
class TokenizerConfig:
    kind: str = "bpe"
    """bpe: byte-level BPE trained on the run's own mix; char: one token per character
    (the synthetic task)."""
    vocab_size: int = 8192
    min_frequency: int = 2
    train_chars: int = 4_000_000
    """Characters of the mix the BPE is trained on."""


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(kind="synthetic")])
    data_dir: str = ""
    """Local data mirror, laid out as in docs/data-mirror.md. Empty: $FTBENCH_DATA_DIR,
    else online."""
    train_tokens: int = 0
    """Unique training tokens to prepare. 0: exactly what the run consumes
    (run.steps x run.batch_size x seq_len, plus one), so no token is seen twice."""
    max_epochs: float = 1.0
    """Repetition guard: a run that would read its training tokens more often than this
    refuses to start."""
    val_fraction: float = 0.01
    """Share of documents held out for validation, chosen by a hash of their id."""
    unit_mb: float = 16.0
    """Size of one unit of work of the builder (a slice of a source read and tokenised as
    a whole): bounds each worker's memory and sets the granularity of the seeded sample."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seq_len: int = 256


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio at the last step."""
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    fused: bool = True
    """AdamW's fused kernel: one pass over each tensor, in place (FSDP2's sharded
    parameters included); false runs the foreach path, which needs a temporary the size
    of the parameters."""


@dataclass
class LatentConfig:
    kappas_bits: list[float] = field(default_factory=lambda: [0.5])
    """Free bits per token, one Free arm each (the paper's grid: 0.25, 0.5, 1, 2). H and
    the injection reading are model fields (model.latent_bits, model.kv_injection)."""


@dataclass
class RunConfig:
    name: str = "toy"
    """Outputs go to models/<name>/<arm>/."""
    seed: int = 0
    steps: int = 200
    batch_size: int = 8
    """Sequences per optimiser step, over all ranks and accumulation steps."""
    grad_accum: int = 1
    """Micro-batches per optimiser step on each rank: a rank runs batch_size / ranks /
    grad_accum sequences at a time. It does not change the run (the same global batch,
    the same Z per sequence), so it may differ when a run is resumed on other hardware."""
    timeout_minutes: float = 30.0
    """A collective (all-reduce, barrier) that waits longer aborts the job instead of
    hanging it. Ranks waiting for rank 0's host work (data preparation, the export) wait
    up to 12 hours."""
    checkpoint_every: int = 100
    eval_every: int = 50
    val_batches: int = 4
    out_dir: str = "models"
    dtype: str = "auto"
    """auto: bfloat16 autocast on GPU, float32 on CPU."""
    compile: bool = False
    """torch.compile each transformer block (decoder and encoder)."""
    activation_checkpointing: bool = False
    checkpoint_policy: str = "full"
    """With activation_checkpointing: full (each block's forward is run again in the
    backward) or selective (its matmul and attention outputs are kept; norms, RoPE and
    the SwiGLU's pointwise ops are recomputed: more memory, less time)."""
    shard_ranks: int = 0
    """Ranks each parameter is sharded over (FSDP2); the others hold replicas (HSDP). 0:
    one node's ranks when the job spans nodes, all ranks on one node."""
    matched_control: bool = False
    """Also train an (L+1)-layer baseline, parameter-matched to the encoder block."""
    snapshot_every: int | None = None
    """Steps between evaluation snapshots: each arm's consolidated weights (the run's
    dtype, no optimiser state) in <arm>/snapshots/step-NNNNNN/, kept whatever the
    checkpoints' retention, for `ftbench eval --snapshots`. Unset: about 30 over the run
    (run.steps / 30, rounded); 0: none. The final export is the run's last point."""
    trackers: list[str] = field(default_factory=list)
    """Live dashboards fed the same scalars as metrics.jsonl (always written), from rank 0:
    tensorboard (<arm>/tb/, `pip install 'ftbench[tensorboard]'`) and wandb (<arm>/wandb/,
    offline unless WANDB_MODE says otherwise; `pip install 'ftbench[wandb]'`)."""


@dataclass
class PairConfig:
    size: str = "toy"
    """Preset the model starts from (see `ftbench presets`); `model` overrides its fields."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "PairConfig":
        self.model.validate("free")
        d, o, l, r = self.data, self.optim, self.latent, self.run
        if not d.sources:
            raise ConfigError("data.sources: at least one source is needed")
        for i, src in enumerate(d.sources):
            where = f"data.sources[{i}]"
            if src.kind not in SOURCE_KINDS:
                raise ConfigError(f"{where}.kind: {src.kind!r} is not one of "
                                  f"{', '.join(SOURCE_KINDS)}")
            if src.weight <= 0:
                raise ConfigError(f"{where}.weight: must be > 0, got {src.weight}")
            if src.kind in ("jsonl", "parquet", "text", "python_tree") and not src.path:
                raise ConfigError(f"{where}.path: a {src.kind} source needs a path")
            if src.kind == "hf" and not src.hf_id:
                raise ConfigError(f"{where}.hf_id: a hf source needs a dataset ID")
        if d.tokenizer.kind not in TOKENIZER_KINDS:
            raise ConfigError(f"data.tokenizer.kind: {d.tokenizer.kind!r} is not one of "
                              f"{', '.join(TOKENIZER_KINDS)}")
        if d.train_tokens < 0:
            raise ConfigError(f"data.train_tokens: must be >= 0 (0: what the run consumes), "
                              f"got {d.train_tokens}")
        if not d.max_epochs > 0:
            raise ConfigError(f"data.max_epochs: must be > 0, got {d.max_epochs}")
        if not d.unit_mb > 0:
            raise ConfigError(f"data.unit_mb: must be > 0, got {d.unit_mb}")
        if not 0 <= d.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction: must be in [0, 0.5), got {d.val_fraction}")
        if d.seq_len < 2 or d.seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len: must be in 2..model.max_seq_len="
                              f"{self.model.max_seq_len}, got {d.seq_len}")
        if not o.lr > 0 or not 0 <= o.min_lr_ratio <= 1 or o.warmup_steps < 0:
            raise ConfigError(f"optim: need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0; "
                              f"got lr={o.lr}, min_lr_ratio={o.min_lr_ratio}, "
                              f"warmup_steps={o.warmup_steps}")
        if not l.kappas_bits or any(k < 0 for k in l.kappas_bits):
            raise ConfigError(f"latent.kappas_bits: need one or more values >= 0 (in bits), "
                              f"got {l.kappas_bits}")
        if len(set(l.kappas_bits)) != len(l.kappas_bits):
            raise ConfigError(f"latent.kappas_bits: duplicate values in {l.kappas_bits}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "eval_every",
                     "val_batches"):
            if getattr(r, name) < 1:
                raise ConfigError(f"run.{name}: must be >= 1, got {getattr(r, name)}")
        if not r.timeout_minutes > 0:
            raise ConfigError(f"run.timeout_minutes: must be > 0, got {r.timeout_minutes}")
        if r.batch_size % r.grad_accum:
            raise ConfigError(f"run.batch_size: {r.batch_size} is not divisible by "
                              f"run.grad_accum={r.grad_accum}")
        if r.checkpoint_policy not in ("full", "selective"):
            raise ConfigError(f"run.checkpoint_policy: {r.checkpoint_policy!r} is not one of "
                              "full, selective")
        if r.snapshot_every is not None and r.snapshot_every < 0:
            raise ConfigError(f"run.snapshot_every: must be >= 0 (0: no snapshots; unset: "
                              f"about 30 over the run), got {r.snapshot_every}")
        if r.shard_ranks < 0:
            raise ConfigError(f"run.shard_ranks: must be >= 0 (0: one node's ranks), got "
                              f"{r.shard_ranks}")
        if r.dtype not in DTYPES:
            raise ConfigError(f"run.dtype: {r.dtype!r} is not one of {', '.join(DTYPES)}")
        for i, name in enumerate(r.trackers):
            if name not in TRACKERS:
                raise ConfigError(f"run.trackers[{i}]: {name!r} is not one of "
                                  f"{', '.join(TRACKERS)}")
        if len(set(r.trackers)) != len(r.trackers):
            raise ConfigError(f"run.trackers: duplicate names in {r.trackers}")
        return self
