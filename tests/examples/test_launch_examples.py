"""The multi-node launch examples, tested by parse: bash syntax, the environment checks
that name a missing variable, and the launch line each builds (FTBENCH_DRY_RUN=1)."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "examples" / "slurm" / "train_pair.sbatch"
NODE = ROOT / "examples" / "multinode" / "torchrun_node.sh"
CONFIG = str(ROOT / "configs" / "toy.yaml")


def _run(script, env, *args):
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["bash", str(script), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script", [SBATCH, NODE])
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_sbatch_directives():
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SBATCH.read_text(), re.M))
    assert int(directives["nodes"]) >= 2
    assert directives["ntasks-per-node"] == "1"  # one torchrun per node, it forks the ranks
    assert "gpus-per-node" in directives


SLURM_ENV = {"FTBENCH_CONFIG": CONFIG, "SLURM_JOB_ID": "4242", "SLURM_NNODES": "4",
             "SLURM_JOB_NODELIST": "gpu-a17,gpu-a18,gpu-a19,gpu-a20", "GPUS_PER_NODE": "8"}
NODE_ENV = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "29500", "NPROC_PER_NODE": "8", "FTBENCH_CONFIG": CONFIG}


@pytest.mark.parametrize("script,env", [(SBATCH, SLURM_ENV), (NODE, NODE_ENV)])
def test_each_missing_variable_is_named(script, env):
    required = [k for k in env if k not in ("GPUS_PER_NODE", "NPROC_PER_NODE")]
    for name in required:
        out = _run(script, {**{k: v for k, v in env.items() if k != name}, "FTBENCH_DRY_RUN": "1"})
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert f"${name} is not set" in out.stderr, (name, out.stderr)
        assert "torchrun" not in out.stdout  # nothing launched
    # All missing at once: all named in one go, not one per attempt.
    out = _run(script, {"FTBENCH_DRY_RUN": "1"})
    assert out.returncode == 2
    assert all(f"${n} is not set" in out.stderr for n in required), out.stderr


def _launch(script, env, *args):
    out = _run(script, {**env, "FTBENCH_DRY_RUN": "1"}, *args)
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.strip())
    i = argv.index("torchrun")
    opts = dict(a[2:].split("=", 1) for a in argv[i + 1:] if a.startswith("--") and "=" in a)
    tail = argv[argv.index("-m"):]
    return argv[:i], opts, tail


def test_sbatch_launch_line():
    prefix, opts, tail = _launch(SBATCH, SLURM_ENV, "--set", "run.name=big")
    assert prefix == ["srun"]
    assert opts["nnodes"] == "4" and opts["nproc_per_node"] == "8"
    assert opts["rdzv_backend"] == "c10d" and opts["rdzv_id"] == "4242"
    # Without scontrol, the first host of the node list hosts the rendezvous.
    assert opts["rdzv_endpoint"] == "gpu-a17:29500"
    assert tail == ["-m", "ftbench", "train-pair", "--config", CONFIG, "--set", "run.name=big"]


def test_node_launch_line():
    prefix, opts, tail = _launch(NODE, NODE_ENV)
    assert prefix == []
    assert opts == {"nnodes": "2", "node_rank": "1", "nproc_per_node": "8",
                    "master_addr": "10.0.0.1", "master_port": "29500"}
    assert tail == ["-m", "ftbench", "train-pair", "--config", CONFIG]


def test_bad_node_rank_and_config_are_explained():
    out = _run(NODE, {**NODE_ENV, "NODE_RANK": "2", "FTBENCH_DRY_RUN": "1"})
    assert out.returncode == 2 and "0..1" in out.stderr
    out = _run(SBATCH, {**SLURM_ENV, "FTBENCH_CONFIG": "/nope.yaml", "FTBENCH_DRY_RUN": "1"})
    assert out.returncode == 2 and "not a file" in out.stderr


def _cluster(tmp_path, ftbench_exit=0, nvidia_smi=True, rehearsal_exit=0):
    """A PATH holding stand-ins for the cluster's tools (each appends its argv to one log,
    so the order of the calls shows too) and the few real tools the script needs, and
    nothing else: no real srun or nvidia-smi is ever reached."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("bash", "sed", "sort", "head"):
        (bin_dir / name).symlink_to(shutil.which(name))
    fakes = {"ftbench": f"[ \"$1\" = doctor ] && exit {rehearsal_exit}\n"
                        f"echo 'memory plan: every arm fits'\nexit {ftbench_exit}",
             "srun": "exit 0"}
    if nvidia_smi:  # two GPUs of the node, as nvidia-smi prints them: MiB, no unit
        fakes["nvidia-smi"] = ("printf '81559, NVIDIA H100 80GB HBM3\\n"
                               "81559, NVIDIA H100 80GB HBM3\\n'")
    for name, body in fakes.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\nprintf '%q ' {name} \"$@\" >> {log}\necho >> {log}\n"
                        f"{body}\n")
        path.chmod(0o755)
    return {**SLURM_ENV, "PATH": str(bin_dir), "FTBENCH": "ftbench"}, log


