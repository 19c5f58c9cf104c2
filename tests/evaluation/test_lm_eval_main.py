"""lm-eval's CLI through ftbench's entry point: lm-eval's own models and "ftbench" in one
registry, and the parity the README promises between an exported baseline under lm-eval's
HF backend and the same weights under FtbenchLM."""

import json
import logging

import pytest
import torch

from ftbench.data import synthetic
from ftbench.data.tokenizer import char_tokenizer
from ftbench.evaluation import lm_eval_main
from ftbench.evaluation.lm_eval_adapter import FtbenchLM, resolve_device
from ftbench.interop.hf_llama import export_hf
from ftbench.model import build_model, get_preset
from ftbench.training.export import save_pretrained

# Multiple-choice items over the char tokenizer's alphabet (no spaces in it, hence the
# empty target delimiter); contexts of different lengths, one longer than the model.
ITEMS = [{"ctx": "Q>____", "choices": ["QQQQ", "____", "Q!", "ZZ"], "gold": 0},
         {"ctx": "B>", "choices": ["__!_", "BBBB", "B"], "gold": 1},
         {"ctx": "KKKK>" * 20, "choices": ["K", "KK_!", "_"], "gold": 2}]
ROLLING = [{"text": "K>___KKKKKKKK___!"}, {"text": "M>__MM!" * 20}]  # the 2nd spans windows


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm-eval-main")
    # Random weights with a large init so that log-likelihoods differ between choices (a
    # near-uniform model would agree with anything).
    cfg = get_preset("toy").replace(vocab_size=31, d_model=32, n_layers=2, n_heads=2,
                                    n_kv_heads=1, ffn_hidden=64, max_seq_len=64, init_std=0.2)
    model = build_model(cfg, "baseline", seed=5)
    save_pretrained(model.state_dict(), cfg, "baseline", char_tokenizer(synthetic.ALPHABET),
                    tmp / "arm")
    export_hf(tmp / "arm", tmp / "hf")
    data = tmp / "data"
    data.mkdir()
    (data / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (data / "roll.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROLLING))
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "ftb_mc.yaml").write_text(f"""task: ftb_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data / 'mc.jsonl'}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list: [{{metric: acc}}]
""")
    (tasks / "ftb_roll.yaml").write_text(f"""task: ftb_roll
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data / 'roll.jsonl'}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: word_perplexity}}]
""")
    return tmp


@pytest.fixture
def fast_task_index(monkeypatch):
    """lm-eval's CLI indexes its ~14k built-in tasks (15-50 s) before reading --tasks; these
    tests use only their own YAMLs, so the index holds just --include_path."""
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager

    def only_included(*args, **kwargs):
        kwargs["include_defaults"] = False
        return real(*args, **kwargs)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", only_included)


def _run_cli(tmp, model: str, model_args: str, out_name: str, device: str | None = None):
    out = tmp / out_name
    argv = ["--model", model, "--model_args", model_args, "--tasks", "ftb_mc,ftb_roll",
            "--include_path", str(tmp / "tasks"), "--output_path", str(out),
            "--log_samples", "--batch_size", "2"]
    lm_eval_main.main(argv + (["--device", device] if device else []))
    samples = {}
    for task in ("ftb_mc", "ftb_roll"):
        (path,) = out.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = {r["doc_id"]: r["resps"] for r in rows}
    return samples


def _logps(resps) -> list[float]:
    """lm-eval logs one [response] per request; a log-likelihood response is
    [logp, is_greedy] (multiple choice) or the rolling total."""
    out = []
    for (resp,) in resps:
        out.append(float(resp[0] if isinstance(resp, list) else resp))
    return out


def test_hf_and_ftbench_models_run_in_one_process_and_agree(exported, fast_task_index):
    # --device cuda:0 is lm-eval's default: both backends must run on a CPU-only machine.
    # With a GPU, compare on the CPU: FtbenchLM runs under bf16 autocast on a GPU.
    device = "cpu" if torch.cuda.is_available() else "cuda:0"
    hf = _run_cli(exported, "hf", f"pretrained={exported / 'hf'},dtype=float32", "hf",
                  device=device)
    ours = _run_cli(exported, "ftbench", f"path={exported / 'arm'}", "ftbench", device=device)
    assert hf.keys() == ours.keys() and set(hf["ftb_mc"]) == {0, 1, 2}
    spread = []
    for task in hf:
        for doc_id in hf[task]:
            a, b = _logps(hf[task][doc_id]), _logps(ours[task][doc_id])
            assert len(a) == len(b) > 0
            same_cut = range(len(a))
            if task == "ftb_mc" and doc_id == 2:
                # 100 context tokens for 64: lm-eval cuts each choice by its own length,
                # ftbench cuts the item once by its longest choice ("KK_!", 4 tokens), so
                # that its choices share one context (and, for Free models, one Z). The
                # cuts coincide for that choice only; the others see 3 fewer tokens.
                same_cut = [1]
                assert all(abs(a[i] - b[i]) > 1e-6 for i in (0, 2)), (a, b)
            assert max(abs(a[i] - b[i]) for i in same_cut) < 1e-4, (task, doc_id, a, b)
            spread += a
    # The comparison is not between near-identical numbers: the choices' scores differ.
    assert max(spread) - min(spread) > 1.0


def test_builtin_models_stay_registered_beside_ftbench():
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    assert get_model("ftbench") is FtbenchLM
    assert get_model("hf") is HFLM and get_model("dummy").__name__ == "DummyLM"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a CPU-only machine")
def test_cuda_device_on_a_cpu_machine_falls_back_with_a_warning(exported, caplog):
    with caplog.at_level(logging.WARNING, logger="ftbench.evaluation.lm_eval_adapter"):
        lm = FtbenchLM(path=str(exported / "arm"), device="cuda:0")
    assert lm.device.type == "cpu"
    assert any("'cuda:0' is not available" in r.getMessage() and "falling back to CPU"
               in r.getMessage() for r in caplog.records)


def test_devices_this_machine_has_are_kept_and_bad_names_are_refused(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_device("cpu") == "cpu"
        assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not caplog.records
    # An index past the last GPU falls back too, on any machine.
    assert resolve_device(f"cuda:{torch.cuda.device_count()}") == "cpu"
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
