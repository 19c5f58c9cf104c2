"""lm-evaluation-harness adapter: both architectures as an lm-eval `TemplateLM`.

`FtbenchLM(path=models/<run>/<arm>)` scores log-likelihood requests through
`ftbench.evaluation.scoring` (batched, leak-free for Free models) and generates with the
KV cache. The Free model's Z protocol, draws and seed are constructor arguments and are
reported by `protocol_record()` so that results carry them.

Importing this module registers the model as "ftbench" with lm-eval; lm-eval's own CLI
does not import plugins, so use `python -m ftbench.evaluation.lm_eval_main --model ftbench
--model_args path=models/<run>/<arm> ...` to run lm-eval's CLI with it registered.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ftbench.evaluation.scoring import ZProtocol, score_continuations
from ftbench.inference.generation import SamplingConfig, generate
from ftbench.training.distributed import DistContext, init_distributed
from ftbench.training.export import load_pretrained


@register_model("ftbench")
class FtbenchLM(TemplateLM):
    def __init__(self, path: str | None = None, model=None, tokenizer=None,
                 batch_size: int | str = 8, z_protocol: str = "posterior", z_draws: int = 1,
                 z_seed: int = 0, max_gen_toks: int = 256, device: str | None = None,
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
            device = device or str(self.ctx.device if self.ctx.distributed else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
            model, tokenizer, _ = load_pretrained(path, device=device)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 8
        self.z = ZProtocol(z_protocol, int(z_draws), int(z_seed))
        self.max_gen_toks = int(max_gen_toks)
        self.path = path

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
                "z_seed": self.z.seed}

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

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = []
        chunk = self.batch_size * 8
        for s in tqdm(range(0, len(pairs), chunk), disable=disable_tqdm or self.rank != 0,
                      desc="loglikelihood"):
            results += score_continuations(self.model, pairs[s:s + chunk], self.z,
                                           self.batch_size, self.max_length)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0,
                        desc="loglikelihood_rolling"):
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

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0,
                        desc="generate_until"):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", 0.0)) if do_sample else 0.0
            # Left-truncate the context so that it and max_new tokens fit the model.
            max_new = max(1, min(max_new, self.max_length // 2))
            ctx_ids = self.tok_encode(context)[-(self.max_length - max_new):] or [self.eot_token_id]
            gen = generate(self.model, [ctx_ids],
                           SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                                          top_p=float(gen_kwargs.pop("top_p", 1.0) or 1.0),
                                          stop_token_ids=(self.eot_token_id,)),
                           pad_id=self.tokenizer.pad_id,
                           z_generator=torch.Generator().manual_seed(self.z.seed),
                           token_generator=torch.Generator().manual_seed(self.z.seed + 1),
                           z_protocol=self.z.protocol, stop_strings=until,
                           decode=self.tok_decode)
            ids = gen.tokens[0]
            if ids and ids[-1] == self.eot_token_id:
                ids = ids[:-1]
            text = self.tok_decode(ids)
            for stop in until:  # the continuation is cut before the first stop string
                if stop:
                    text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out
