"""Dockerfile, docker-compose.yml and .dockerignore agree with Settings and with the app's routes.

The files are parsed, never built or run: these checks need no Docker engine.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from app.config import ENV_PREFIX, Settings, load_settings
from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVICE = "upscaler"
LIVE_ROUTE = "/health/live"
UPSCALER_VARIABLE = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b")
# Compose interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME:+other}, ...
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<word>[^}]*))?\}")
ROOT_USERS = {"root", "0"}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    args: str  # everything after the keyword, continuation lines joined
    line: int  # where the instruction starts, 1-based


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order. A trailing backslash continues a line; comment and blank lines are
    dropped, also inside a continuation (as docker does)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"Dockerfile ends inside a line continuation started on line {start}")
    return instructions


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """`--name=value ... rest` -> ({name: value}, rest): COPY --chown=..., HEALTHCHECK --interval=..."""
    flags: dict[str, str] = {}
    while match := re.match(r"--([\w-]+)(?:=(\S*))?\s+", args):
        flags[match.group(1)] = match.group(2) or ""
        args = args[match.end() :]
    return flags, args


def command_argv(form: str) -> list[str]:
    """An instruction's command as argv: the JSON (exec) form as written, the shell form through sh -c."""
    if form.startswith("["):
        argv = json.loads(form)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), form
        return argv
    return ["/bin/sh", "-c", form]


def env_pairs(args: str) -> dict[str, str]:
    """ENV KEY=VALUE [KEY=VALUE ...] (quotes allowed), or the old single `ENV KEY value` form."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: args.split(None, 1)[1].strip()}
    return dict(token.split("=", 1) for token in tokens)


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in of(instructions, "ENV"):
        env.update(env_pairs(instruction.args))
    return env


def build_args(instructions: list[Instruction]) -> dict[str, str | None]:
    """ARG NAME[=default] declared after FROM (the ones RUN can use) -> default."""
    first_from = instructions.index(of(instructions, "FROM")[0])
    args: dict[str, str | None] = {}
    for instruction in of(instructions[first_from:], "ARG"):
        name, sep, default = shlex.split(instruction.args)[0].partition("=")
        args[name] = default if sep else None
    return args


@dataclass(frozen=True)
class Copy:
    index: int  # position in the instruction list
    sources: list[str]
    dest: PurePosixPath  # absolute, resolved against WORKDIR


def copies(instructions: list[Instruction]) -> list[Copy]:
    """COPY/ADD from the build context (not --from a stage), with destinations made absolute."""
    found: list[Copy] = []
    workdir = PurePosixPath("/")
    for index, instruction in enumerate(instructions):
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.args.strip()
        elif instruction.keyword in ("COPY", "ADD"):
            flags, rest = split_flags(instruction.args)
            paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if "from" not in flags:
                found.append(Copy(index, paths[:-1], workdir / paths[-1]))
    return found


def source_name(path: str) -> str:
    return str(PurePosixPath(path))  # "./weights/" -> "weights"


def healthcheck_argv(compose_test: Any) -> list[str]:
    """A compose healthcheck `test` as argv: ["CMD", ...] as written, CMD-SHELL or a string through sh -c."""
    if isinstance(compose_test, str):
        return ["/bin/sh", "-c", compose_test]
    kind, *rest = compose_test
    if kind == "CMD":
        return list(rest)
    assert kind == "CMD-SHELL", f"healthcheck test must start with CMD or CMD-SHELL, not {kind!r}"
    return ["/bin/sh", "-c", " ".join(rest)]


def program_argv(argv: list[str]) -> list[str]:
    """The program a healthcheck runs: sh -c "<cmd> || exit 1" unwrapped to <cmd>'s argv."""
    if argv[:2] == ["/bin/sh", "-c"]:
        return shlex.split(argv[2].split("||")[0])
    return argv


