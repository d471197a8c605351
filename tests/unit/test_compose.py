"""compose.yaml and .env.example against the code: real commands, known settings, the services needed.

No Docker engine runs here, so each service's command is checked by running it with `--help`."""

from __future__ import annotations

import re
from typing import Any

from common.settings import ENV_PREFIX, variables
from tests.helpers import COMPOSE, ROOT, compose, services

ENV_EXAMPLE = ROOT / ".env.example"


VARIABLE = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b")


# Compose-level names that are not Vitrine settings.
NOT_SETTINGS = {"VITRINE_SLIM_IMAGE", "VITRINE_ML_IMAGE", "VITRINE_ENV_FILE"}


SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN")


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", [])
    return " ".join(command) if isinstance(command, list) else str(command)


def test_the_design_services_are_all_there() -> None:
    found = services()
    for name in ("redis", "postgres", "minio", "migrate", "flower", "metrics"):
        assert name in found, f"compose.yaml has no {name!r} service"
    commands = {name: command_text(service) for name, service in found.items()}
    for queue in ("embed", "explain", "refit", "webhooks"):
        assert any(cmd == f"vitrine worker {queue}" for cmd in commands.values()), f"no {queue} worker"
    beats = [name for name, cmd in commands.items() if " beat" in cmd]
    assert beats == ["beat"], f"exactly one beat is allowed, found {beats}"
    assert commands["migrate"] == "vitrine db upgrade"
    assert commands["flower"].startswith("vitrine flower")
    assert commands["metrics"].startswith("vitrine metrics")
    assert commands["review"].startswith("vitrine serve --host 0.0.0.0")


def test_workers_get_time_to_finish_their_batches_on_stop() -> None:
    # Measured warm shutdown of an embed worker: 15 s (docs/reliability.md); compose's default is 10 s.
    for name, service in services().items():
        if command_text(service).startswith(("vitrine worker embed", "vitrine worker explain")):
            assert service.get("stop_grace_period") == "2m", name


