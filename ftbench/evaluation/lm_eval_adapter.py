"""lm-evaluation-harness adapter: both architectures as an lm-eval `TemplateLM`.

`FtbenchLM(path=models/<run>/<arm>)` scores log-likelihood requests through
`ftbench.evaluation.scoring` (shared contexts computed once, leak-free for Free models)
and generates with the KV cache, in batches. The Free model's Z protocol, draws, samples
and seed are constructor arguments and are reported by `protocol_record()` so that
results carry them.

One lm-eval pass gives one score per item; two kinds of replicas are kept for the passes
that follow (the runner makes them, lm-eval computes every metric of every pass):
- log-likelihood: every request is scored under all `protocols` (and all K draws) at
  once; `replay = "<protocol>"` answers a later pass from those scores;
- generation: every request gets `z_samples` samples at once, each with its own Z stream
  (seeded by the seed, the sample index and the prompt); `sample_index = i` answers a later
  pass with sample i.

Importing this module registers the model as "ftbench" with lm-eval, beside lm-eval's own
models; lm-eval's CLI does not import plugins, so use `python -m
ftbench.evaluation.lm_eval_main --model ftbench --model_args path=models/<run>/<arm> ...`
(or `--model hf ...`) to run lm-eval's CLI with it registered.

Generation length: a request may ask for more new tokens than the model's context leaves.
New tokens are capped at max_seq_len // 2 and the prompt keeps its last tokens (lm-eval's
HF backend refuses such requests instead). Every cap and truncation is counted in
`gen_limits` (`GenerationLimits.record()`), which `ftbench eval` stores in the results'
"generation" block, and is logged once per call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import torch
# lm-eval fills its registry with its own models only if the registry is empty at the
# first lookup; registering "ftbench" first would hide them ("no model for this name
# found! Supported model names: ftbench" for --model hf). Importing lm_eval.models first
# registers them (as lazy placeholders: cheap).
import lm_eval.models  # noqa: F401
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ftbench.evaluation.scoring import (BASELINE_KEY, FREE_Z_DRAWS, Score, ZProtocol,
                                        context_key, score_requests, stream_generator,
                                        truncate_contexts)
from ftbench.inference.generation import SamplingConfig, generate
from ftbench.training.distributed import DistContext, init_distributed
from ftbench.training.export import load_pretrained

log = logging.getLogger(__name__)


def resolve_device(device: str | None) -> str:
    """The device to load on: the one asked for if this machine has it, else CPU with a
    warning (as lm-eval's HFLM does; lm-eval's CLI asks for cuda:0 by default)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {device!r} is not a torch device (e.g. cpu, cuda, cuda:0)") \
            from None
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and (dev.index is None
                                            or dev.index < torch.cuda.device_count())
    elif dev.type == "mps":
        ok = torch.backends.mps.is_available()
    else:
        ok = dev.type == "cpu" or hasattr(torch, dev.type) and getattr(
            torch, dev.type).is_available()
    if ok:
        return device
    log.warning("device %r is not available on this machine; falling back to CPU", device)
    return "cpu"


