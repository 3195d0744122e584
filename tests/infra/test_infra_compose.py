"""docker-compose.yml, infra/Dockerfile and .env.example checked against the code they deploy.

No container engine runs here, so each service is checked piece by piece
against the real thing: its command against the real ``imaging-sync`` click
tree (entry points included), its environment through ``load_settings`` with
the mounted config file, its health dependencies against the other services,
its mounted files against the repository. Then the commands run as plain
processes: the migration against a temporary SQLite, the demo partner and a
real sync of it with the compose configuration, the API and the DICOM node
answering the image's own health check, ``--help`` of the long-running ones.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import msgspec
import pytest
from infra_support import (
    COMPOSE_CONFIG,
    DOCKERFILE,
    ENV_EXAMPLE,
    HEALTHCHECK_SCRIPT,
    REPO,
    InterpolationError,
    argv_of,
    base_env,
    builds_our_image,
    check_cli_args,
    compose_model,
    environment_of,
    free_port,
    host_path_for,
    imaging_sync,
    mounts_of,
    raw_compose,
    read_env_file,
    run,
    start,
    wait_until,
)

MODEL = compose_model()
SERVICES: dict[str, dict[str, Any]] = MODEL["services"]
APP_SERVICES = sorted(name for name, s in SERVICES.items() if builds_our_image(s) and argv_of(s)[:1] == ["imaging-sync"])
CONFIG_IN_CONTAINER = "/etc/imaging-sync/imaging-sync.toml"
ONE_SHOT_RESTARTS = {"no", "on-failure"}
LONG_RUNNING_RESTARTS = {"unless-stopped", "always"}


def _is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")).split(":")[0] in ONE_SHOT_RESTARTS


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and check.get("test") not in (None, ["NONE"])
    return builds_our_image(service) and "HEALTHCHECK" in _final_stage()  # the image's own


# -- the services and their commands ------------------------------------------------------------


def test_the_stack_has_every_part_the_deployment_needs() -> None:
    commands = {name: argv_of(s) for name, s in SERVICES.items()}
    wanted = {
        "migrate": ["imaging-sync", "db", "upgrade"],
        "api": ["imaging-sync", "serve", "api"],
        "dicom": ["imaging-sync", "serve", "dicom"],
        "worker": ["imaging-sync", "worker"],
        "beat": ["imaging-sync", "beat"],
        "simulator": ["python", "-m", "devtools.simulator"],
    }
    for name, prefix in wanted.items():
        assert commands[name][: len(prefix)] == prefix, f"service {name} runs {commands[name]}"
    assert {"postgres", "redis", "minio", "minio-init"} <= set(SERVICES)
    assert "--workers" in commands["api"], "the API runs several worker processes (production ASGI server, uvicorn)"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_command_exists_in_the_real_cli_with_valid_options(name: str) -> None:
    args = argv_of(SERVICES[name])[1:]
    try:
        check_cli_args(args)
    except LookupError as exc:
        pytest.fail(f"compose service {name!r}: {exc}")
    except Exception as exc:  # click's UsageError / BadParameter: an option the command does not take
        pytest.fail(f"compose service {name!r} runs `imaging-sync {' '.join(args)}`, which the command refuses: {exc}")


def test_the_doctor_command_is_registered() -> None:
    assert check_cli_args(["doctor", "--timeout", "2", "--dicom-host", "dicom"]) == ["doctor"]


def test_the_simulator_service_arguments_are_the_simulators_own() -> None:
    from devtools.simulator import _parse_args

    argv = argv_of(SERVICES["simulator"])
    assert argv[:3] == ["python", "-m", "devtools.simulator"]
    _, args = _parse_args(argv[3:])  # argparse exits on an unknown argument
    assert (args.partner, args.port, args.host, args.api_key_env) == ("demo", 8081, "0.0.0.0", "SIM_API_KEY")
    assert args.api_key_env in environment_of(SERVICES["simulator"])


def test_scripts_run_by_services_exist_and_parse() -> None:
    for name, service in sorted(SERVICES.items()):
        argv = argv_of(service)
        scripts = [a for a in argv if a.endswith(".sh")]
        for script in scripts:
            host = host_path_for(service, script)
            assert host is not None, f"{name}: {script} is not inside a bind mount"
            assert host.is_file(), f"{name}: {script} comes from {host}, which does not exist"
            shell = "bash" if host.read_text().startswith("#!/usr/bin/env bash") else "sh"
            assert subprocess.run([shell, "-n", str(host)], capture_output=True).returncode == 0, f"{host} has a syntax error"
            if argv[0] == script:
                assert host.stat().st_mode & 0o111, f"{host} is the entrypoint and must be executable"


# -- health and start-up order ----------------------------------------------------------------


def test_depends_on_names_real_services_with_the_condition_they_can_meet() -> None:
    for name, service in sorted(SERVICES.items()):
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use depends_on with conditions (long syntax)"
        for target, rule in depends.items():
            assert target in SERVICES, f"{name} depends on {target!r}, which is not a service"
            condition = rule.get("condition")
            if condition == "service_healthy":
                assert _has_healthcheck(SERVICES[target]), f"{name} waits for {target} to be healthy, but {target} has no health check"
            elif condition == "service_completed_successfully":
                assert _is_one_shot(SERVICES[target]), f"{name} waits for {target} to complete, but {target} is restarted (not one-shot)"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition!r}; use service_healthy or service_completed_successfully")


def test_start_up_order_has_no_cycle_and_every_index_reader_waits_for_the_migration() -> None:
    graph = {name: set(s.get("depends_on") or {}) for name, s in SERVICES.items()}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        assert node not in visiting, f"depends_on cycle: {' -> '.join([*trail, node])}"
        visiting.add(node)
        for nxt in graph[node]:
            visit(nxt, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [])
    for name in APP_SERVICES:
        if name == "migrate":
            assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
            continue
        assert SERVICES[name]["depends_on"].get("migrate", {}).get("condition") == "service_completed_successfully", \
            f"{name} reads the index: it must wait for the migration to complete"


def test_restart_policies_match_one_shot_and_long_running_services() -> None:
    for name, service in sorted(SERVICES.items()):
        restart = str(service.get("restart", "no"))
        if name in ("migrate", "minio-init", "backup"):
            assert restart.split(":")[0] in ONE_SHOT_RESTARTS, f"{name} is one-shot: restart {restart!r} would re-run it for ever"
        else:
            assert restart in LONG_RUNNING_RESTARTS, f"{name} is long-running: restart {restart!r} leaves it down after a crash or reboot"


def test_health_checks_use_the_images_probe_with_a_known_role() -> None:
    spec = importlib.util.spec_from_file_location("isync_healthcheck", HEALTHCHECK_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.build_parser()
    for name, service in sorted(SERVICES.items()):
        if not builds_our_image(service):
            continue
        check = service.get("healthcheck") or {}
        if check.get("disable"):
            assert environment_of(service).get("IMAGING_SYNC_ROLE") == "none" or _is_one_shot(service), name
            continue
        test = check.get("test")
        assert test and test[0] == "CMD" and test[1] == "imaging-sync-healthcheck", f"{name}: health check {test!r}"
        args = parser.parse_args(test[2:])
        assert args.role == environment_of(service)["IMAGING_SYNC_ROLE"], f"{name}: health check role {args.role} vs IMAGING_SYNC_ROLE"
    for name in ("api", "dicom", "worker", "simulator"):
        assert _has_healthcheck(SERVICES[name]), f"{name} needs a health check"
    for name in ("postgres", "redis", "minio"):
        assert _has_healthcheck(SERVICES[name]), name
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])


def test_published_ports_are_the_ports_the_services_listen_on() -> None:
    for name, listen_flag in (("api", "--port"), ("dicom", "--port")):
        service = SERVICES[name]
        argv = argv_of(service)
        port = argv[argv.index(listen_flag) + 1]
        assert argv[argv.index("--host") + 1] == "0.0.0.0", f"{name} must listen on every interface inside its container"
        published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
        assert published == [port], f"{name} listens on {port} but publishes {published}"
        health = service["healthcheck"]["test"]
        assert health[health.index("--port") + 1] == port, f"{name}: health check port"
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            assert str(mapping).count(":") == 2, f"{name}: publish {mapping!r} on an explicit address (API_BIND/DICOM_BIND), not all interfaces by accident"


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_loads_its_settings_from_the_mounted_file_and_its_environment(name: str) -> None:
    from imaging_sync.config import load_settings
    from imaging_sync.db.engine import connection_url
    from storage.registry import BucketRegistry

    service = SERVICES[name]
    env = environment_of(service)
    assert env.get("IMAGING_SYNC_CONFIG") == CONFIG_IN_CONTAINER
    mounted = host_path_for(service, CONFIG_IN_CONTAINER)
    assert mounted == COMPOSE_CONFIG.resolve(), f"{name}: {CONFIG_IN_CONTAINER} must be infra/imaging-sync.compose.toml"
    assert any(m.target == CONFIG_IN_CONTAINER and m.read_only for m in mounts_of(service)), f"{name}: mount the config read-only"
    settings = load_settings(mounted, env)  # ConfigError names the key
    purpose = "migrate" if argv_of(service)[1:3] == ["db", "upgrade"] else "serve"
    assert connection_url(settings.database, purpose, env).password, f"{name}: no database password for its role"
    BucketRegistry(settings.storage, environ=env)  # every bucket's key variables are set
    assert settings.jobs.resolved_broker_url(env).reveal().startswith("redis://")
    assert settings.logging.format == "json"


def test_the_migration_runs_as_the_owner_and_every_service_as_the_runtime_role_with_separate_secrets() -> None:
    """Only "migrate" is given the owner's password; the others connect as database.runtime_role, which owns nothing (README: Production)."""
    from imaging_sync.config import load_settings
    from imaging_sync.db.engine import connection_url

    init = (REPO / "infra" / "postgres" / "10-app-role.sh").read_text(encoding="utf-8")
    seen = set()
    for name in APP_SERVICES:
        env = environment_of(SERVICES[name])
        settings = load_settings(COMPOSE_CONFIG, env)
        database = settings.database
        owner = connection_url(database, "migrate", with_password=False).username
        assert database.runtime_role and database.runtime_role != owner
        assert database.password_env != database.runtime_password_env, "the two roles need two secrets"
        if argv_of(SERVICES[name])[1:3] == ["db", "upgrade"]:
            assert env.get(str(database.password_env)), f"{name}: the migration needs the owner's password"
            assert connection_url(database, "migrate", env).username == owner
            seen.add("owner")
        else:
            assert str(database.password_env) not in env, f"{name}: a service must not be given the owner's password"
            assert connection_url(database, "serve", env).username == database.runtime_role
            seen.add("runtime")
        assert env.get(str(database.runtime_password_env)), f"{name}: {database.runtime_password_env} missing"
        assert f'APP_RUNTIME_USER="${{APP_RUNTIME_USER:-{database.runtime_role}}}"' in init
        assert f'APP_DB_USER="${{APP_DB_USER:-{owner}}}"' in init
    assert seen == {"owner", "runtime"}
    postgres = environment_of(SERVICES["postgres"])
    assert {"IMAGING_SYNC_DB_PASSWORD", "IMAGING_SYNC_DB_RUNTIME_PASSWORD"} <= set(postgres), "the first-start script makes both roles"


