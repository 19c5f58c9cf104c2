"""`ftbench doctor --json` on this machine: every row runs and passes."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_doctor_json_all_rows_pass():
    # 25 s on a quiet 2-core CPU; 160 s measured with other jobs on the machine.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "ftbench.doctor.cli", "--json"], env=env,
                         capture_output=True, text=True, timeout=600)
    result = json.loads(out.stdout)
    names = [r["name"] for r in result["rows"]]
    failed = [(r["name"], r["measured"], r["detail"][-500:]) for r in result["rows"]
              if not r["passed"]]
    assert not failed, failed
    assert out.returncode == 0, out.stderr[-2000:]
    assert result["passed"] is True
    for key in ("device", "bf16", "compile", "FSDP2", "resume", "FSDP2 bf16", "timed step",
                "peak memory"):
        assert any(key in n for n in names), (key, names)
    assert result["seconds"] < 300


def test_doctor_rejects_bad_arguments():
    from ftbench.doctor.checks import run_doctor

    with pytest.raises(ValueError, match="--nproc"):
        run_doctor(nproc=1)
    with pytest.raises(ValueError, match="--layers"):
        run_doctor(layers=3)
