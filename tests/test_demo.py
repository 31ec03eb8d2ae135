"""`shardkit demo`: the main job trains, logs metrics.jsonl, checkpoints and resumes."""
import subprocess
import sys

import pytest
from rich.console import Console

from shardkit.cli import build_parser
from shardkit.demo import DemoConfig, run_demo
from shardkit.train import read_metrics


def test_demo_flags_parse_as_designed():
    args = build_parser().parse_args(["demo", "--steps", "7", "--workdir", "w", "--checkpoint-every", "3",
                                      "--resume", "--mesh", "data=2,model=4", "--plan", "megatron"])
    assert (args.steps, args.workdir, args.checkpoint_every, args.resume) == (7, "w", 3, True)
    assert args.mesh == {"data": 2, "model": 4} and args.plan == "megatron"
    defaults = build_parser().parse_args(["demo"])
    assert defaults.plan == "fsdp+tp" and defaults.mesh is None and not defaults.resume
    launch = build_parser().parse_args(["launch", "-n", "2", "--", "python", "train.py", "--steps", "3"])
    assert launch.num_processes == 2 and launch.argv[-4:] == ["python", "train.py", "--steps", "3"]


def test_demo_help_runs():
    out = subprocess.run([sys.executable, "-m", "shardkit.cli", "demo", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--checkpoint-every" in out.stdout and "--plan" in out.stdout


@pytest.mark.slow
def test_demo_trains_checkpoints_and_resumes(tmp_path):
    console = Console(record=True, width=120)
    small = dict(workdir=str(tmp_path), checkpoint_every=2, seq_len=32, embed=32, heads=2, layers=1,
                 batch=16, samples=1, sample_length=20, progress=False)
    first = run_demo(DemoConfig(steps=4, **small), console=console)
    text = " ".join(console.export_text().split())
    assert "plan 'fsdp+tp'" in text and "printed, parsed back identically and verified" in text
    assert "XLA" in text and "ok" in text and "Shall I " in text
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    more = run_demo(DemoConfig(steps=6, resume=True, check=False, **small), console=Console(width=120))
    assert [r["step"] for r in more] == [5, 6]
    logged = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert all("loss" in r for r in logged)