def _override_problem(env_name: str, raw: dict[str, Any]) -> str | None:
    """None when IMAGING_SYNC__A__B names a real config key (a field, or an entry the file defines)."""
    from imaging_sync.config import Settings

    parts = [p.lower() for p in env_name.removeprefix("IMAGING_SYNC__").split("__") if p]
    kind: Any = Settings
    node: Any = raw
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        origin = get_origin(kind)
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            hints = get_type_hints(kind, include_extras=True)
            if part not in hints:
                return f"{env_name}: {where} is not a config key (known: {', '.join(sorted(h for h in hints if h != 'source'))})"
            kind = hints[part]
        elif origin is dict:
            if not isinstance(node, dict) or part not in node:
                return f"{env_name}: {where} is not defined in the config file: an override would create a new entry"
            kind = get_args(kind)[1]
        else:
            return f"{env_name}: {'.'.join(parts[:depth])} is a value, not a table"
        node = node.get(part) if isinstance(node, dict) else None
        while get_origin(kind) is not None and get_origin(kind) not in (dict, list):  # Annotated, Optional
            kind = next(a for a in get_args(kind) if a is not type(None))
    return None


def test_every_imaging_sync_override_names_a_real_config_key() -> None:
    raw = tomllib.loads(COMPOSE_CONFIG.read_text(encoding="utf-8"))
    seen = 0
    for name, service in sorted(SERVICES.items()):
        for env_name in environment_of(service):
            if env_name.startswith("IMAGING_SYNC__"):
                seen += 1
                problem = _override_problem(env_name, raw)
                assert problem is None, f"{name}: {problem}"
    assert seen, "configuration comes through IMAGING_SYNC__ variables as well as the file"
    assert _override_problem("IMAGING_SYNC__API__PROT", raw) is not None
    assert _override_problem("IMAGING_SYNC__PARTNERS__NOPE__BASE_URL", raw) is not None
    assert _override_problem("IMAGING_SYNC__PARTNERS__DEMO__PAGE_SIZE", raw) is None


