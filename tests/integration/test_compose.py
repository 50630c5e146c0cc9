"""Deployment files, checked by parsing (no Docker engine here).

``docker-compose.yml`` is validated against the official Compose JSON schema from
``../shared/schemas/compose-spec.json``; every ``VEIL_*`` name must be a ``Settings`` field
(``veil`` rejects unknown ones at start-up); credentials only come by ``${...}``
substitution. Each checker is also run on a broken copy, to show it can fail.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "compose-spec.json"
DOCKERFILE_CPU = ROOT / "deploy" / "Dockerfile.cpu"
DOCKERFILE_GPU = ROOT / "deploy" / "Dockerfile.gpu"

SERVICES = {"redis", "minio", "minio-init", "flower", "cpu-worker", "gpu-worker", "orchestrator"}
APP_SERVICES = {"flower": "cpu", "cpu-worker": "cpu", "gpu-worker": "gpu", "orchestrator": "cpu"}
KNOWN_VEIL = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
VEIL_NAME = re.compile(r"\bVEIL_[A-Za-z0-9_]+")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<rest>[^}]*))?\}")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|ACCESS_KEY", re.IGNORECASE)
NO_DEFAULT_NAME = re.compile(r"SECRET|PASSWORD", re.IGNORECASE)


# -- helpers and checkers (each returns a list of problems; empty means fine) -----------------


def load_yaml(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)  # SafeLoader resolves anchors and << merge keys
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose_text() -> str:
    assert COMPOSE.is_file(), f"{COMPOSE} is missing"
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    return load_yaml(compose_text)


@pytest.fixture(scope="module")
def schema_validator():
    if not SCHEMA.is_file():
        pytest.fail(f"Compose JSON schema not found at {SCHEMA} (expected ../shared/schemas/ beside the repo)")
    import json

    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def schema_problems(validator, data: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(data)]


def environment(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment as a mapping, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return dict(env)
    out: dict[str, Any] = {}
    for item in env:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else None
    return out


def unknown_veil_env(data: dict[str, Any]) -> list[str]:
    """``VEIL_*`` keys in any service's environment that are not Settings fields."""
    return [f"{name}: {key}" for name, svc in (data.get("services") or {}).items()
            for key in environment(svc)
            if key.upper().startswith(ENV_PREFIX) and key.upper() not in KNOWN_VEIL]


def unknown_veil_names(text: str) -> list[str]:
    """Any ``VEIL_*`` name anywhere in a file's text (substitutions, shell lines, ENV)."""
    return sorted({m.group(0) for m in VEIL_NAME.finditer(text) if m.group(0).upper() not in KNOWN_VEIL})


def literal_secrets(data: dict[str, Any]) -> list[str]:
    """Credential-named variables whose value is not exactly one ``${...}`` substitution;
    SECRET/PASSWORD ones may not fall back to a default either."""
    problems = []
    for name, svc in (data.get("services") or {}).items():
        for key, value in environment(svc).items():
            if not SECRET_NAME.search(key):
                continue
            m = SUBSTITUTION.fullmatch(str(value)) if value is not None else None
            if m is None:
                problems.append(f"{name}: {key} is not a ${{...}} substitution")
            elif NO_DEFAULT_NAME.search(key) and m.group("op") in (":-", "-"):
                problems.append(f"{name}: {key} falls back to a literal default")
    return problems


def command_argv(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def gpu_reservation_problems(service: dict[str, Any]) -> list[str]:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
    if not devices:
        return ["no deploy.resources.reservations.devices"]
    ok = any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])
             and (d.get("count") == "all" or d.get("device_ids")) for d in devices)
    return [] if ok else [f"no nvidia GPU reservation in {devices}"]


def scaling_problems(service: dict[str, Any]) -> list[str]:
    problems = []
    if "container_name" in service:
        problems.append("container_name set: the service cannot scale")
    for port in service.get("ports") or []:
        published = port.get("published") if isinstance(port, dict) else (str(port).split(":")[-2:-1] or [None])[0]
        if published:
            problems.append(f"publishes host port {published}: a second replica would clash")
    return problems


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    if buf:
        lines.append(buf)
    out = []
    for line in lines:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def expand_args(text: str) -> str:
    """Substitute ``ARG NAME=default`` values, as a build with no --build-arg would."""
    for instr, args in dockerfile_instructions(text):
        if instr == "ARG" and "=" in args:
            name, _, default = args.partition("=")
            default = default.strip().strip('"')
            text = re.sub(r"\$\{" + re.escape(name.strip()) + r"\}|\$" + re.escape(name.strip()) + r"\b",
                          default, text)
    return text


