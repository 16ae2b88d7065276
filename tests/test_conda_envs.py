"""The conda environments are wired and complete: every rule that runs the package names an env file, the
file holds every third-party package the rule's stage imports, and its pins are pyproject.toml's.

The truth for "what a rule imports" is the package's import graph (``taskprune.import_graph``, read from
the source with ``ast``), starting at the stage module the rule's shell command runs (``taskprune <stage>``,
resolved through ``taskprune.cli.STAGES``). Import names become distributions through the installed
packages' metadata (``importlib.metadata.packages_distributions``), so ``yaml`` is checked as ``pyyaml``.
Nothing here builds an environment: conda channels are unreachable offline (see README).
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from taskprune import import_graph
from taskprune.cli import STAGES

RULES_DIR = ROOT / "workflow" / "rules"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def exact_pins(requirements: list[str], where: str) -> dict[str, str]:
    """``name==version`` requirements as {normalised name: version}; anything else fails the test."""
    pins = {}
    for req in requirements:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)\s*", req)
        assert m, f"{where}: {req!r} is not an exact pin (name==version)"
        pins[normalise(m.group(1))] = m.group(2)
    return pins


def env_pins(env_file: Path) -> dict[str, str]:
    env = yaml.safe_load(env_file.read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, f"{env_file.name}: expected one pip: section"
    return exact_pins(pip[0], env_file.name)


def optional_distributions() -> set[str]:
    """Distributions only pyproject's extras name (e.g. the embedding model): a stage may import them
    behind an availability check, so an environment need not hold them."""
    extras = pyproject()["project"].get("optional-dependencies", {})
    return {normalise(re.split(r"[<>=!~ \[;]", r)[0]) for reqs in extras.values() for r in reqs}


def rule_blocks() -> list[tuple[str, str, str]]:
    """(file, rule name, block text) of every rule in workflow/rules/ and the Snakefile."""
    out = []
    for path in [ROOT / "Snakefile", *sorted(RULES_DIR.glob("*.smk"))]:
        text = path.read_text()
        starts = [m for m in re.finditer(r"(?m)^(\s*)rule\s*([A-Za-z0-9_]*)\s*:", text)]
        for i, m in enumerate(starts):
            block = text[m.start() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
            name = m.group(2)
            if not name:  # `rule:` with `name: f"evaluate_{...}"`
                named = re.search(r"name:\s*\n\s*f?[\"']([A-Za-z0-9_{}\[\]\(\)'\" .,:^-]+?)[\"']\s*\n", block)
                name = named.group(1) if named else "<unnamed>"
            out.append((path.name, name, block))
    return out


@cache
def rule_envs() -> dict[str, tuple[str, Path]]:
    """{rule: (stage its shell runs, env file)} read from the rule files, env constants resolved."""
    common = (RULES_DIR / "common.smk").read_text()
    constants = dict(re.findall(r'(?m)^(ENV_[A-Z]+)\s*=\s*"([^"]+)"', common))
    out = {}
    for file, name, block in rule_blocks():
        stage = re.search(r"taskprune ([a-z][a-z-]*)", block)
        if stage is None or stage.group(1) not in STAGES:
            continue
        conda = re.search(r"(?m)^\s*conda:\s*\n(?:\s*#.*\n)*\s*(\S+)", block)
        assert conda, f"{file}: rule {name} runs taskprune {stage.group(1)} but has no conda: directive"
        value = conda.group(1).strip("\"'")
        env = constants.get(value, value)
        out[name] = (stage.group(1), (RULES_DIR / env).resolve())
    return out


@cache
def import_name_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def missing_packages(stage: str, env: dict[str, str]) -> set[str]:
    """Distributions the stage imports that ``env`` (normalised name -> version) does not hold."""
    dists = import_name_distributions()
    optional = optional_distributions()
    missing = set()
    for top in import_graph.stage_third_party(stage):
        names = {normalise(d) for d in dists.get(top, [top])}
        if names & optional or names & set(env):
            continue
        missing.add("/".join(sorted(names)))
    return missing


def test_every_package_rule_has_an_existing_env_file():
    envs = rule_envs()
    assert len(envs) >= 10, f"found too few rules that run the package: {sorted(envs)}"
    for rule, (_, env) in envs.items():
        assert env.is_file(), f"rule {rule}: conda env {env} does not exist"
        post_deploy = env.with_name(env.stem + ".post-deploy.sh")
        assert post_deploy.is_file(), f"rule {rule}: {post_deploy.name} (installs the package) is missing"


@pytest.mark.parametrize("rule", sorted(rule_envs()))
def test_env_holds_every_third_party_package_the_stage_imports(rule):
    stage, env_file = rule_envs()[rule]
    missing = missing_packages(stage, env_pins(env_file))
    assert not missing, f"rule {rule} (taskprune {stage}) imports {sorted(missing)}, absent from {env_file.name}"


def test_the_check_sees_a_missing_package():
    """The completeness check is not vacuous: the figures stage imports seaborn and polars."""
    analysis = env_pins(ROOT / "envs" / "analysis.yaml")
    assert not missing_packages("figures", analysis)
    without = {k: v for k, v in analysis.items() if k not in ("seaborn", "polars")}
    assert missing_packages("figures", without) == {"seaborn", "polars"}


def test_env_pins_are_exact_and_match_pyproject():
    project = exact_pins(pyproject()["project"]["dependencies"], "pyproject.toml [project.dependencies]")
    listed: set[str] = set()
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        for name, version in env_pins(env_file).items():
            assert name in project, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
            assert version == project[name], f"{env_file.name}: {name}=={version}, pyproject.toml: {project[name]}"
            listed.add(name)
    # everything the package depends on is in some job environment, except the orchestrator itself
    orchestration = {"snakemake", "snakemake-executor-plugin-slurm"}
    assert set(project) - orchestration - listed == set()


def test_installed_versions_are_the_pinned_ones():
    """The venv the default run uses is what the pins say (a drifted venv makes the pins a fiction)."""
    for name, version in exact_pins(pyproject()["project"]["dependencies"], "pyproject.toml").items():
        installed = importlib.metadata.version(name)
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"
