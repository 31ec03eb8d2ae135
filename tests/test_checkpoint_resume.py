"""Kill a training process with SIGKILL mid-run, resume it, and get the same loss trajectory."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shardkit.train import read_metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

DRIVER = textwrap.dedent("""
    import os, signal, sys
    from shardkit.train import setup_devices
    setup_devices(8)
    sys.path.insert(0, {examples!r})
    import shardkit as sk
    from mlp_data_parallel import TeacherBatches, build

    workdir, plan, steps, resume, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
    model, optimizer, loss_fn = build(64, 1e-2)
    trainer = sk.train.Trainer(model, optimizer, loss_fn, mesh=sk.make_mesh({{"data": 4, "model": 2}}), plan=plan)

    def on_step(record):
        if record["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.fit(TeacherBatches(32), steps=steps, workdir=workdir, checkpoint_every=4, resume=resume,
                progress=False, on_step=on_step)
""")


def run(driver, *args, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDKIT_")}
    proc = subprocess.run([sys.executable, str(driver), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_loss_trajectory(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(examples=str(EXAMPLES)))
    run(driver, tmp_path / "whole", "fsdp+tp", 16, 0, 0)
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert [r["step"] for r in whole] == list(range(1, 17))

    killed = run(driver, tmp_path / "killed", "fsdp+tp", 16, 0, 10, check=False)
    assert killed.returncode == -signal.SIGKILL
    before = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in before] == list(range(1, 11))
    resumed = run(driver, tmp_path / "killed", "fsdp+tp", 16, 1, 0)
    after = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in after] == list(range(1, 17)), resumed.stderr[-2000:]
    assert [r["loss"] for r in after] == [r["loss"] for r in whole]