def pip_installs(text: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in RUN instructions, in order."""
    found = []
    for instr, args in dockerfile_instructions(expand_args(text)):
        if instr != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        starts = [0] + [n + 1 for n, tok in enumerate(tokens) if tok in ("&&", "||", ";", "|")]
        for s in starts:  # each simple command of the RUN line
            cmd = tokens[s:]
            if cmd[:2] in (["python", "-m"], ["python3", "-m"]):
                cmd = cmd[2:]
            if len(cmd) >= 2 and cmd[0] in ("pip", "pip3") and cmd[1] == "install":
                rest = cmd[2:]
                end = next((n for n, tok in enumerate(rest) if tok in ("&&", "||", ";", "|")), len(rest))
                found.append(rest[:end])
    return found


def installs_project(args: list[str]) -> bool:
    return any(a == "." or a == "./" or re.fullmatch(r"\.\[[\w,-]+\]", a) for a in args)


def dockerfile_problems(text: str, gpu: bool) -> list[str]:
    problems = []
    instrs = dockerfile_instructions(expand_args(text))
    froms = [a.split()[0] for i, a in instrs if i == "FROM"]
    if not froms:
        problems.append("no FROM")
    elif gpu and not froms[-1].startswith(("nvidia/cuda:", "pytorch/pytorch:")):
        problems.append(f"GPU base is {froms[-1]}, not nvidia/cuda or pytorch/pytorch")
    elif not gpu and froms[-1] != "python:3.11-slim":
        problems.append(f"CPU base is {froms[-1]}, not python:3.11-slim")
    installs = pip_installs(text)
    project_at = [n for n, args in enumerate(installs) if installs_project(args)]
    if not project_at:
        problems.append("no `pip install .` of the project")
    torch_at = [n for n, args in enumerate(installs) if any(a.startswith("torch") for a in args)]
    if not gpu:
        cpu_torch = [n for n in torch_at if "https://download.pytorch.org/whl/cpu" in installs[n]]
        if not cpu_torch:
            problems.append("torch is not installed from the PyTorch CPU index")
        elif project_at and cpu_torch[0] > project_at[0]:
            problems.append("CPU torch installed after the project (pip would pull CUDA torch first)")
    users = [a for i, a in instrs if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("runs as root (no non-root USER)")
    envs = " ".join(a for i, a in instrs if i == "ENV")
    if not re.search(r"\bHF_HUB_OFFLINE[= ]1\b", envs):
        problems.append("HF_HUB_OFFLINE=1 not set")
    if any(i == "ENTRYPOINT" for i, _ in instrs):
        problems.append("has an ENTRYPOINT")
    if not gpu and ("CMD", '["veil", "--help"]') not in instrs:
        problems.append('CMD is not ["veil", "--help"]')
    problems += [f"unknown setting {n}" for n in unknown_veil_names(text)]
    return problems


# -- (a) the Compose schema ----------------------------------------------------------------


def test_compose_matches_official_schema(compose, schema_validator):
    assert schema_problems(schema_validator, compose) == []


def test_schema_check_rejects_invalid_compose(compose, schema_validator):
    broken = copy.deepcopy(compose)
    broken["services"]["cpu-worker"]["imagee"] = "typo"
    broken["services"]["flower"]["depends_on"]["minio-init"]["condition"] = "service_done"
    problems = schema_problems(schema_validator, broken)
    assert any(p.startswith("services/cpu-worker:") and "imagee" in p for p in problems), problems
    assert any(p.startswith("services/flower/depends_on") for p in problems), problems


# -- (b) VEIL_* names are Settings fields ------------------------------------------------------


def test_veil_env_keys_are_settings_fields(compose):
    assert unknown_veil_env(compose) == []
    seen = {k for svc in compose["services"].values() for k in environment(svc) if k.startswith(ENV_PREFIX)}
    assert {"VEIL_BROKER_URL", "VEIL_S3_ENDPOINT_URL", "VEIL_S3_ACCESS_KEY_ID",
            "VEIL_S3_SECRET_ACCESS_KEY", "VEIL_MODELS_DIR", "VEIL_FLOWER_PASSWORD"} <= seen


def test_every_veil_name_in_the_file_is_a_settings_field(compose_text):
    # substitutions like ${VEIL_X} and $$VEIL_X in shell lines too: veil rejects unknown VEIL_*
    assert unknown_veil_names(compose_text) == []


def test_shared_env_reaches_every_app_service(compose):
    shared = compose["x-veil-env"]
    for name in APP_SERVICES:
        env = environment(compose["services"][name])
        assert {k: env.get(k) for k in shared} == shared, name
    assert shared["VEIL_BROKER_URL"] == "redis://veil:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0"
    assert shared["VEIL_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert shared["VEIL_MODELS_DIR"] == "/models"


def test_unknown_veil_variable_is_rejected(compose, compose_text):
    broken = copy.deepcopy(compose)
    cpu = broken["services"]["cpu-worker"]
    cpu["environment"] = {**environment(cpu), "VEIL_FOO": "1"}  # not the shared anchor's dict
    assert unknown_veil_env(broken) == ["cpu-worker: VEIL_FOO"]
    listed = copy.deepcopy(compose)
    listed["services"]["flower"]["environment"] = ["VEIL_BROKER_URL=redis://redis:6379/0", "VEIL_FOO=1"]
    assert unknown_veil_env(listed) == ["flower: VEIL_FOO"]
    assert unknown_veil_names(compose_text + "\n# s3://${VEIL_BUCKET:-veil}/\n") == ["VEIL_BUCKET"]


# -- (c) services, commands, GPUs, scaling, secrets --------------------------------------------


def test_services_exist(compose):
    assert SERVICES <= set(compose["services"])


def test_commands(compose):
    svc = compose["services"]
    assert command_argv(svc["flower"]) == ["veil", "flower"]
    assert command_argv(svc["cpu-worker"]) == ["veil", "worker", "cpu", "--concurrency", "2"]
    assert command_argv(svc["gpu-worker"]) == ["veil", "worker", "gpu"]
    assert command_argv(svc["orchestrator"]) == [
        "veil", "submit", "s3://${BUCKET:-veil}/${INPUT_PREFIX:-input/}",
        "--out", "s3://${BUCKET:-veil}/${OUTPUT_PREFIX:-output/}"]
    assert command_argv(svc["minio"]) == ["server", "/data", "--console-address", ":9001"]
    assert "127.0.0.1:5555:5555" in [str(p) for p in svc["flower"]["ports"]]  # this host only (issue 23)


def expand_defaults(arg: str) -> str:
    """``${NAME:-default}`` -> default, as compose would with NAME unset."""
    return SUBSTITUTION.sub(lambda m: m.group("rest") if m.group("op") in (":-", "-") else "x", arg)


def cli_problems(argv: list[str]) -> list[str]:
    """Whether ``veil`` (orchestrator.cli) accepts this command line."""
    from orchestrator.cli import build_parser

    if argv[:1] != ["veil"]:
        return [f"{argv} does not run veil"]
    try:
        build_parser().parse_args([expand_defaults(a) for a in argv[1:]])
    except SystemExit:
        return [f"veil rejects {argv[1:]}"]
    return []


def test_commands_parse_with_the_cli(compose):
    for name in APP_SERVICES:
        assert cli_problems(command_argv(compose["services"][name])) == [], name
    assert cli_problems(["veil", "models", "fetch"]) == []  # the README's weight fetch
    assert cli_problems(["veil", "worker", "tpu"]) != []
    assert cli_problems(["veil", "submit", "s3://veil/input/"]) != []  # --out is required


def test_infrastructure(compose):
    svc = compose["services"]
    assert svc["redis"]["image"] == "redis:7-alpine"
    # issue 23: the default user off, Veil's ACL user from the file the k8s component uses
    assert "redis-cli --user veil ping" in svc["redis"]["healthcheck"]["test"][1]
    assert "user default off" in svc["redis"]["command"][2] and "/etc/redis/veil.acl" in svc["redis"]["command"][2]
    assert "./deploy/k8s/components/redis/veil.acl:/etc/redis/veil.acl:ro" in svc["redis"]["volumes"]
    assert svc["minio"]["image"].split(":")[0] == "minio/minio"
    assert "healthcheck" in svc["minio"]
    assert svc["minio-init"]["image"].split(":")[0] == "minio/mc"
    init_script = " ".join(map(str, svc["minio-init"].get("entrypoint") or [])) + " " + \
        " ".join(command_argv(svc["minio-init"]))
    assert "mc mb" in init_script and "$$BUCKET" in init_script
    assert environment(svc["minio-init"])["BUCKET"] == "${BUCKET:-veil}"
    assert set(compose["volumes"]) >= {"models", "minio-data"}
    assert "minio-data:/data" in svc["minio"]["volumes"]


def test_app_services_build_and_wait(compose):
    for name, kind in APP_SERVICES.items():
        svc = compose["services"][name]
        build = svc["build"]
        assert build["dockerfile"] == f"deploy/Dockerfile.{kind}", name
        assert (ROOT / build.get("context", ".") / build["dockerfile"]).is_file(), name
        deps = svc["depends_on"]
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    for name in ("cpu-worker", "gpu-worker"):
        assert "models:/models" in [str(v).removesuffix(":ro") for v in compose["services"][name]["volumes"]]


def test_orchestrator_is_one_shot_under_submit_profile(compose):
    orch = compose["services"]["orchestrator"]
    assert orch["profiles"] == ["submit"]
    assert orch["restart"] == "no"
    for name in SERVICES - {"orchestrator"}:
        assert "profiles" not in compose["services"][name], name


def test_gpu_worker_reserves_nvidia_gpus(compose):
    assert gpu_reservation_problems(compose["services"]["gpu-worker"]) == []
    assert gpu_reservation_problems(compose["services"]["cpu-worker"]) != []
    broken = copy.deepcopy(compose["services"]["gpu-worker"])
    broken["deploy"]["resources"]["reservations"]["devices"][0]["driver"] = "amd"
    assert gpu_reservation_problems(broken) != []


def test_workers_can_scale(compose):
    cpu = compose["services"]["cpu-worker"]
    assert scaling_problems(cpu) == []
    assert cpu["deploy"]["replicas"] == 2
    assert scaling_problems(compose["services"]["gpu-worker"]) == []
    assert scaling_problems({**cpu, "container_name": "veil-cpu"}) != []
    assert scaling_problems({**cpu, "ports": ["8000:8000"]}) != []


def test_no_literal_secrets(compose):
    assert literal_secrets(compose) == []
    env = compose["x-veil-env"]
    assert env["VEIL_S3_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD:?")
    assert env["VEIL_FLOWER_PASSWORD"].startswith("${VEIL_FLOWER_PASSWORD:?")
    assert env["VEIL_S3_ACCESS_KEY_ID"].startswith("${MINIO_ROOT_USER")


@pytest.mark.parametrize("key,value", [
    ("VEIL_S3_SECRET_ACCESS_KEY", "minio123"),
    ("VEIL_FLOWER_PASSWORD", "${VEIL_FLOWER_PASSWORD:-changeme}"),
    ("VEIL_S3_ACCESS_KEY_ID", "AKIAEXAMPLE"),
    ("VEIL_S3_SECRET_ACCESS_KEY", "x${MINIO_ROOT_PASSWORD}"),
])
def test_literal_secret_is_rejected(compose, key, value):
    broken = copy.deepcopy(compose)
    gpu = broken["services"]["gpu-worker"]
    gpu["environment"] = {**environment(gpu), key: value}
    assert literal_secrets(broken) != []


# -- (d) Dockerfiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("path,gpu", [(DOCKERFILE_CPU, False), (DOCKERFILE_GPU, True)], ids=["cpu", "gpu"])
def test_dockerfile(path, gpu):
    assert path.is_file(), f"{path} is missing"
    assert dockerfile_problems(path.read_text(), gpu) == []


def test_dockerfile_checker_rejects_broken_copies():
    text = DOCKERFILE_CPU.read_text()
    no_project = re.sub(r'pip install "?\.(\[[\w,-]+\])?"?', "pip install requests", text)
    assert "no `pip install .` of the project" in dockerfile_problems(no_project, gpu=False)
    cuda_torch = text.replace("https://download.pytorch.org/whl/cpu", "https://pypi.org/simple")
    assert "torch is not installed from the PyTorch CPU index" in dockerfile_problems(cuda_torch, gpu=False)
    as_root = re.sub(r"^USER .*$", "USER root", text, flags=re.M)
    assert "runs as root (no non-root USER)" in dockerfile_problems(as_root, gpu=False)
    assert dockerfile_problems(text, gpu=True) != []  # python:3.11-slim is no CUDA base


@pytest.mark.parametrize("path, extra", [(DOCKERFILE_CPU, "cpu"), (DOCKERFILE_GPU, "gpu")])
def test_each_image_installs_its_tier_extra(path, extra):
    """A CPU image without diffusers, a GPU image without deepface/FACER (pyproject.toml extras)."""
    projects = [a for args in pip_installs(path.read_text()) for a in args if installs_project([a])]
    assert projects == [f".[{extra}]"]


def test_dockerignore():
    path = ROOT / ".dockerignore"
    assert path.is_file()
    entries = {line.strip().strip("/") for line in path.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "out", ".env"} <= entries
