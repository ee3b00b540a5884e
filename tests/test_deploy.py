"""The deployment files agree with pyproject, with the CLI and with each other; none holds a password.

Docker, Kubernetes and Slurm are not available here: every ``sweep ...`` invocation in these files is
parsed by the real CLI (without running it), and the files are checked for the facts they share.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "storage" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s-job.yaml"
SLURM = ROOT / "deploy" / "slurm-array.sh"
STORAGE_README = ROOT / "storage" / "README.md"
DEPLOY_FILES = (DOCKERFILE, COMPOSE, K8S, SLURM, STORAGE_README)


def parse_cli(argv: list[str]) -> dict[str, Any]:
    """Parse ``sweep ARGV`` exactly as the console script would, without running the command.

    Unknown commands or options and invalid values raise the CLI's usage errors.
    """
    from sweep.cli import app

    command: Any = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="sweep")  # a group's context, nothing parsed yet
    args = list(argv)
    while hasattr(command, "get_command"):  # a group: descend into the named subcommand
        assert args, f"sweep {' '.join(argv)}: missing a command"
        name, args = args[0], args[1:]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"sweep {' '.join(argv)}: no command {name!r}"
        if hasattr(sub, "get_command"):
            ctx = sub.context_class(sub, info_name=name, parent=ctx)
        command = sub
    return command.make_context(command.name, args, parent=ctx).params


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_job() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "Job"]
    assert len(jobs) == 1, "deploy/k8s-job.yaml must hold exactly one Job"
    return jobs[0]


def _interpolate(value: str) -> str:
    """Compose-style ${VAR:-default} / ${VAR:?error} / ${VAR} → the default, else a dummy value."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*)|:?\?[^}]*)?\}", lambda m: m.group(2) or f"dummy-{m.group(1).lower()}", value)


# --------------------------------------------------------------------------- the CLI helper itself


def test_parse_cli_rejects_what_the_cli_rejects() -> None:
    assert parse_cli(["worker", "lr-freeze", "--gpu", "0"])["gpu"] == [0]
    assert parse_cli(["bench", "report", "--n-trials", "10"])["n_trials"] == 10
    for bad in (["worker", "--gpux", "0"], ["worker", "--per-gpu", "0"], ["nonsense"], ["bench", "nope"]):
        with pytest.raises((AssertionError, Exception)):
            parse_cli(bad)


# --------------------------------------------------------------------------- pyproject + Dockerfile


def test_console_script_is_the_typer_app_and_the_image_entrypoint() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"sweep": "sweep.cli:app"}
    from sweep.cli import app

    assert isinstance(app, typer.Typer)
    steps = dockerfile()
    entrypoint = [json.loads(a) for i, a in steps if i == "ENTRYPOINT"]
    cmd = [json.loads(a) for i, a in steps if i == "CMD"]
    assert entrypoint == [["sweep"]], "ENTRYPOINT must be the console script, in exec form"
    assert cmd == [["--help"]]
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "sweep", *cmd[0]], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and "worker" in result.stdout