def _calls(log):
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_sbatch_precheck_gets_the_allocation_world_size_and_gpu_memory(tmp_path):
    env, log = _cluster(tmp_path)
    out = _run(SBATCH, env, "--set", "run.name=big")
    assert out.returncode == 0, out.stderr
    calls = _calls(log)
    # 4 nodes x 8 GPUs = 32 ranks; 81559 MiB per GPU as nvidia-smi printed it.
    assert calls[0] == ["nvidia-smi", "--query-gpu=memory.total,name",
                        "--format=csv,noheader,nounits"]
    assert calls[1] == ["ftbench", "train-pair", "--config", CONFIG, "--dry-run",
                        "--world-size", "32", "--device-memory", "81559MiB",
                        "--set", "run.name=big"]
    # The rehearsal for this allocation: its ranks, nodes and GPU, the same overrides.
    assert calls[2] == ["ftbench", "doctor", "--simulate", "--config", CONFIG,
                        "--world-size", "32", "--nodes", "4", "--gpu",
                        "NVIDIA H100 80GB HBM3", "--layers", "2", "--set", "run.name=big"]
    assert calls[3][:2] == ["srun", "--kill-on-bad-exit=1"] and len(calls) == 4
    assert "memory plan: every arm fits" in out.stdout  # the plan lands in the job log


def test_sbatch_stops_before_srun_when_an_arm_does_not_fit(tmp_path):
    env, log = _cluster(tmp_path, ftbench_exit=2)
    out = _run(SBATCH, env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert [c[0] for c in _calls(log)] == ["nvidia-smi", "ftbench"]  # srun never ran
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "run.grad_accum" in error[0] and "plan" in error[0], out.stderr


def test_sbatch_precheck_without_nvidia_smi_still_gets_the_world_size(tmp_path):
    env, log = _cluster(tmp_path, nvidia_smi=False)
    out = _run(SBATCH, env)
    assert out.returncode == 0, out.stderr
    assert "nvidia-smi not found" in out.stderr
    calls = _calls(log)
    assert calls[0] == ["ftbench", "train-pair", "--config", CONFIG, "--dry-run",
                        "--world-size", "32"]
    assert calls[1][:2] == ["ftbench", "doctor"] and calls[1][calls[1].index("--gpu") + 1] == "h100"
    assert calls[2][0] == "srun"


def test_sbatch_stops_before_srun_when_the_rehearsal_fails(tmp_path):
    env, log = _cluster(tmp_path, rehearsal_exit=1)
    out = _run(SBATCH, env)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert [c[:2] for c in _calls(log)][-1] == ["ftbench", "doctor"]  # srun never ran
    assert "the rehearsal failed" in out.stderr