def test_hosts_in_the_config_are_compose_services_on_the_right_ports() -> None:
    from imaging_sync.config import load_settings

    env = environment_of(SERVICES["api"])
    settings = load_settings(COMPOSE_CONFIG, env)
    urls = [settings.database.url.replace("+psycopg", ""), settings.jobs.resolved_broker_url(env).reveal(),
            *(p.base_url for p in settings.partners.values()), *(b.endpoint_url or "" for b in settings.storage.buckets.values())]
    for url in urls:
        host = urllib.parse.urlsplit(url).hostname
        assert host in SERVICES, f"{url}: host {host!r} is not a compose service"
    simulator_port = argv_of(SERVICES["simulator"])[argv_of(SERVICES["simulator"]).index("--port") + 1]
    assert urllib.parse.urlsplit(settings.partners["demo"].base_url).port == int(simulator_port)
    database = urllib.parse.urlsplit(settings.database.url.replace("+psycopg", "")).path.lstrip("/")
    assert f"-d {database}" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert environment_of(SERVICES["backup"])["PGDATABASE"] == database
    assert settings.partners["demo"].buckets <= set(settings.storage.buckets)


def test_the_demo_partners_vocabulary_maps_everything_the_simulator_sends() -> None:
    from devtools.datagen import PARTNER_VOCABULARY
    from imaging_sync.config import load_settings

    settings = load_settings(COMPOSE_CONFIG, environment_of(SERVICES["api"]))
    assert settings.partners["demo"].vocabulary == PARTNER_VOCABULARY


