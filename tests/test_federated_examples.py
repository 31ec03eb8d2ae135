"""The federated examples run end to end (tiny settings) and print what they promise."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_fedavg_example_trains_and_reports_accuracy():
    out = run_example("fedavg.py", "--rounds", "3", "--clients", "8", "--local-steps", "2")
    assert "final test accuracy" in out


@pytest.mark.slow
def test_diloco_example_reports_bytes_against_data_parallel():
    out = run_example("diloco.py", "--rounds", "2", "--inner-steps", "3", "--batch", "4", "--corpus-chars", "20000")
    assert "validation loss after" in out
    assert "fewer bytes than synchronous data parallelism" in out
    assert "3.0x" in out  # H=3 inner steps per outer step: a third of the all-reduces


def test_examples_have_help():
    for name in ("fedavg.py", "diloco.py"):
        assert "usage" in run_example(name, "--help")