def generation_budget(prompt_ids: list[int], max_new: int, max_seq_len: int
                      ) -> tuple[list[int], int, int]:
    """(prompt ids kept, new tokens allowed, prompt tokens dropped) for a request asking
    for max_new tokens: at most max_seq_len // 2 new tokens so that a prompt keeps at
    least half the context, then the prompt's last tokens that fit beside them."""
    allowed = max(1, min(int(max_new), max_seq_len // 2))
    keep = max_seq_len - allowed
    dropped = max(0, len(prompt_ids) - keep)
    return list(prompt_ids[dropped:]), allowed, dropped


class GenerationLimits:
    """Counts of generation requests shortened to fit the model's context."""

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.requests = 0
        self.capped = 0
        self.requested: set[int] = set()
        self.truncated = 0
        self.dropped_total = 0
        self.dropped_max = 0

    def add(self, requested: int, allowed: int, dropped: int) -> None:
        self.requests += 1
        self.requested.add(int(requested))
        self.capped += int(allowed < requested)
        self.truncated += int(dropped > 0)
        self.dropped_total += dropped
        self.dropped_max = max(self.dropped_max, dropped)

    def record(self) -> dict:
        """The results' "generation.limits" block."""
        return {"max_seq_len": self.max_seq_len, "cap": max(1, self.max_seq_len // 2),
                "requests": self.requests, "max_gen_toks_requested": sorted(self.requested),
                "capped": self.capped, "context_truncated": self.truncated,
                "context_tokens_dropped": self.dropped_total,
                "context_tokens_dropped_max": self.dropped_max}

    @staticmethod
    def merge(records: list[dict | None] | None) -> dict | None:
        """One "limits" block from several ranks' records (None on ranks other than 0)."""
        records = [r for r in records or [] if r]
        if not records:
            return None
        out = dict(records[0])
        for r in records[1:]:
            for key in ("requests", "capped", "context_truncated", "context_tokens_dropped"):
                out[key] += r[key]
            out["context_tokens_dropped_max"] = max(out["context_tokens_dropped_max"],
                                                    r["context_tokens_dropped_max"])
            out["max_gen_toks_requested"] = sorted(set(out["max_gen_toks_requested"])
                                                   | set(r["max_gen_toks_requested"]))
        return out

    def summary(self) -> str | None:
        """One line when anything was shortened, else None."""
        if not (self.capped or self.truncated):
            return None
        parts = []
        if self.capped:
            parts.append(f"{self.capped}/{self.requests} requests asked for "
                         f"{max(self.requested)} new tokens, capped at {self.max_seq_len // 2} "
                         f"(context {self.max_seq_len})")
        if self.truncated:
            parts.append(f"{self.truncated}/{self.requests} prompts lost their first tokens to "
                         f"fit (up to {self.dropped_max}, {self.dropped_total} in all)")
        return "; ".join(parts)


class LoglikelihoodLimits:
    """Log-likelihood requests whose context was left-truncated to fit the model
    (scoring.truncate_contexts: lm-eval's rule, one cut per context). lm-eval's HF backend
    logs a warning per such request; here they are counted per task and stored in the
    results' "loglikelihood.limits" block."""

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.requests = 0
        self.truncated = 0
        self.contexts: set[tuple[int, ...]] = set()
        self.contexts_cut: set[tuple[int, ...]] = set()
        self.dropped_total = 0
        self.dropped_max = 0

    def add(self, ctx: tuple[int, ...], dropped: int) -> None:
        self.requests += 1
        self.contexts.add(ctx)
        if dropped > 0:
            self.truncated += 1
            self.contexts_cut.add(ctx)
            self.dropped_total += dropped
            self.dropped_max = max(self.dropped_max, dropped)

    def record(self) -> dict:
        """The results' "loglikelihood.limits" block. Contexts are the distinct contexts
        scored (one per multiple-choice item); tokens are counted once per request."""
        return {"max_seq_len": self.max_seq_len, "requests": self.requests,
                "requests_truncated": self.truncated, "contexts": len(self.contexts),
                "contexts_truncated": len(self.contexts_cut),
                "context_tokens_dropped": self.dropped_total,
                "context_tokens_dropped_max": self.dropped_max}

    @staticmethod
    def merge(records: list[dict | None] | None) -> dict | None:
        """One block from several ranks' records (each rank scores its own documents)."""
        records = [r for r in records or [] if r]
        if not records:
            return None
        out = dict(records[0])
        for r in records[1:]:
            for key in ("requests", "requests_truncated", "contexts", "contexts_truncated",
                        "context_tokens_dropped"):
                out[key] += r[key]
            out["context_tokens_dropped_max"] = max(out["context_tokens_dropped_max"],
                                                    r["context_tokens_dropped_max"])
        return out


@register_model("ftbench")
class FtbenchLM(TemplateLM):
    def __init__(self, path: str | None = None, model=None, tokenizer=None,
                 batch_size: int | str = 8, z_protocol: str = "posterior",
                 z_draws: int | None = None,
                 z_seed: int = 0, protocols: str | tuple[str, ...] | None = None,
                 z_samples: int = 1, temperature: float = 0.0, max_gen_toks: int = 256,
                 device: str | None = None, amp: str | None = "auto",
                 verify_weights: bool | str = True,
                 ctx: DistContext | None = None, **_ignored: Any):
        super().__init__()
        # Under torchrun every rank holds the whole model and scores its share of the
        # documents (lm-eval shards them by rank); requests are seeded by their own content,
        # so the scores do not depend on the number of ranks.
        if ctx is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            ctx = init_distributed()
        self.ctx = ctx or DistContext()
        self._rank, self._world_size = self.ctx.rank, self.ctx.world
        if model is None:
            if path is None:
                raise ValueError("FtbenchLM needs path=<exported arm folder> (or model and "
                                 "tokenizer objects)")
            device = (str(self.ctx.device) if self.ctx.distributed else
                      resolve_device(device))
            # From lm-eval's --model_args the flag arrives as text.
            verify = str(verify_weights).strip().lower() not in ("false", "0", "no")
            model, tokenizer, _ = load_pretrained(path, device=device, verify=verify)
        self.model, self.tokenizer = model.eval(), tokenizer
        # lm-eval's "auto" / "auto:N" probe the largest batch that fits; not implemented.
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        # K draws by default for Free models; z_samples stays 1 because a plain lm-eval run
        # reads one sample per request (`ftbench eval` makes the n passes).
        draws = int(z_draws) if z_draws is not None else (
            FREE_Z_DRAWS if self.model.arch == "free" else 1)
        self.z = ZProtocol(z_protocol, draws, int(z_seed))
        if isinstance(protocols, str):
            protocols = tuple(p.strip() for p in protocols.split(",") if p.strip())
        self.protocols = tuple(dict.fromkeys((z_protocol, *(protocols or ()))))
        self.z_samples = int(z_samples)
        if self.z_samples < 1:
            raise ValueError(f"z_samples: must be >= 1, got {z_samples}")
        self.temperature = float(temperature)
        self.max_gen_toks = int(max_gen_toks)
        self.amp = amp
        self.path = path
        self.replay: str | None = None
        self.sample_index = 0
        self.scores: dict[tuple, dict[str, Score]] = {}
        """(context ids, continuation ids) -> {protocol: Score} of every request seen."""
        self.scores_by_text: dict[tuple[str, str], dict[str, Score]] = {}
        self.samples: dict[tuple, list[str]] = {}
        """(context, gen_kwargs) -> the z_samples texts generated for it."""
        self.gen_stats = {"new_tokens": 0, "seconds": 0.0}
        self.gen_limits = GenerationLimits(self.max_length)
        """Generation requests shortened to fit the context (reset per task by the runner)."""
        self.ll_limits = LoglikelihoodLimits(self.max_length)
        """Log-likelihood contexts cut to fit the context (reset per task by the runner)."""
        self.progress_label = ""
        """Prefix of the progress bars' label (the runner sets <run>/<arm>/<task>)."""
        self.score_seconds = 0.0
        """Time spent scoring log-likelihoods (the model's share of a task's wall time)."""

    def forget(self) -> None:
        """Drop the stored per-draw scores and samples (kept only for a task's replays)."""
        self.scores.clear()
        self.scores_by_text.clear()
        self.samples.clear()

    @property
    def headline(self) -> str:
        return self.z.protocol if self.model.arch == "free" else BASELINE_KEY

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size <= 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.cat([p.reshape(-1) for p in parts])

    def gather_object(self, obj, dst: int = 0):
        if self.world_size <= 1:
            return [obj]
        out = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def protocol_record(self) -> dict:
        if self.model.arch != "free":
            return {"arch": "baseline"}
        return {"arch": "free", "z_protocol": self.z.protocol, "z_draws": self.z.draws,
                "z_seed": self.z.seed, "protocols": list(self.protocols),
                "z_samples": self.z_samples}

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.model.cfg.max_seq_len

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool) -> list[dict]:
        out = []
        chunk = self.batch_size * 8
        t0 = time.perf_counter()
        # No bar for a pass that only replays stored scores.
        for s in tqdm(range(0, len(pairs), chunk),
                      desc=_label(self.progress_label, "loglikelihood"),
                      disable=disable_tqdm or self.rank != 0 or not pairs):
            res = score_requests(self.model, pairs[s:s + chunk], protocols=self.protocols,
                                 draws=self.z.draws, seed=self.z.seed,
                                 batch_size=self.batch_size, max_length=self.max_length,
                                 amp=self.amp)
            out += [{k: v[i] for k, v in res.items()} for i in range(len(pairs[s:s + chunk]))]
        self.score_seconds += time.perf_counter() - t0
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        keys = [(tuple(ctx), tuple(cont)) for _, ctx, cont in requests]
        todo = list(dict.fromkeys(k for k in keys if k not in self.scores))
        # Sorted so that items sharing a context land in the same scoring chunk.
        todo.sort(key=lambda k: (-len(k[0]), k[0]))
        # Cut here, over all of the call's requests, so that an item's choices share one
        # context even when a scoring chunk splits them.
        fitted = truncate_contexts(todo, self.max_length)
        for (ctx, _), (_, dropped) in zip(todo, fitted):
            self.ll_limits.add(ctx, dropped)
        if self.rank == 0 and any(d for _, d in fitted):
            log.warning("%d of %d log-likelihood requests had their context cut to fit the "
                        "model's %d tokens", sum(d > 0 for _, d in fitted), len(fitted),
                        self.max_length)
        pairs = [(list(kept), list(cont)) for (kept, _), (_, cont) in zip(fitted, todo)]
        for key, scored in zip(todo, self._score(pairs, disable_tqdm)):
            self.scores[key] = scored
        which = self.replay or self.headline
        if which not in (self.protocols if self.model.arch == "free" else (BASELINE_KEY,)):
            raise ValueError(f"replay: {which!r} was not scored (protocols "
                             f"{list(self.protocols)})")
        results = []
        for (text_key, _, _), key in zip(requests, keys):
            scored = self.scores[key]
            result = (scored[which].logp, scored[which].greedy)
            if text_key is not None:
                self.scores_by_text[tuple(text_key)] = scored
                self.cache_hook.add_partial("loglikelihood", text_key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0,
                        desc=_label(self.progress_label, "loglikelihood_rolling")):
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows],
                                                disable_tqdm=True)
            total = sum(lp for lp, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def _sampling(self, gen_kwargs: dict) -> tuple[tuple[str, ...], int, SamplingConfig]:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None) or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        if max_new < 1:
            raise ValueError(f"max_gen_toks: must be at least 1, got {max_new}")
        temperature = self.temperature
        if temperature == 0 and gen_kwargs.get("do_sample"):
            temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        cfg = SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                             top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0),
                             stop_token_ids=(self.eot_token_id,))
        return until, max_new, cfg

    def _generate_all(self, requests, disable_tqdm: bool) -> None:
        """Every sample of every request not generated yet, batched across requests and
        samples; row (request, i) uses streams seeded by (seed, i, its prompt)."""
        n = self.z_samples
        jobs = []
        shortened = GenerationLimits(self.max_length)  # this call's, for the warning
        for req in requests:
            context, gen_kwargs = req.args
            key = (context, _kwargs_key(gen_kwargs))
            if key in self.samples:
                continue
            until, requested, cfg = self._sampling(gen_kwargs)
            ids, max_new, dropped = generation_budget(self.tok_encode(context), requested,
                                                      self.max_length)
            self.gen_limits.add(requested, max_new, dropped)
            shortened.add(requested, max_new, dropped)
            cfg = dataclasses.replace(cfg, max_new_tokens=max_new)
            ids = ids or [self.eot_token_id]
            self.samples[key] = [None] * n
            jobs += [(key, i, ids, until, cfg) for i in range(n)]
        if self.rank == 0 and (line := shortened.summary()):
            log.warning("generation shortened to fit the model: %s", line)
        by_setting: dict = {}
        for job in jobs:
            by_setting.setdefault((job[3], job[4]), []).append(job)
        batches = []
        for (until, cfg), group in by_setting.items():
            group.sort(key=lambda j: -len(j[2]))  # similar lengths pad less
            batches += [(until, cfg, group[s:s + self.batch_size])
                        for s in range(0, len(group), self.batch_size)]
        # No bar for a pass that only replays stored samples.
        for until, cfg, batch in tqdm(batches,
                                      desc=_label(self.progress_label, "generate_until"),
                                      disable=disable_tqdm or self.rank != 0 or not batches):
            ckeys = [context_key(ids) for _, _, ids, _, _ in batch]
            t0 = time.perf_counter()
            gen = generate(self.model, [ids for _, _, ids, _, _ in batch], cfg,
                           pad_id=self.tokenizer.pad_id, z_protocol=self.z.protocol,
                           z_streams=[stream_generator(self.z.seed, k, i, "gen-z")
                                      for (_, i, _, _, _), k in zip(batch, ckeys)],
                           token_streams=[stream_generator(self.z.seed, k, i, "gen-tokens")
                                          for (_, i, _, _, _), k in zip(batch, ckeys)],
                           stop_strings=until, decode=self.tok_decode, amp=self.amp)
            self.gen_stats["seconds"] += time.perf_counter() - t0
            for (key, i, _, _, _), ids in zip(batch, gen.tokens):
                # Rows are cut where they stopped: no pad counts as a generated token.
                self.gen_stats["new_tokens"] += len(ids)
                if ids and ids[-1] == self.eot_token_id:
                    ids = ids[:-1]
                text = self.tok_decode(ids)
                for stop in until:  # the continuation is cut before the first stop string
                    if stop:
                        text = text.split(stop)[0]
                self.samples[key][i] = text

    def generate_until(self, requests, disable_tqdm: bool = False):
        if not 0 <= self.sample_index < self.z_samples:
            raise ValueError(f"sample_index {self.sample_index} is outside 0..{self.z_samples - 1}")
        self._generate_all(requests, disable_tqdm)
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            text = self.samples[(context, _kwargs_key(gen_kwargs))][self.sample_index]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def _label(prefix: str, what: str) -> str:
    return f"{prefix} {what}" if prefix else what


def _kwargs_key(gen_kwargs) -> str:
    return json.dumps(gen_kwargs or {}, sort_keys=True, default=str)
