"""The Dockerfiles, checked without a container engine (none runs here).

What can be checked is: the base images are pinned, the builds are
multi-stage and end as a non-root user, the entrypoints are commands that
exist and start, the operator image's dependency set holds no torch, the build
context (.dockerignore) keeps what the Dockerfiles copy, and the image names
match the chart's defaults and the operator's settings.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from chart_testkit import REPO, operator_container, render, values_yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kascade import __version__
from kascade.api.modelcascade import ModelCascade
from kascade.operator import engine_transformers
from kascade.operator.builders import build_router_deployment
from kascade.operator.settings import DEFAULT_RUNTIME_IMAGE, OperatorSettings

IMAGES = REPO / "images"
OPERATOR_DOCKERFILE = IMAGES / "operator.Dockerfile"
RUNTIME_DOCKERFILE = IMAGES / "runtime.Dockerfile"
KASCADE = Path(sys.executable).with_name("kascade")  # the console script of this environment
NON_ROOT = "65532:65532"
# What must never reach the operator image: the in-process model stack.
HEAVY = {"torch", "transformers", "accelerate", "gguf", "triton", "vllm"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for word, argument in self.instructions if word == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and their defaults
    stages: list[Stage]
    text: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    text = path.read_text()
    logical = re.sub(
        r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, (line.strip() for line in logical.splitlines())):
        word, _, argument = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", argument.strip(), re.I)
            assert match, line
            stages.append(Stage(base=match.group(1), name=match.group(2)))
        elif not stages and word == "ARG":
            name, _, default = argument.partition("=")
            args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append((word, argument.strip()))
    return Dockerfile(args=args, stages=stages, text=text)


DOCKERFILES = {"operator": OPERATOR_DOCKERFILE, "runtime": RUNTIME_DOCKERFILE}


def exec_form(argument: str) -> list[str]:
    value = json.loads(argument)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), argument
    return value


# --- structure ------------------------------------------------------------------------------


@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_images_are_pinned(image: str):
    dockerfile = parse(DOCKERFILES[image])
    images = {name: value for name, value in dockerfile.args.items() if name.endswith("_IMAGE")}
    assert images, "name the base images in ARGs, so that a digest can be pinned at build time"
    for name, reference in images.items():
        repository, _, tag = reference.partition("@")[0].rpartition(":")
        assert repository and tag and tag != "latest", f"{name}={reference}: pin a tag"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}={reference}: pin a full version, not a floating one"
    stage_names = {stage.name for stage in dockerfile.stages if stage.name}
    for stage in dockerfile.stages:
        base = stage.base
        known = re.fullmatch(r"\$\{(\w+)\}", base)
        assert (
            (known and known.group(1) in images) or base in stage_names or re.fullmatch(r"base-\$\{VARIANT\}", base)
        ), f"FROM {base}: use a pinned ARG image or an earlier stage"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_builds_are_multi_stage_and_end_as_a_non_root_user(image: str):
    dockerfile = parse(DOCKERFILES[image])
    assert len(dockerfile.stages) >= 2
    final = dockerfile.final
    assert final.all("USER") == [NON_ROOT]
    assert any(word == "COPY" and argument.startswith("--from=") for word, argument in final.instructions), (
        "the final stage takes the built environment from a build stage"
    )
    assert not any("pip install" in argument for argument in final.all("RUN")), "install in a build stage"
    # The chart's pod runs as the image's user.
    context = values_yaml()["operator"]["podSecurityContext"]
    assert f"{context['runAsUser']}:{context['runAsGroup']}" == NON_ROOT
    assert any("/opt/kascade/bin" in env for env in final.all("ENV"))


def test_the_runtime_image_has_cpu_and_cuda_variants():
    dockerfile = parse(RUNTIME_DOCKERFILE)
    assert dockerfile.args["VARIANT"] == "cpu"
    names = {stage.name for stage in dockerfile.stages}
    assert {"base-cpu", "base-cuda"} <= names
    assert sum(stage.base == "base-${VARIANT}" for stage in dockerfile.stages) == 2  # build and final


def test_the_runtime_image_installs_the_torch_the_local_extra_pins():
    local = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    (torch,) = [Requirement(item) for item in local if Requirement(item).name == "torch"]
    assert str(torch.specifier) == f"=={parse(RUNTIME_DOCKERFILE).args['TORCH_VERSION']}"


# --- entrypoints -----------------------------------------------------------------------------


@pytest.mark.slow  # helm template
def test_the_entrypoints_are_what_the_chart_and_the_operator_run():
    operator_entrypoint = exec_form(parse(OPERATOR_DOCKERFILE).final.all("ENTRYPOINT")[-1])
    assert operator_entrypoint == ["kascade", "operator"] == operator_container(render("defaults"))["command"]
    runtime_entrypoint = exec_form(parse(RUNTIME_DOCKERFILE).final.all("ENTRYPOINT")[-1])
    assert runtime_entrypoint == ["kascade"]
    # The operator sets the commands of the pods it runs in the runtime image.
    cascade = ModelCascade.model_validate(yaml.safe_load((REPO / "examples" / "local-demo.yaml").read_text()))
    (router,) = build_router_deployment(cascade, OperatorSettings())["spec"]["template"]["spec"]["containers"]
    for command in (router["command"], list(engine_transformers.COMMAND)):
        assert command[0] == runtime_entrypoint[0] and command[1] in _subcommands()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """The `kascade` console script, as the images run it (python -m kascade where no script is installed)."""
    command = [str(KASCADE)] if KASCADE.exists() else [sys.executable, "-m", "kascade"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def _subcommands() -> set[str]:
    import typer

    from kascade.cli import app

    return set(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", [["route", "--help"], ["serve", "--help"], ["image-cmd"]])
@pytest.mark.slow  # starts the commands
def test_the_runtime_images_commands_start(command: list[str]):
    """`kascade route|serve --help` and the image's default CMD answer at once."""
    if command == ["image-cmd"]:
        command = exec_form(parse(RUNTIME_DOCKERFILE).final.all("CMD")[-1])
    done = _run(*command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Usage:" in done.stdout


@pytest.mark.parametrize("source", ["chart", "image"])
@pytest.mark.slow  # starts the command
def test_the_operator_command_accepts_the_arguments_it_is_given(source: str):
    """`kascade operator ARGS --help`: click refuses unknown options before it prints help, so this checks ARGS."""
    assert "operator" in _subcommands()
    if source == "chart":
        arg_sets = [operator_container(render("defaults"))["args"], operator_container(render("namespaced"))["args"]]
    else:
        arg_sets = [exec_form(parse(OPERATOR_DOCKERFILE).final.all("CMD")[-1])]
    for args in arg_sets:
        done = _run("operator", *args, "--help")
        assert done.returncode == 0, f"kascade operator {shlex.join(args)}:\n{done.stdout}{done.stderr}"


# --- the operator image holds no torch ---------------------------------------------------------


def _requirements(distribution: str, extras: frozenset[str]) -> list[Requirement]:
    result = []
    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
            result.append(requirement)
    return result


def resolved_dependencies(distribution: str, extras: frozenset[str]) -> set[str]:
    """Every distribution `pip install distribution[extras]` brings, read from installed metadata."""
    seen: set[str] = set()
    unresolved: list[str] = []
    queue = [(distribution, extras)]
    while queue:
        name, wanted = queue.pop()
        for requirement in _requirements(name, wanted):
            dependency = canonicalize_name(requirement.name)
            if dependency == canonicalize_name(distribution):  # kascade[operator] in kascade[dev]
                queue.append((name, frozenset(requirement.extras)))
                continue
            key = dependency
            if key in seen and not requirement.extras:
                continue
            try:
                importlib.metadata.distribution(dependency)
            except importlib.metadata.PackageNotFoundError:
                unresolved.append(str(requirement))
                continue
            seen.add(key)
            queue.append((dependency, frozenset(requirement.extras)))
    assert unresolved == [], f"not installed here, so not checked: {unresolved}"
    return seen


def test_the_operator_extra_pulls_no_torch():
    dependencies = resolved_dependencies("kascade", frozenset({"operator"}))
    assert {"kopf", "kubernetes", "pydantic"} <= dependencies
    heavy = {name for name in dependencies if name in HEAVY or name.startswith("nvidia-")}
    assert heavy == set(), f"kascade[operator] pulls {sorted(heavy)}"
    # The check can see torch: the `local` extra does pull it.
    assert "torch" in resolved_dependencies("kascade", frozenset({"local"}))


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_operator_and_the_cli_loads_no_torch():
    """Every module of kascade.operator imports without torch or transformers (lazy imports stay lazy)."""
    code = (
        "import pkgutil, importlib, sys, kascade.operator, kascade.cli\n"
        "for module in pkgutil.iter_modules(kascade.operator.__path__):\n"
        "    importlib.import_module('kascade.operator.' + module.name)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the operator imports {done.stdout.strip()}"


# --- names, tags and the build context ---------------------------------------------------------------


def built_tags(path: Path) -> list[str]:
    """The `-t NAME:TAG` of the documented `docker build` commands in a Dockerfile's header."""
    return re.findall(r"docker build .*?-t (\S+) \.$", path.read_text(), re.M)


@pytest.mark.slow  # helm template
def test_image_names_match_the_chart_and_the_operators_defaults():
    values = values_yaml()
    (operator_tag,) = built_tags(OPERATOR_DOCKERFILE)
    assert operator_tag == f"{values['operator']['image']['repository']}:{__version__}"
    assert operator_container(render("defaults"))["image"] == operator_tag
    cpu, cuda = built_tags(RUNTIME_DOCKERFILE)
    runtime = values["cascades"]["runtimeImage"]
    assert cpu == f"{runtime['repository']}:{__version__}" == DEFAULT_RUNTIME_IMAGE
    assert cuda == f"{cpu}-cuda"
    assert "--build-arg VARIANT=cuda" in RUNTIME_DOCKERFILE.read_text()


def _dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory pattern covers what is under it."""
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes) or fnmatch.fnmatch(path, pattern):
            included = negated
    return included


def test_the_build_context_keeps_the_packages_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = {folder.split("/")[0] for folder in pyproject["tool"]["setuptools"]["package-dir"].values()}
    for path in DOCKERFILES.values():
        sources: set[str] = set()
        for stage in parse(path).stages:
            for argument in stage.all("COPY"):
                if not argument.startswith("--from="):
                    *copied, _destination = argument.split()
                    sources |= {source.rstrip("/") for source in copied}
        assert package_dirs <= sources, f"{path.name} does not copy {sorted(package_dirs - sources)}"
        for source in sources:
            files = (
                [p for p in (REPO / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
                if (REPO / source).is_dir()
                else [REPO / source]
            )
            assert files, source
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                dropped = f".dockerignore drops {relative}, which {path.name} copies"
                assert _dockerignore_includes(relative, patterns), dropped
    readme = pyproject["project"]["readme"]
    assert _dockerignore_includes(readme, patterns)
    for dropped in (
        ".venv/bin/python",
        "tests/conftest.py",
        "charts/kascade/Chart.yaml",
        ".git/HEAD",
        "kascade/__pycache__/cli.cpython-311.pyc",
        "bench/results.json",
    ):
        assert not _dockerignore_includes(dropped, patterns), f".dockerignore keeps {dropped}"
