"""The functional examples run (small settings) and reach what they claim."""
import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["functional_dft", "neural_operator",
                                  "brachistochrone"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_dft_potentials_and_thomas_fermi(capsys):
    load("functional_dft").main(["--points", "10", "--steps", "20"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "max |v - reference|" in line]
    assert len(lines) == 3
    for line in lines:
        err = float(line.split("max |v - reference| = ")[1].split()[0])
        assert err < 1e-4, line
        assert "finite: True" in line
    energies = [float(line.split("E = ")[1].split()[0]) for line in out.splitlines() if "step" in line
                and "E = " in line]
    assert energies[-1] < energies[0]


def test_neural_operator_trains(capsys):
    load("neural_operator").main(["--steps", "4", "--grid", "32"])
    out = capsys.readouterr().out
    losses = [float(line.split("loss ")[1].split()[0]) for line in out.splitlines()
              if line.startswith("step ") and "loss " in line]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_brachistochrone_approaches_the_cycloid(capsys):
    load("brachistochrone").main(["--steps", "300", "--width", "12", "--points", "128"])
    out = capsys.readouterr().out
    final = [line for line in out.splitlines() if line.startswith("final T")][0]
    assert float(final.split(", ")[1].split("%")[0]) < 2.0