def test_gpu_and_cpu_embed_workers_are_alternative_profiles() -> None:
    found = services()
    embed = [name for name, s in found.items() if command_text(s) == "vitrine worker embed"]
    assert sorted(embed) == ["embed", "embed-cpu"]
    assert found["embed"]["profiles"] == ["gpu"]
    assert found["embed-cpu"]["profiles"] == ["cpu"]
    devices = found["embed"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert found["embed-cpu"]["environment"]["VITRINE_DEVICE"] == "cpu"
    assert "deploy" not in found["embed-cpu"]
    # Services without a profile always start; the embed worker is the only profiled one.
    assert {name for name, s in found.items() if "profiles" in s} == {"embed", "embed-cpu"}
    assert re.search(r"^COMPOSE_PROFILES=gpu$", ENV_EXAMPLE.read_text(), re.MULTILINE)


def test_dependencies_wait_for_health_and_migrations() -> None:
    found = services()
    for name in ("redis", "postgres", "minio"):
        assert "healthcheck" in found[name], f"{name} has no healthcheck"
    assert found["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in found.items():
        if command_text(service).startswith(("vitrine worker", "celery")):
            needs = service["depends_on"]
            assert needs["migrate"]["condition"] == "service_completed_successfully", name
            assert needs["redis"]["condition"] == "service_healthy", name
            assert needs["postgres"]["condition"] == "service_healthy", name
        assert service.get("restart", "").startswith(("unless-stopped", "on-failure")), name


def test_volumes_for_state_and_model_weights() -> None:
    doc = compose()
    found = doc["services"]
    assert set(doc["volumes"]) >= {"postgres-data", "minio-data", "hf-cache"}
    assert any(v.endswith(":/var/lib/postgresql/data") for v in found["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in found["minio"]["volumes"])
    for name in ("embed", "embed-cpu", "explain"):
        assert "hf-cache:/home/vitrine/.cache/huggingface" in found[name]["volumes"], name
    assert "9001" in " ".join(found["minio"]["ports"]), "MinIO console port"


def test_app_services_share_one_env_file_and_hold_no_inline_secrets() -> None:
    for name, service in services().items():
        if command_text(service).startswith(("vitrine", "celery")):
            assert service["env_file"] == "${VITRINE_ENV_FILE:-.env}", name
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        for key, value in environment.items():
            text = str(value)
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", text), f"{name}.{key} must refer to .env"
            # A password inside a URL must also be a reference.
            for password in re.findall(r"://[^:/@]+:([^@]+)@", text):
                assert password.startswith("${"), f"{name}.{key} has an inline password"


def test_every_vitrine_variable_is_a_setting_and_every_setting_is_documented() -> None:
    fields = set(variables())
    example = ENV_EXAMPLE.read_text()
    for path in (COMPOSE, ENV_EXAMPLE):
        unknown = set(VARIABLE.findall(path.read_text())) - fields - NOT_SETTINGS
        assert not unknown, f"{path.name} names variables that are no setting: {sorted(unknown)}"
    documented = set(re.findall(rf"^#?\s*({ENV_PREFIX}[A-Z0-9_]+)=", example, re.MULTILINE))
    assert fields <= documented, f".env.example does not document {sorted(fields - documented)}"
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert re.search(rf"^{name}=", example, re.MULTILINE), name
    # Every ${VAR} compose interpolates is documented in .env.example.
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text())):
        assert re.search(rf"^#?\s*{name}=", example, re.MULTILINE), f"{name} is not in .env.example"


SLIM = {"migrate", "refit", "beat", "flower", "metrics", "review"}
ML = {"embed", "embed-cpu", "explain"}


def test_each_role_names_its_image_and_builds_it_from_its_lock() -> None:
    found = services()
    for name in SLIM | ML:
        role = "slim" if name in SLIM else "ml"
        assert found[name]["image"] == f"${{VITRINE_{role.upper()}_IMAGE:-vitrine-{role}:0.1.0}}", name
        assert found[name]["build"]["args"]["LOCK"] == role, name
        assert (ROOT / "deploy" / "requirements" / f"{role}.lock").is_file()


def test_third_party_images_are_pinned_releases() -> None:
    for name, service in services().items():
        if "build" in service:
            continue
        image = service["image"]
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
        # A release, not a moving major: a dot in the version (7.4.2, 15.10) or a dated release.
        assert "." in tag or tag.startswith("RELEASE."), f"{name}: {image} names a moving tag"


def test_every_long_running_service_has_a_healthcheck_log_rotation_and_a_memory_limit() -> None:
    for name, service in services().items():
        assert service["logging"]["options"]["max-size"], name
        assert service.get("mem_limit"), name
        if name != "migrate":
            assert service["healthcheck"]["test"], f"{name} has no healthcheck"


def test_the_lock_files_pin_every_distribution_by_hash() -> None:
    for lock in (ROOT / "deploy" / "requirements").glob("*.lock"):
        entries = [e for e in lock.read_text().split("\n") if e and not e.startswith(("#", " "))]
        assert entries, lock.name
        for entry in entries:
            assert re.fullmatch(r"[a-z0-9._-]+==[^ ]+ \\", entry), f"{lock.name}: {entry}"
        assert lock.read_text().count("--hash=sha256:") == len(entries), lock.name
    slim = (ROOT / "deploy" / "requirements" / "slim.lock").read_text()
    assert "torch==" not in slim and "timm==" not in slim
    assert "torch==" in (ROOT / "deploy" / "requirements" / "ml.lock").read_text()


def test_the_dockerfile_fetches_nothing_from_a_registry_or_an_index() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not dockerfile.startswith("# syntax="), "a frontend image would be fetched from a registry"
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and all("--no-index" in line for line in installs), installs
    assert "--require-hashes" in dockerfile
