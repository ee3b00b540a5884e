"""The deployment files agree with pyproject, with the CLI and with each other; none holds a password.

Docker and Kubernetes are not available here: every ``sweep ...`` invocation in these files is parsed by
the real CLI (without running it), the files are checked for the facts they share, and the Kubernetes Job
is validated against the Kubernetes OpenAPI schemas that ``kubernetes-validate`` bundles (offline). The
Slurm script runs for real in tests/test_slurm.py.
"""

from __future__ import annotations

import copy
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

from sweep.errors import EX_UNAVAILABLE

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
    # The dependency layer reads pyproject's lists, PostgreSQL driver and trackers (workers log to them) included.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("psycopg") for d in extras["postgres"])
    for extra in ("postgres", "mlflow", "tensorboard"):
        assert f"optional-dependencies']['{extra}']" in steps[install_deps][1]


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


# The Kubernetes releases the Job is checked against: podFailurePolicy is GA from 1.31, backoffLimitPerIndex
# on by default from 1.29; and the newest schema the validator bundles.
K8S_VERSIONS = ("1.31", "latest")
POD_FAILURE_ACTIONS = {"FailJob", "FailIndex", "Ignore", "Count"}  # not an enum in the OpenAPI schema
EXIT_DATABASE_UNAVAILABLE = EX_UNAVAILABLE  # 69: the worker's code when its database stays away


def _validate_k8s(doc: dict[str, Any], version: str) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    kubernetes_validate.validate(doc, latest_version() if version == "latest" else version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_kubernetes_schema(version: str) -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    for doc in docs:
        _validate_k8s(doc, version)  # strict: an unknown field is an error, as `kubectl apply` makes it
    # The validator really checks: each of these breaks the Job and is refused.
    breakages = {
        "a misspelt field": lambda job: job["spec"]["template"]["spec"].update(terminationGracePeriod=600),
        "a string for a number": lambda job: job["spec"].update(completions="four"),
        "a container without a name": lambda job: job["spec"]["template"]["spec"]["containers"][0].pop("name"),
        "an exit code as a string": lambda job: job["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"].update(
            values=["75"]
        ),
        "a secret reference misspelt": lambda job: job["spec"]["template"]["spec"]["containers"][0]["env"][0][
            "valueFrom"
        ].update(secretRef={"name": "sweep-storage"}),
    }
    import kubernetes_validate

    for what, breakage in breakages.items():
        broken = copy.deepcopy(k8s_job())
        breakage(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate_k8s(broken, version)
            pytest.fail(f"the schema accepted {what}")


def test_k8s_job_survives_preemption_and_retries_what_a_new_pod_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    from sweep.objectstore import parse_s3
    from sweep.supervisor import EXIT_DEVICE_LOST

    job = k8s_job()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy: Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert {r["action"] for r in rules} <= POD_FAILURE_ACTIONS

    def action_for_exit(code: int) -> str | None:
        for rule in rules:
            match = rule.get("onExitCodes")
            if match and match.get("containerName") in (None, "worker"):
                if (code in match["values"]) == (match["operator"] == "In"):
                    return str(rule["action"])
        return None

    # Restart-worthy: the pod again, counted; a user's setting error: the Job fails at once.
    assert action_for_exit(EXIT_DEVICE_LOST) == "Count" and action_for_exit(EXIT_DATABASE_UNAVAILABLE) == "Count"
    assert action_for_exit(2) == "FailJob"
    # Preemption is not the worker's failure: ignored, the index started again.
    assert any(
        r["action"] == "Ignore" and {"type": "DisruptionTarget", "status": "True"} in r.get("onPodConditions", [])
        for r in rules
    )
    (worker,) = pod["containers"]
    env = {e["name"]: e for e in worker["env"]}
    # A worker stopped by SIGTERM must not exit 0 (that would complete its index for good), nor with a code
    # a rule would fail the Job for.
    params = parse_cli(worker["args"])
    monkeypatch.setenv("SWEEP_SIGNAL_EXIT", env["SWEEP_SIGNAL_EXIT"]["value"])
    signal_exit = parse_cli(worker["args"])["signal_exit"]
    assert params["signal_exit"] == 0 and signal_exit == 143 and action_for_exit(signal_exit) in (None, "Count")
    # Long enough for an epoch and its upload (lr-freeze: well under 5 minutes on one GPU).
    assert pod["terminationGracePeriodSeconds"] >= 300
    # Checkpoints and kept models in object storage; nothing of theirs on a pod's disk.
    bucket, prefix = parse_s3(env["SWEEP_ARTIFACTS"]["value"])
    assert bucket and prefix == "lr-freeze"
    assert not any(m["mountPath"].endswith("artifacts") for m in worker["volumeMounts"])
    assert not any(v["name"] == "artifacts" for v in pod["volumes"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "sweep-s3"
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True  # AWS S3 needs none


# --------------------------------------------------------------------------- Slurm


def test_slurm_array_is_valid_bash_one_gpu_per_task() -> None:
    for args in _sweep_invocations(SLURM.read_text()):
        parse_cli(args)
    subprocess.run(["bash", "-n", str(SLURM)], check=True)
    text = SLURM.read_text()
    sbatch = dict(
        line.removeprefix("#SBATCH ").partition("=")[::2] for line in text.splitlines() if line.startswith("#SBATCH --")
    )
    assert "--requeue" in sbatch and sbatch["--signal"].startswith("TERM@"), "preempted and timed-out tasks hand back"
    assert "--array" in sbatch
    assert sbatch.get("--gres") == "gpu:1" or sbatch.get("--gpus-per-task") == "1"


# What the Slurm script's variables hold by default (deploy/slurm-array.sh sets them; others become "4").
SHELL_DEFAULTS = {"1": "lr-freeze", "study": "lr-freeze", "device": "cuda"}


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
            body = _interpolate(match.group(1).split(" #", 1)[0]).rstrip().removesuffix("&")  # run in the background
            body = re.sub(r"\$\{?(\w+)\}?", lambda m: SHELL_DEFAULTS.get(m.group(1), "4"), body)
            out.append(shlex.split(body))
    return out


def test_slurm_uses_the_gpu_slurm_gave_it() -> None:
    runs = [a for a in _sweep_invocations(SLURM.read_text(), comments=False) if a and a[0] == "worker"]
    assert runs, "deploy/slurm-array.sh runs no `sweep worker`"
    for args in runs:
        params = parse_cli(args)
        # --gpu N would overwrite the CUDA_VISIBLE_DEVICES Slurm set for this task.
        assert params["device"] == "cuda" and not params["gpu"]
    text = SLURM.read_text()
    assert re.search(r"\bsrun\b.*\\\n\s*sweep worker\b", text), "--signal reaches job steps only: use srun"
    assert "device=${SWEEP_DEVICE:-cuda}\n" in text, "a GPU worker unless told otherwise"


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