def parse_ignore(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the build context: the last matching pattern wins,
    `!` takes a path back, and leaving a folder out leaves out what is inside it."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = str(PurePosixPath(pattern.lstrip("!").strip().strip("/")))
        forms = {body}
        while body.startswith("**/"):
            body = body[3:]
            forms.add(body)
        if any(fnmatch.fnmatchcase(c, f) for c in candidates for f in forms):
            excluded = not negate
    return excluded


def interpolated(value: str) -> tuple[list[str], str | None]:
    """Names referenced by compose interpolation, and the value used when the host leaves them unset
    (None when that is unknown: `${NAME}` with no default is whatever the host has, `:?` requires it)."""
    names = [m.group("name") for m in INTERPOLATION.finditer(value)]
    unknown = False

    def default(match: re.Match[str]) -> str:
        nonlocal unknown
        op = match.group("op") or ""
        if op.endswith("-"):
            return match.group("word")
        if op.endswith("+"):
            return ""
        unknown = True
        return ""

    substituted = INTERPOLATION.sub(default, value)
    return names, None if unknown else substituted


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and SERVICE in data.get("services", {}), f"no service {SERVICE!r}"
    return data


@pytest.fixture(scope="module")
def service(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"][SERVICE]


@pytest.fixture(scope="module")
def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """Paths the app answers with GET, built but not started. Recent FastAPI keeps included routers as
    one opaque entry in `app.routes`, so the OpenAPI schema (same source as /docs) lists them too."""
    app = create_app()
    paths = {
        path
        for route in app.routes
        if (path := getattr(route, "path", None)) and "GET" in (getattr(route, "methods", None) or ())
    }
    return paths | {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


def test_dockerfile_parser_joins_continuations_and_drops_comments() -> None:
    text = "FROM x\n# note\nRUN a \\\n    # inside\n    && b\nENV A=1 \\\n    B='two words'\nENV C 3\n"
    parsed = parse_dockerfile(text)
    assert [(i.keyword, i.args, i.line) for i in parsed] == [
        ("FROM", "x", 1),
        ("RUN", "a && b", 3),
        ("ENV", "A=1 B='two words'", 6),
        ("ENV", "C 3", 8),
    ]
    assert image_env(parsed) == {"A": "1", "B": "two words", "C": "3"}
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("RUN a \\\n")


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE], ids=lambda p: p.name)
def test_upscaler_variables_are_settings_fields(path: Path) -> None:
    names = set(UPSCALER_VARIABLE.findall(path.read_text()))
    assert names, f"{path.name} names no {ENV_PREFIX}* variable"
    unknown = sorted(n for n in names if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields)
    assert not unknown, f"{path.name} names variables that Settings does not have: {unknown}"


def test_dockerfile_env_values_validate(dockerfile: list[Instruction]) -> None:
    env = {k: v for k, v in image_env(dockerfile).items() if k.startswith(ENV_PREFIX)}
    assert env, f"the Dockerfile sets no {ENV_PREFIX}* variable"
    for name, value in env.items():
        load_settings({name: value})  # raises SettingsError naming the variable
    settings = load_settings(env)
    assert str(settings.weights_dir) == env["UPSCALER_WEIGHTS_DIR"]


def test_compose_environment_values_validate(compose_env: dict[str, str]) -> None:
    upscaler = {k: v for k, v in compose_env.items() if k.startswith(ENV_PREFIX)}
    assert upscaler, f"the compose service sets no {ENV_PREFIX}* variable"
    effective: dict[str, str] = {}
    for name, value in upscaler.items():
        names, unset_value = interpolated(value)
        # A pass-through reads the host variable of the same name, never another setting's.
        assert all(n == name for n in names if n.startswith(ENV_PREFIX)), f"{name}: {value!r}"
        if unset_value is not None:
            load_settings({name: unset_value})
            effective[name] = unset_value
    load_settings(effective)
    assert "UPSCALER_API_KEY" in upscaler, "the API key should be passed through from the host"
    names, unset_value = interpolated(upscaler["UPSCALER_API_KEY"])
    assert names == ["UPSCALER_API_KEY"], "the API key should come from the host environment"
    assert unset_value == "", "an unset host API key should leave the service open, not set a key"


def test_ports_agree_with_settings(
    dockerfile: list[Instruction], service: dict[str, Any], compose_env: dict[str, str]
) -> None:
    exposed = {int(p.split("/")[0]) for i in of(dockerfile, "EXPOSE") for p in i.args.split()}
    container_ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            container_ports.add(int(entry["target"]))
        else:
            container_ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    sources = {
        "EXPOSE": exposed,
        "compose container port": container_ports,
        "Dockerfile UPSCALER_PORT": {int(image_env(dockerfile)["UPSCALER_PORT"])},
        "Settings default port": {Settings.model_fields["port"].default},
    }
    if "UPSCALER_PORT" in compose_env:
        sources["compose UPSCALER_PORT"] = {int(compose_env["UPSCALER_PORT"])}
    assert all(len(ports) == 1 for ports in sources.values()), sources
    assert len(set().union(*sources.values())) == 1, sources


def dockerfile_healthcheck(dockerfile: list[Instruction]) -> list[str]:
    checks = of(dockerfile, "HEALTHCHECK")
    assert checks, "the Dockerfile has no HEALTHCHECK"
    _, rest = split_flags(checks[-1].args)
    keyword, _, form = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK should run a command, not {rest!r}"
    return command_argv(form.strip())


@pytest.mark.parametrize("where", ["Dockerfile", "compose"])
def test_healthcheck_probes_live_route_with_python(
    where: str, dockerfile: list[Instruction], service: dict[str, Any], get_routes: set[str]
) -> None:
    if where == "Dockerfile":
        argv = dockerfile_healthcheck(dockerfile)
    else:
        assert "healthcheck" in service, "the compose service has no healthcheck"
        argv = healthcheck_argv(service["healthcheck"]["test"])
    program = program_argv(argv)
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


def test_dockerfile_runs_as_non_root_user(dockerfile: list[Instruction]) -> None:
    users = of(dockerfile, "USER")
    assert users, "the Dockerfile has no USER: the service would run as root"
    user = users[-1].args.split(":")[0].strip()
    assert user not in ROOT_USERS, f"the service runs as {user!r}"
    if not user.isdigit():
        created = any(
            re.search(rf"\b(useradd|adduser)\b.*\s{re.escape(user)}(\s|$)", run.args)
            for run in of(dockerfile, "RUN")
        )
        assert created, f"no RUN creates the user {user!r}"


def test_compose_mounts_weights_read_only_at_weights_dir(
    dockerfile: list[Instruction], service: dict[str, Any], compose_env: dict[str, str]
) -> None:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            read_only = bool(volume.get("read_only"))
            mounts.append((str(volume.get("source", "")), str(volume["target"]), read_only))
        else:
            source, target, *mode = str(volume).split(":")
            mounts.append((source, target, bool(mode) and "ro" in mode[0].split(",")))
    weights = [m for m in mounts if PurePosixPath(m[0]) == PurePosixPath("weights")]
    assert len(weights) == 1, f"expected one mount of ./weights, got {mounts}"
    _, target, read_only = weights[0]
    assert read_only, "./weights should be mounted read-only (:ro)"
    weights_dir = compose_env.get("UPSCALER_WEIGHTS_DIR") or image_env(dockerfile)["UPSCALER_WEIGHTS_DIR"]
    assert PurePosixPath(target) == PurePosixPath(weights_dir)


def test_dockerfile_copies_weights_into_weights_dir(dockerfile: list[Instruction]) -> None:
    weights = [c for c in copies(dockerfile) if [source_name(s) for s in c.sources] == ["weights"]]
    assert weights, "the Dockerfile does not copy weights/ into the image"
    assert weights[-1].dest == PurePosixPath(image_env(dockerfile)["UPSCALER_WEIGHTS_DIR"])


def test_compose_restart_policy_restarts(service: dict[str, Any]) -> None:
    policy = str(service.get("restart", "no"))
    assert policy in {"always", "unless-stopped"} or policy.startswith("on-failure"), policy


def test_dockerfile_cmd_runs_app_module(dockerfile: list[Instruction], service: dict[str, Any]) -> None:
    assert not of(dockerfile, "ENTRYPOINT"), "an ENTRYPOINT would turn CMD into its arguments"
    cmds = of(dockerfile, "CMD")
    assert cmds, "the Dockerfile has no CMD"
    argv = command_argv(cmds[-1].args)
    assert PurePosixPath(argv[0]).name in {"python", "python3"} and argv[1:] == ["-m", "app"], argv
    assert "command" not in service and "entrypoint" not in service, "compose overrides the CMD"
    spec = importlib.util.find_spec("app.__main__")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin) == ROOT / "app" / "__main__.py"