# -- secrets ------------------------------------------------------------------------------------------


_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|_KEY$")


def test_secrets_come_only_from_the_env_file() -> None:
    raw = raw_compose()
    example = read_env_file(ENV_EXAMPLE)
    for name, service in sorted(raw["services"].items()):
        for key, value in environment_of(service).items():
            if _SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?\?[^}]*)?\}", value), f"{name}: {key} must come from .env as ${{VAR:?…}}, not be written here ({value!r})"
    text = COMPOSE_CONFIG.read_text(encoding="utf-8") + (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    for key, value in example.items():
        if _SECRET_NAME.search(key):
            assert value.startswith("change-me"), f".env.example: {key} must hold a change-me placeholder, never a real secret"
            assert value not in text, f"the value of {key} appears in a committed file"


def test_every_required_variable_is_in_env_example_and_compose_refuses_to_start_without_it() -> None:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = read_env_file(ENV_EXAMPLE)
    assert required, "secrets are required variables (${VAR:?message})"
    assert required <= set(example), f"missing from .env.example: {sorted(required - set(example))}"
    for variable in sorted(required):
        without = {k: v for k, v in example.items() if k != variable}
        with pytest.raises(InterpolationError, match=variable):
            compose_model(without)


def test_env_files_with_secrets_are_never_committed_nor_sent_to_the_build() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".gitignore must ignore .env"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO).returncode == 1, ".env.example is committed"
    patterns = _dockerignore()
    assert _ignored(".env", patterns) and not _ignored("imaging_sync/config.py", patterns)


def test_the_config_file_itself_holds_no_secret() -> None:
    from imaging_sync.config import _refuse_secrets

    raw = tomllib.loads(COMPOSE_CONFIG.read_text(encoding="utf-8"))
    _refuse_secrets(raw, "")  # raises ConfigError naming the key


# -- mounts and volumes ----------------------------------------------------------------------------