def test_dockerfile_caches_dependencies_before_the_source() -> None:
    steps = dockerfile()
    base = next(a for i, a in steps if i == "ARG" and a.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", base)
    assert ("FROM", "${BASE_IMAGE}") in steps

    def index(pred: Any) -> int:
        return next(n for n, step in enumerate(steps) if pred(*step))

    copy_pyproject = index(lambda i, a: i == "COPY" and a.split()[0] == "pyproject.toml")
    install_deps = index(lambda i, a: i == "RUN" and "pip install" in a and "requirements" in a)
    copy_source = index(lambda i, a: i == "COPY" and a.split()[0] == "sweep/")
    install_pkg = index(lambda i, a: i == "RUN" and "pip install --no-deps ." in a)
    copy_studies = index(lambda i, a: i == "COPY" and a.split()[0] == "studies/")  # the built-in specs
    assert copy_pyproject < install_deps < copy_source < install_pkg and copy_studies < install_pkg
    # The dependency layer reads pyproject's lists, PostgreSQL driver included.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("psycopg") for d in extras["postgres"])
    assert "optional-dependencies']['postgres']" in steps[install_deps][1]


def test_dockerfile_copies_only_what_exists_and_runs_unprivileged() -> None:
    steps = dockerfile()
    for instruction, args in steps:
        if instruction == "COPY":
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    last_user = max(n for n, (i, _) in enumerate(steps) if i == "USER")
    assert last_user < max(n for n, (i, _) in enumerate(steps) if i == "ENTRYPOINT")
    workdir = [a for i, a in steps if i == "WORKDIR"][-1]
    made = _image_dirs()
    assert workdir + "/storage" in made or any(d.startswith(workdir + "/storage/") for d in made)
    assert (ROOT / "studies" / "lr-freeze.toml").exists()


def _image_dirs() -> set[str]:
    """Absolute directories that `RUN mkdir -p` creates (relative to the WORKDIR at that point)."""
    workdir, made = "/", set()
    for instruction, args in dockerfile():
        if instruction == "WORKDIR":
            workdir = args
        if instruction == "RUN" and "mkdir -p" in args:
            words = shlex.split(args.split("mkdir -p", 1)[1].split("&&")[0])
            made |= {w if w.startswith("/") else f"{workdir.rstrip('/')}/{w}" for w in words}
    return made


def _image_uid() -> int:
    match = re.search(r"useradd\b[^\n]*--uid (\d+)", DOCKERFILE.read_text())
    assert match, "the Dockerfile creates its user with a fixed --uid"
    return int(match.group(1))


# --------------------------------------------------------------------------- compose


def test_compose_runs_postgres_16_with_a_volume_and_a_health_check() -> None:
    spec = compose()
    pg = spec["services"]["postgres"]
    assert pg["image"].startswith("postgres:16")
    volume, _, target = pg["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data" and volume in spec["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${")


def test_compose_worker_is_the_image_on_gpus_after_postgres_is_healthy() -> None:
    spec = compose()
    worker = spec["services"]["worker"]
    context = (COMPOSE.parent / worker["build"]["context"]).resolve()
    assert context == ROOT and (context / worker["build"].get("dockerfile", "Dockerfile")).exists()
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    parse_cli([_interpolate(a) for a in worker["command"]])
    url = worker["environment"]["SWEEP_STORAGE"]
    assert "${" in url, "the storage URL takes its password from the environment"
    from sweep.storage import validate_url

    assert validate_url(_interpolate(url)).startswith("postgresql+psycopg://sweep:")
    assert "@postgres:5432/" in url
    made = _image_dirs()
    for mount in worker.get("volumes", []):
        name, _, target = mount.partition(":")
        assert name in spec["volumes"]
        assert target in made, f"{target}: create it in the image (owned by its user) so the volume is writable"


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_job_one_gpu_per_pod_storage_from_a_secret() -> None:
    job = k8s_job()
    assert job["apiVersion"] == "batch/v1"
    assert isinstance(job["spec"]["parallelism"], int) and job["spec"]["parallelism"] >= 1
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert pod["securityContext"]["runAsUser"] == _image_uid()
    (worker,) = pod["containers"]
    assert worker["args"] == ["worker", "lr-freeze", "--gpu", "0"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        assert "command" not in container, "use the image's ENTRYPOINT (sweep)"
        parse_cli(container["args"])
        env = {e["name"]: e for e in container["env"]}
        ref = env["SWEEP_STORAGE"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"]
        assert "value" not in env["SWEEP_STORAGE"]


# --------------------------------------------------------------------------- Slurm


def test_slurm_array_is_valid_bash_one_gpu_per_task() -> None:
    for args in _sweep_invocations(SLURM.read_text()):
        parse_cli(args)
    subprocess.run(["bash", "-n", str(SLURM)], check=True)
    text = SLURM.read_text()
    sbatch = dict(
        line.removeprefix("#SBATCH ").split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH --")
    )
    assert "--array" in sbatch
    assert sbatch.get("--gres") == "gpu:1" or sbatch.get("--gpus-per-task") == "1"


def _sweep_invocations(text: str, comments: bool = True) -> list[list[str]]:
    """Every `sweep <command> ...` in the text (and its # comments), variables replaced by defaults or dummies."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            if not comments:
                continue
            line = line.lstrip("#").strip()
        for match in re.finditer(r"(?:^|[\s`(])sweep ((?:create|worker|report|status|list|rerun|bench)\b[^`]*)", line):
            body = _interpolate(match.group(1).split(" #", 1)[0])
            body = re.sub(r"\$\{?(\w+)\}?", lambda m: "lr-freeze" if m.group(1) in ("1", "study") else "4", body)
            out.append(shlex.split(body))
    return out


def test_slurm_uses_the_gpu_slurm_gave_it() -> None:
    runs = [a for a in _sweep_invocations(SLURM.read_text(), comments=False) if a and a[0] == "worker"]
    assert runs, "deploy/slurm-array.sh runs no `sweep worker`"
    for args in runs:
        params = parse_cli(args)
        # --gpu N would overwrite the CUDA_VISIBLE_DEVICES Slurm set for this task.
        assert params["device"] == "cuda" and not params["gpu"]
    assert re.search(r"\bsrun\b.*\bsweep worker\b", SLURM.read_text()), "--signal reaches job steps only: use srun"


# --------------------------------------------------------------------------- README + secrets


def test_storage_readme_covers_the_directory_and_its_commands_parse() -> None:
    text = STORAGE_README.read_text()
    for entry in ("sweep.db", "reports/", "artifacts/", "cache/", "compose.yaml", "docker compose up"):
        assert entry in text
    gitignore = (ROOT / ".gitignore").read_text()
    for ignored in ("storage/*.db", "storage/reports/", "storage/artifacts/", "storage/cache/"):
        assert ignored in gitignore
    invocations = _sweep_invocations(text)
    for line in text.splitlines():  # `docker compose run --rm worker ARGS` runs `sweep ARGS`
        match = re.search(r"docker compose run --rm worker (.*?)(?:\s+#.*)?$", line)
        if match:
            invocations.append(shlex.split(match.group(1)))
    assert len(invocations) >= 4
    for args in invocations:
        parse_cli(args)


SAFE_SECRET = re.compile(r"^(\$|<|\*\*\*|PASSWORD$|password$|pw$)")


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_password_is_hard_coded(path: Path) -> None:
    text = path.read_text()
    for match in re.finditer(r"://[^\s:/@'\"]+:([^\s@'\"]+)@", text):
        assert SAFE_SECRET.match(match.group(1)), f"{path.name}: a literal password in {match.group(0)!r}"
    for match in re.finditer(r"(?i)(?<![{$])\b\w*PASSWORD\w*\s*[:=]\s*['\"]?([^\s'\"]+)", text):
        assert SAFE_SECRET.match(match.group(1)), f"{path.name}: {match.group(0)!r} sets a literal password"