def test_dockerfile_installs_dependencies_before_code(dockerfile: list[Instruction]) -> None:
    code = [c.index for c in copies(dockerfile) if "app" in {source_name(s) for s in c.sources}]
    assert code, "the Dockerfile does not copy app/"
    installs = [
        (n, i.args) for n, i in enumerate(dockerfile) if i.keyword == "RUN" and "pip install" in i.args
    ]
    before = [args for n, args in installs if n < code[0]]
    after = [args for n, args in installs if n > code[0]]
    assert any("torch" in args for args in before), "torch should be installed before app/ is copied"
    assert any("-r " in args or "requirements" in args for args in before), "dependencies before app/"
    # Editing app/ rebuilds only the layers after its COPY: none of them may resolve dependencies again.
    assert all("--no-deps" in args for args in after), after


def test_dockerfile_torch_defaults_to_pinned_cpu_wheels(dockerfile: list[Instruction]) -> None:
    args = build_args(dockerfile)
    assert (args.get("TORCH_INDEX_URL") or "").endswith("/whl/cpu"), args
    makefile_pin = re.search(r"TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text())
    assert makefile_pin is not None
    assert args.get("TORCH_VERSION") == makefile_pin.group(1), "the image and `make install` pin one torch"
    torch_runs = [i.args for i in of(dockerfile, "RUN") if "torch" in i.args and "pip install" in i.args]
    assert torch_runs, "no RUN installs torch"
    for name in ("TORCH_INDEX_URL", "TORCH_VERSION"):
        assert any(re.search(rf"\$\{{?{name}\b", run) for run in torch_runs), f"{name} is never used"


def test_compose_build_uses_this_dockerfile_and_its_args(
    dockerfile: list[Instruction], service: dict[str, Any]
) -> None:
    build = service.get("build")
    assert build is not None, "the compose service is not built from the Dockerfile"
    if isinstance(build, str):
        build = {"context": build}
    assert (COMPOSE.parent / build.get("context", ".")).resolve() == ROOT
    assert (ROOT / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    args = build.get("args") or {}
    if isinstance(args, list):
        args = dict(item.split("=", 1) for item in args)
    undeclared = set(args) - set(build_args(dockerfile))
    assert not undeclared, f"compose passes build args the Dockerfile does not declare: {undeclared}"


def test_dockerignore_keeps_build_sources_and_drops_local_state(dockerfile: list[Instruction]) -> None:
    tomllib = pytest.importorskip("tomllib")
    patterns = parse_ignore(DOCKERIGNORE.read_text())
    sources = {source_name(s) for c in copies(dockerfile) for s in c.sources}
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    # `pip install .` reads pyproject.toml and the readme it names.
    assert {"pyproject.toml", readme} - {None} <= sources, sources
    for source in sorted(sources):
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source, patterns), f"COPY {source}: .dockerignore leaves it out"
    for local in (".venv", ".git", "tests", "runs", "app/__pycache__", ".pytest_cache"):
        assert ignored(local, patterns), f".dockerignore should leave out {local}"


def test_dockerignore_matching_follows_docker_rules() -> None:
    patterns = ["**/__pycache__", "docs", "*.md", "!README.md"]
    assert ignored("app/api/__pycache__/x.pyc", patterns)
    assert ignored("docs/a/b.txt", patterns)
    assert ignored("NOTES.md", patterns)
    assert not ignored("README.md", patterns)
    assert not ignored("app/main.py", patterns)
