"""Shard-builder throughput and memory on a corpus of at least 1 GB generated on the fly.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_data.py [--gb 1.0] [--small-gb 0.5]

The corpus is real text from the data mirror (Gutenberg, Python docs, TinyStories,
GSM8K train), cut into paragraphs and reshuffled into documents of JSON Lines files. Each
build runs in its own process (`ftbench data prepare`'s code, byte-level BPE of 16,384
tokens) while this script samples the resident memory of the builder's whole process
tree (main + workers) every 0.1 s. It prints, per build:
- tokens/s in total and per worker (wall clock), and tokens per CPU-second (user + system
  time of the tree: what a build costs on a machine that is not busy with other work);
- the peak memory of the process tree (PSS: pages shared by forked workers count once;
  the plain RSS sum is printed beside it), for two corpus sizes
  (memory must not grow with the corpus) and for 1 and 2 workers;
- the load average before and after (2-core shared machine: wall figures move with it).
Targets: >= 1M tokens/s per worker; peak memory < 1 GB, flat in corpus size.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FTBENCH_DATA_DIR") or ROOT.parent / "shared" / "data")


def paragraphs() -> list[str]:
    out = []
    for name in ("gutenberg_en", "python_docs_3.11", "tinystories_subset"):
        with gzip.open(DATA / "corpus" / f"{name}.jsonl.gz", "rt") as f:
            for line in f:
                out += [p for p in json.loads(line)["text"].split("\n\n") if len(p) > 40]
    for line in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append(f"Question: {r['question']}\nAnswer: {r['answer']}")
    return out


def make_corpus(folder: Path, gigabytes: float, pool: list[str], files: int = 8) -> int:
    """JSON Lines files of documents of 2-40 paragraphs; returns the bytes of text."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    target, written, doc = int(gigabytes * 1e9), 0, 0
    handles = [open(folder / f"part{i:02d}.jsonl", "w") for i in range(files)]
    while written < target:
        text = "\n\n".join(rng.choices(pool, k=rng.randint(2, 40)))
        handles[doc % files].write(json.dumps({"id": f"doc{doc}", "text": text}) + "\n")
        written += len(text.encode())
        doc += 1
    for h in handles:
        h.close()
    return written


BUILD = textwrap.dedent("""
    import sys, time, json, shutil
    from pathlib import Path
    from ftbench.config.schema import DataConfig, SourceConfig, TokenizerConfig
    from ftbench.data.pipeline import data_directory, prepare_data
    corpus, out, planned, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path=corpus)], val_fraction=0.001,
                     unit_mb=16, tokenizer=TokenizerConfig(vocab_size=16384, train_chars=20_000_000))
    # The tokenizer trained once beforehand (its training is not the builder's throughput).
    target = data_directory(cfg, 0, planned, out)
    target.mkdir(parents=True)
    shutil.copy(sys.argv[5], target / "tokenizer.json")
    t0 = time.perf_counter()
    p = prepare_data(cfg, 0, out, planned, workers=workers, log=lambda m: None, progress=False)
    print(json.dumps({"tokens": len(p.train), "wall_total": time.perf_counter() - t0}))
""")

TOKENIZER_ONLY = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ftbench.config.schema import DataConfig, SourceConfig, TokenizerConfig
    from ftbench.data.pipeline import prepare_data
    corpus, out = sys.argv[1], Path(sys.argv[2])
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path=corpus)], val_fraction=0.001,
                     unit_mb=16, tokenizer=TokenizerConfig(vocab_size=16384, train_chars=20_000_000))
    p = prepare_data(cfg, 0, out, 2_000_000, workers=1, log=lambda m: None, progress=False)
    print(p.directory / "tokenizer.json")
    import json, itertools
    with open(next(Path(corpus).glob("*.jsonl"))) as f:
        texts = [json.loads(line)["text"] for line in itertools.islice(f, 3000)]
    n_tokens = sum(len(ids) + 1 for ids in p.tokenizer.encode_batch(texts))
    print(sum(len(t.encode()) for t in texts) / n_tokens)
