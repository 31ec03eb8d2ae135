"""`shardkit launch`: N cooperating processes on localhost; failures stop the others."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shardkit.cli import main as cli_main
from shardkit.train import LaunchError, launch, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("SHARDKIT_")}


def test_launch_passes_the_run_layout_and_stops_the_others_when_one_fails(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, time
        rank = os.environ["SHARDKIT_PROCESS_ID"]
        with open(os.path.join({str(tmp_path)!r}, "env" + rank), "w") as f:
            f.write(" ".join([os.environ["SHARDKIT_NUM_PROCESSES"], os.environ["SHARDKIT_LOCAL_DEVICE_COUNT"],
                              os.environ["SHARDKIT_COORDINATOR_ADDRESS"], os.environ.get("JAX_PLATFORMS", "")]))
        if rank == "1":
            time.sleep(0.5)
            sys.exit(3)
        time.sleep(120)
    """)
    started = time.monotonic()
    code = launch([sys.executable, "-c", script], 2, devices=8, grace_s=2, env=clean_env())
    elapsed = time.monotonic() - started
    assert code == 3 and elapsed < 30
    layouts = [(tmp_path / f"env{r}").read_text().split() for r in range(2)]
    assert all(l[0] == "2" and l[1] == "4" and l[3] == "cpu" for l in layouts)
    assert layouts[0][2] == layouts[1][2] and layouts[0][2].startswith("127.0.0.1:")


def test_launch_command_line_and_bad_input(tmp_path, capsys):
    marker = tmp_path / "ran"
    code = cli_main(["launch", "-n", "2", "--devices", "2", "--", sys.executable, "-c",
                     f"import os; open({str(marker)!r} + os.environ['SHARDKIT_PROCESS_ID'], 'w').close()"])
    assert code == 0 and (tmp_path / "ran0").exists() and (tmp_path / "ran1").exists()
    with pytest.raises(LaunchError, match="do not split evenly"):
        launch([sys.executable, "-c", "pass"], 3, devices=8)
    with pytest.raises(LaunchError, match="needs a command"):
        launch(["--"], 2)
    with pytest.raises(LaunchError, match="could not start"):
        launch(["/nonexistent/program"], 1, devices=1)


def _train(args, workdir, launched: bool):
    cmd = [sys.executable, str(ROOT / "examples" / "mlp_data_parallel.py"), "--steps", "6", "--mesh",
           "data=4,model=2", "--no-progress", "--workdir", str(workdir), *args]
    if launched:
        cmd = [sys.executable, "-m", "shardkit.cli", "launch", "-n", "2", "--grace", "5", "--timeout", "240", "--"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=clean_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_metrics(workdir / "metrics.jsonl")


@pytest.mark.slow
def test_two_process_training_agrees_with_one_process(tmp_path):
    args = ["--plan", "fsdp", "--checkpoint-every", "3"]
    single = _train(args, tmp_path / "one", launched=False)
    double = _train(args, tmp_path / "two", launched=True)
    assert [r["step"] for r in double] == list(range(1, 7))
    for a, b in zip(single, double):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"]))
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    resumed = _train(args + ["--resume", "--steps", "8"], tmp_path / "two", launched=True)
    assert [r["step"] for r in resumed] == list(range(1, 9))


@pytest.mark.slow
def test_a_process_dying_mid_training_ends_the_launch(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from shardkit.train import setup_devices
        setup_devices(8)
        sys.path.insert(0, {str(ROOT / "examples")!r})
        import jax
        import shardkit as sk
        from mlp_data_parallel import TeacherBatches, build
        model, optimizer, loss_fn = build(32, 1e-2)
        trainer = sk.train.Trainer(model, optimizer, loss_fn, mesh=sk.make_mesh({{"data": 8}}), plan="dp")

        def on_step(record):
            if record["step"] == 3 and jax.process_index() == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer.fit(TeacherBatches(32), steps=10_000, progress=False, on_step=on_step)
    """))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "shardkit.cli", "launch", "-n", "2", "--grace", "3", "--",
                           sys.executable, str(driver)], capture_output=True, text=True, timeout=300,
                          env=clean_env(), cwd=ROOT)
    assert proc.returncode != 0
    assert "process 1 exited" in proc.stderr
    assert time.monotonic() - started < 200