def test_mounted_files_exist_and_named_volumes_are_declared() -> None:
    declared = set(MODEL.get("volumes") or {})
    for name, service in sorted(SERVICES.items()):
        for mount in mounts_of(service):
            if mount.is_bind:
                assert mount.host_path().exists(), f"{name}: mounts {mount.source}, which does not exist in the repository"
                assert str(mount.host_path()).startswith(str(REPO)), f"{name}: {mount.source} is outside the repository"
            else:
                assert mount.source in declared, f"{name}: named volume {mount.source!r} is not declared under volumes:"
    for data in ("postgres", "redis", "minio"):
        assert any(not m.is_bind for m in mounts_of(SERVICES[data])), f"{data} keeps its data in a named volume"
    beat_schedule = argv_of(SERVICES["beat"])[argv_of(SERVICES["beat"]).index("--schedule-file") + 1]
    assert any(beat_schedule.startswith(m.target + "/") and not m.is_bind for m in mounts_of(SERVICES["beat"])), \
        "beat's schedule file lives on a volume (its last-run times survive a restart)"


def test_minio_init_creates_the_buckets_the_config_registers() -> None:
    from imaging_sync.config import load_settings

    settings = load_settings(COMPOSE_CONFIG, environment_of(SERVICES["api"]))
    script = (REPO / "infra" / "minio" / "init.sh").read_text(encoding="utf-8")
    created = set(re.search(r'BUCKETS="\$\{MINIO_BUCKETS:-([^}]*)\}"', script).group(1).split())  # type: ignore[union-attr]
    assert created == set(settings.storage.buckets)
    policy = msgspec.json.decode((REPO / "infra" / "minio" / "imaging-sync-read.json").read_bytes())
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert actions == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"}, "the service's S3 user reads only"
    init_env = environment_of(SERVICES["minio-init"])
    app_env = environment_of(SERVICES["api"])
    assert init_env["S3_ACCESS_KEY_ID"] == app_env["S3_ACCESS_KEY_ID"] and init_env["S3_SECRET_ACCESS_KEY"] == app_env["S3_SECRET_ACCESS_KEY"]


def test_images_are_pinned() -> None:
    for name, service in sorted(SERVICES.items()):
        if builds_our_image(service):
            continue
        image = service["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: pin {image!r} to a version"


# -- the Dockerfile ----------------------------------------------------------------------------------


def _stages() -> list[list[str]]:
    lines, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _final_stage() -> str:
    return "\n".join(_stages()[-1])


def test_dockerfile_is_multi_stage_slim_non_root_with_a_health_check_and_the_cli_as_entrypoint() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = _stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    builder, final = "\n".join(stages[0]), _final_stage()
    assert "pip wheel" in builder and "build-essential" in builder
    assert not re.search(r"apt-get install|build-essential|gcc|g\+\+|\bmake\b", final), "no build tools in the runtime image"
    assert "COPY --from=builder" in final
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the runtime runs as an unprivileged user"
    assert re.search(r"^HEALTHCHECK .*CMD \[\"imaging-sync-healthcheck\"\]", final, re.M)
    assert re.search(r'^ENTRYPOINT \["imaging-sync"\]', final, re.M)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "imaging-sync" in pyproject["project"]["scripts"]
    # The /var/lib/imaging-sync/beat volume is initialised from the image: the directory must be there.
    assert "/var/lib/imaging-sync/beat" in final


def test_the_image_installs_only_the_hashed_production_lock_and_ships_its_bill_of_materials() -> None:
    builder, final = "\n".join(_stages()[0]), _final_stage()
    installs = re.findall(r"pip install ([^&]+)", builder)
    into_venv = [i for i in installs if "--python /opt/venv/bin/python" in i]
    assert any("--require-hashes" in i and "--no-deps" in i and "-r requirements/production.txt" in i for i in into_venv), into_venv
    assert all("--no-deps" in i for i in into_venv), "nothing is resolved into the production venv: the lock is the whole set"
    assert re.search(r"python -m venv --without-pip /opt/venv", builder), "the shipped venv has no installer"
    assert not re.search(r"pip install[^&]*(\.\[|\bmoto\b|requirements/dev\.txt)", builder), "no extra or dev set in the image"
    assert "python -m devtools.sbom --python /opt/venv/bin/python -o /opt/sbom.cdx.json" in builder
    assert "python -m devtools.licences /opt/sbom.cdx.json" in builder, "the build fails on a licence the policy refuses"
    assert "COPY --from=builder /opt/sbom.cdx.json /usr/share/imaging-sync/sbom.cdx.json" in final
    assert "sbom-tool" not in final, "the SBOM tool stays in the builder"


def _dockerignore() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatch

    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        hit = any(fnmatch(c, body) or (body.startswith("**/") and fnmatch(c.split("/")[-1], body[3:])) for c in candidates)
        if hit:
            ignored = not negate
    return ignored


def test_dockerfile_copies_every_package_and_nothing_ignored_or_missing() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    sources = [s for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M) for s in line.split()[:-1] if not s.startswith("--")]
    patterns = _dockerignore()
    for source in sources:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert not _ignored(source, patterns), f"Dockerfile copies {source}, but .dockerignore leaves it out of the context"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= set(sources), f"packages not copied into the image: {sorted(packages - set(sources))}"
    assert pyproject["project"]["readme"] in sources
    assert "infra/healthcheck.py" in sources


