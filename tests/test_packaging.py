"""Set-up files agree with each other, so the conda and pip routes install the same thing."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: v for k, v in project["optional-dependencies"].items() if k != "bench"}  # bench: optional TRL
    requirements = project["dependencies"] + [r for extra in extras.values() for r in extra]
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+]+)", r).groups() for r in requirements)


def environment_pins() -> tuple[dict, list]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+]+)", r).groups() for r in pip if "==" in r)
    return pins, env["dependencies"]


def test_every_requirement_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+]+", requirement), requirement
    assert pyproject_pins()["torch"] == "2.13.0" and "sympy" in pyproject_pins()


def test_environment_yml_matches_pyproject():
    pins, dependencies = environment_pins()
    assert pins == pyproject_pins()
    pip = next(d["pip"] for d in dependencies if isinstance(d, dict))
    assert any(line.startswith("-e") for line in pip), "environment.yml must install the package itself"
    python = next(d for d in dependencies if isinstance(d, str) and d.startswith("python="))
    required = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert python.removeprefix("python=") in required


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"unified-rlhf": "unified_rlhf.cli:main"}
