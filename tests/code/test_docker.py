"""Static checks of docker/ (no Docker engine here): services, healthchecks, dependencies, volumes, loopback
ports, secrets only from the environment, and every environment variable the code reads is provided."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
# Variables that a runtime sets itself (Airflow task context, torchrun, the login shell).
RUNTIME_SET = re.compile(r"^(AIRFLOW_CTX_\w+|LOCAL_RANK|RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|MASTER_\w+|USER)$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k.strip(): v for k, v in pairs}


def test_all_services_are_there(compose):
    services = compose["services"]
    assert {"postgres", "redis", "mlflow", "airflow-init", *AIRFLOW_SERVICES, "airflow-worker",
            "airflow-worker-gpu"} <= set(services)
    for name in AIRFLOW_SERVICES:
        assert services[name]["environment"]["AIRFLOW__CORE__EXECUTOR"].endswith(":-LocalExecutor}")
    assert "celery" in services["airflow-worker"]["profiles"] and "celery" in services["redis"]["profiles"]
    assert services["airflow-worker"]["command"].startswith("celery worker")


def test_every_long_running_service_has_a_healthcheck_and_waits_for_healthy_deps(compose):
    services = compose["services"]
    for name, svc in services.items():
        if name == "airflow-init":  # one-shot: dependents wait for it to complete instead
            continue
        check = svc.get("healthcheck", {}).get("test")
        assert check and check[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep == "airflow-init" else "service_healthy"
            assert cond["condition"] == expected, (name, dep)
    for name in (*AIRFLOW_SERVICES, "airflow-worker", "airflow-worker-gpu"):
        assert {"postgres", "mlflow", "airflow-init"} <= set(services[name]["depends_on"]), name
    assert "redis" in services["airflow-worker"]["depends_on"]


def test_postgres_backs_airflow_and_mlflow_and_volumes_persist(compose):
    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://" in mlflow_args and "@postgres:5432/mlflow" in mlflow_args
    assert "mlartifacts:/mlartifacts" in services["mlflow"]["volumes"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    named = set(compose["volumes"])
    for svc in services.values():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            assert source.startswith((".", "$")) or source in named, f"undeclared volume {source}"
    assert (DOCKER / "postgres-init.sh").is_file()


def test_gpu_worker_reserves_nvidia_devices(compose):
    gpu = compose["services"]["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.trainer" and "--queues gpu" in gpu["command"]
    trainer = (DOCKER / "Dockerfile.trainer").read_text()
    assert "download.pytorch.org/whl/cu" in trainer
    assert "whl/cpu" in (DOCKER / "Dockerfile").read_text()


def test_ports_bind_loopback_only(compose):
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_secrets_come_only_from_the_environment(compose):
    text = (DOCKER / "compose.yaml").read_text()
    example = _env_example()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))  # $${X} is expanded in the container
    missing = used - set(example)
    assert not missing, f"compose uses variables not documented in .env.example: {missing}"
    for key in ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert key in used
    # No literal credentials: every password / secret / key value in compose is a ${...} reference.
    for match in re.finditer(r"^\s*\w*(PASSWORD|SECRET|FERNET_KEY)\w*:\s*(\S+)", text, re.MULTILINE):
        assert match.group(2).startswith("${"), match.group(0)
    for url in re.findall(r"postgresql\+?\w*://[^\s\"']+", text):
        assert ":${" in url, f"literal password in {url}"


def test_every_environment_variable_the_code_reads_is_provided(compose):
    pattern = re.compile(r"""(?:os\.environ\.get|os\.getenv|os\.environ\[|environ\.get)\(?\s*["'](\w+)["']""")
    read = set()
    for path in [*(REPO / "pipeline").rglob("*.py"), *(REPO / "dags").rglob("*.py")]:
        read |= set(pattern.findall(path.read_text()))
    needed = {v for v in read if not RUNTIME_SET.match(v)}
    assert {"MTL_HOME", "MLFLOW_TRACKING_URI"} <= needed  # the scan itself works
    for name in (*AIRFLOW_SERVICES, "airflow-worker", "airflow-worker-gpu"):
        provided = set(compose["services"][name]["environment"])
        assert not needed - provided, f"{name} lacks {needed - provided}"


def test_images_copy_files_that_exist():
    for name in ("Dockerfile", "Dockerfile.trainer"):
        for line in (DOCKER / name).read_text().splitlines():
            if line.startswith("COPY"):
                sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
                for src in sources:
                    assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