# -- the commands as plain processes --------------------------------------------------------------------


def _local_env(tmp_path: Path, service: str, **overrides: str) -> dict[str, str]:
    """The service's compose environment, pointed at this machine: SQLite in tmp_path, the real config file."""
    env = base_env(**environment_of(SERVICES[service]))
    env.update({
        "IMAGING_SYNC_CONFIG": str(COMPOSE_CONFIG),
        "IMAGING_SYNC__DATABASE__URL": f"sqlite:///{tmp_path / 'index.db'}",
        "IMAGING_SYNC__DATABASE__PASSWORD_ENV": "",  # SQLite has no password
        "IMAGING_SYNC__DATABASE__RUNTIME_ROLE": "",  # nor roles
        "IMAGING_SYNC__DATABASE__RUNTIME_PASSWORD_ENV": "",
    })
    env.update(overrides)
    return env


@pytest.mark.slow
def test_the_migration_service_command_runs_as_a_plain_process(tmp_path: Path) -> None:
    env = _local_env(tmp_path, "migrate")
    done = run(imaging_sync(argv_of(SERVICES["migrate"])[1:]), env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "database at revision" in done.stdout
    current = run(imaging_sync(["db", "current"]), env, cwd=tmp_path)
    assert current.returncode == 0 and "up to date" in current.stdout, current.stdout + current.stderr
    again = run(imaging_sync(argv_of(SERVICES["migrate"])[1:]), env, cwd=tmp_path)
    assert again.returncode == 0, "the migration is safe to run at every start"


@pytest.mark.slow
def test_long_running_service_commands_answer_help_with_their_compose_arguments(tmp_path: Path) -> None:
    processes = {}
    for name in ("api", "dicom", "worker", "beat"):
        args = argv_of(SERVICES[name])[1:]
        processes[name] = subprocess.Popen(imaging_sync([*args, "--help"]), env=_local_env(tmp_path, name), cwd=tmp_path,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, process in processes.items():
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, f"{name}: {out}"
        assert out.startswith("Usage: imaging-sync"), out


@pytest.mark.slow
def test_demo_partner_api_and_dicom_node_run_as_plain_processes_and_pass_the_images_health_checks(tmp_path: Path) -> None:
    """The simulator, a real sync of it with the compose config, then the API and DICOM node answering their probes."""
    env = _local_env(tmp_path, "api")
    assert run(imaging_sync(["db", "upgrade"]), env, cwd=tmp_path).returncode == 0
    sim_port, api_port, dicom_port = free_port(), free_port(), free_port()

    def local(argv: list[str], **replace: str) -> list[str]:
        argv = list(argv)
        for flag, value in replace.items():
            argv[argv.index(f"--{flag}") + 1] = value
        return argv

    sim_argv = local(argv_of(SERVICES["simulator"]), host="127.0.0.1", port=str(sim_port), studies="12")
    sim_env = base_env(**environment_of(SERVICES["simulator"]))
    started = [start([sys.executable, *sim_argv[1:]], sim_env, "simulator", cwd=tmp_path)]
    try:
        health = lambda role, port, e: run([sys.executable, str(HEALTHCHECK_SCRIPT), role, "--port", str(port)], e, cwd=tmp_path)  # noqa: E731
        wait_until(lambda: health("simulator", sim_port, sim_env).returncode == 0, "the simulator's health check", alive=started[0])

        sync_env = {**env, "IMAGING_SYNC__PARTNERS__DEMO__BASE_URL": f"http://127.0.0.1:{sim_port}"}
        synced = run(imaging_sync(["sync", "--partner", "demo", "--quiet"]), sync_env, cwd=tmp_path)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert "demo: succeeded" in synced.stdout and "12 studies fetched (12 created" in synced.stdout, synced.stdout
        assert " 0 rejected)" in synced.stdout, f"the compose vocabulary must map every demo item: {synced.stdout}"

        api_argv = local(argv_of(SERVICES["api"]), host="127.0.0.1", port=str(api_port), workers="1")
        dicom_argv = local(argv_of(SERVICES["dicom"]), host="127.0.0.1", port=str(dicom_port))
        started.append(start(imaging_sync(api_argv[1:]), env, "api", cwd=tmp_path))
        started.append(start(imaging_sync(dicom_argv[1:]), env, "dicom", cwd=tmp_path))
        wait_until(lambda: health("api", api_port, env).returncode == 0, "the API's health check", alive=started[1])
        probe = wait_until(lambda: (r := health("dicom", dicom_port, env)).returncode == 0 and r, "the DICOM node's health check", alive=started[2])
        assert "C-ECHO" in probe.stdout, probe.stdout
    finally:
        for process in reversed(started):
            process.stop()


def test_the_image_gets_every_third_party_package_the_service_imports() -> None:
    """pyproject's dependencies (followed through their own requirements) plus the Dockerfile's
    EXTRA_RUNTIME_PACKAGES must provide every import of the packages the image runs."""
    import ast
    from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

    from packaging.requirements import Requirement

    from imaging_sync.extras import EXTRA_MODULES

    ours = {"imaging_sync", "api", "dicom", "jobs", "storage", "devtools", "app"}
    # An extra's modules (the demo's embedded S3 and pixel data) are imported only inside the function
    # that needs them, after imaging_sync.extras.require_extra: never at a module's top level.
    optional = {module for modules in EXTRA_MODULES.values() for module in modules}
    imported: dict[str, set[str]] = {}
    top_level_optional: list[str] = []
    for package in sorted(ours):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            module_level = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                        [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ours:
                        imported.setdefault(top, set()).add(str(path.relative_to(REPO)))
                        if top in optional and id(node) in module_level:
                            top_level_optional.append(f"{top} ({path.relative_to(REPO)}:{node.lineno})")
    assert not top_level_optional, f"an extra's module imported at module level: {top_level_optional}"

    def closure(name: str, extras: tuple[str, ...] = (), seen: set[str] | None = None) -> set[str]:
        seen = set() if seen is None else seen
        key = name.lower().replace("_", "-")
        if key in seen:
            return seen
        seen.add(key)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            return seen
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in ("", *extras)):
                closure(requirement.name, tuple(requirement.extras), seen)
        return seen

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    provided: set[str] = set()
    for text in pyproject["project"]["dependencies"]:
        requirement = Requirement(text)
        closure(requirement.name, tuple(requirement.extras), provided)
    extra = re.search(r'ARG EXTRA_RUNTIME_PACKAGES="([^"]*)"', DOCKERFILE.read_text(encoding="utf-8"))
    extra_names = {Requirement(t).name.lower() for t in (extra.group(1).split() if extra else [])}
    for name in extra_names:
        closure(name, (), provided)
    owners = packages_distributions()
    missing = {
        module: files for module, files in imported.items()
        if module not in optional and not any(d.lower().replace("_", "-") in provided for d in owners.get(module, [module]))
    }
    assert not missing, (
        "imported by the service but neither declared in pyproject.toml nor installed by infra/Dockerfile "
        f"(EXTRA_RUNTIME_PACKAGES): {', '.join(f'{m} ({sorted(f)[0]})' for m, f in sorted(missing.items()))}"
    )
    declared_now = {m for m in extra_names if m.replace("-", "_") in {Requirement(t).name.lower().replace("-", "_") for t in pyproject["project"]["dependencies"]}}
    assert not declared_now, f"pyproject.toml now declares {sorted(declared_now)}: remove them from EXTRA_RUNTIME_PACKAGES in infra/Dockerfile"