""")


def run_measured(args: list[str]) -> dict:
    """Run a builder process, sampling its tree's RSS; its JSON line, peak RSS, CPU time."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = psutil.Popen([sys.executable, "-c", BUILD, *args], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, env=env, text=True)
    peak, peak_rss, cpu = 0, 0, {}
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            pss = rss = 0
            for p in tree:
                try:
                    # PSS: pages a forked worker shares with its parent count once.
                    m = p.memory_full_info()
                    pss += m.pss
                    rss += m.rss
                    t = p.cpu_times()
                    # Own time only: a worker reaped by the pool would otherwise be
                    # counted twice (its pid and its parent's children_* times).
                    cpu[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            peak, peak_rss = max(peak, pss), max(peak_rss, rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"build failed:\n{err[-3000:]}")
    cpu_total = sum(cpu.values())
    return {**json.loads(out.strip().splitlines()[-1]), "wall": wall, "peak_pss": peak,
            "peak_rss_sum": peak_rss, "cpu_s": cpu_total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="The large corpus, in GB of text.")
    ap.add_argument("--small-gb", type=float, default=0.5, help="The smaller corpus.")
    ap.add_argument("--keep", action="store_true", help="Keep the generated files.")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ftbench-bench-data-"))
    pool = paragraphs()
    print(f"load average {os.getloadavg()[0]:.2f} at start; {os.cpu_count()} cores; "
          f"{len(pool):,} paragraphs of real text")
    sizes = {}
    for label, gb in (("small", a.small_gb), ("large", a.gb)):
        t0 = time.perf_counter()
        sizes[label] = make_corpus(tmp / label, gb, pool)
        print(f"corpus {label}: {sizes[label] / 1e9:.2f} GB of text in 8 files "
              f"({time.perf_counter() - t0:.0f}s to write)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    probe = subprocess.run(
        [sys.executable, "-c", TOKENIZER_ONLY, str(tmp / "small"), str(tmp / "probe")],
        capture_output=True, text=True, env=env, check=True).stdout.split()
    tokenizer_file, bytes_per_token = probe[0], float(probe[1])
    print(f"tokenizer: {bytes_per_token:.2f} bytes/token on this text")
    rows = []
    # 1 and 2 workers on the large corpus back to back, then the small one (memory vs size).
    for label, workers in (("large", 1), ("large", 2), ("small", 1), ("small", 2)):
        planned = int(0.92 * sizes[label] / bytes_per_token)  # nearly all of the corpus
        load0 = os.getloadavg()[0]
        r = run_measured([str(tmp / label), str(tmp / f"out-{label}-{workers}"), str(planned),
                          str(workers), tokenizer_file])
        r.update(label=label, gb=sizes[label] / 1e9, workers=workers, load0=load0,
                 load1=os.getloadavg()[0])
        rows.append(r)
        print(f"{label:5s} {r['gb']:.2f} GB  workers {workers}:  {r['tokens'] / 1e6:7.1f}M tokens "
              f"in {r['wall']:6.1f}s wall  -> {r['tokens'] / r['wall'] / 1e6:5.2f}M tok/s total, "
              f"{r['tokens'] / r['wall'] / workers / 1e6:5.2f}M per worker; "
              f"{r['tokens'] / r['cpu_s'] / 1e6:5.2f}M tok per CPU-s; peak memory (tree) PSS "
              f"{r['peak_pss'] / 2**20:4.0f} MiB, RSS summed {r['peak_rss_sum'] / 2**20:4.0f} "
              f"MiB; load {r['load0']:.1f} -> {r['load1']:.1f}",
              flush=True)
    by = {(r["label"], r["workers"]): r for r in rows}
    same = all((tmp / f"out-{lab}-1").exists() for lab in ("small", "large"))
    if same:
        import filecmp

        for lab in ("small", "large"):
            d1 = next((tmp / f"out-{lab}-1").iterdir())
            d2 = next((tmp / f"out-{lab}-2").iterdir())
            cmp = filecmp.dircmp(d1, d2)
            sub = filecmp.dircmp(d1 / "parts", d2 / "parts")
            identical = not (cmp.diff_files or cmp.left_only or cmp.right_only or
                             sub.left_only or sub.right_only) and \
                all(filecmp.cmp(d1 / "parts" / f, d2 / "parts" / f, shallow=False)
                    for f in sub.common_files)
            print(f"{lab}: 1-worker and 2-worker outputs byte-identical: {identical}")
    print(f"2 workers / 1 worker, tokens/s (large): "
          f"{(by['large', 2]['tokens'] / by['large', 2]['wall']) / (by['large', 1]['tokens'] / by['large', 1]['wall']):.2f}x")
    print(f"peak PSS large / small corpus (1 worker): "
          f"{by['large', 1]['peak_pss'] / by['small', 1]['peak_pss']:.2f}x; (2 workers): "
          f"{by['large', 2]['peak_pss'] / by['small', 2]['peak_pss']:.2f}x")
    if not a.keep:
        import shutil

        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
