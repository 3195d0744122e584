"""The production install, built as the image builds it, serving with none of the demo or dev packages.

One fresh virtual environment per run, made like ``infra/Dockerfile`` makes
``/opt/venv``: no pip inside it, every third-party package from
``requirements/production.txt`` with ``--require-hashes --no-deps``, then our
own package (built from the same files the Dockerfile copies). Then, from that
environment alone: every module of ours imports; ``db upgrade``; the API
answers ``/health``, the OpenAPI document and the offline docs; the DICOM node
answers DCMTK's C-ECHO; a sync pulls the partner simulator, which runs from
the test's own environment (a separate venv, as a partner is a separate
service); asking it for the embedded S3 names the extra to install. Its bill
of materials is valid CycloneDX listing every installed package, and passes
the licence policy, whose list (``docs/licences.md``) must match it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from infra_support import COMPOSE_CONFIG, HEALTHCHECK_SCRIPT, REPO, argv_of, base_env, compose_model, environment_of, free_port, run, start, wait_until
from packaging.markers import Marker

from devtools import licences, sbom
from imaging_sync.extras import EXTRA_MODULES

pytestmark = pytest.mark.slow

PRODUCTION_LOCK = REPO / "requirements" / "production.txt"
# What the Dockerfile copies into the build (COPY lines of its builder stage).
BUILD_SOURCES = ("pyproject.toml", "README.md", "imaging_sync", "storage", "api", "dicom", "jobs", "app", "devtools")
OURS = ("imaging_sync", "storage", "api", "dicom", "jobs", "app", "devtools")
# Never in production: the demo extra's packages and what they bring, the test and build tools, and
# the packages the lock leaves out on purpose (pyproject.toml, [tool.uv]).
NEVER_IN_PRODUCTION = {
    "moto", "waitress", "werkzeug", "flask", "numpy", "docker", "cfn-lint", "sympy",
    "pytest", "schemathesis", "playwright", "ruff", "mypy", "uv", "cyclonedx-bom", "pyinstrument",
    "pip", "setuptools", "polyfactory", "faker", "rich", "rich-click", "pygments",
    "watchfiles", "websockets", "python-dotenv", "swagger-ui-py",
}
SERVICES = compose_model()["services"]
DCMTK = Path("/usr/bin")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked_for_this_python() -> dict[str, str]:
    """name -> version of every package the production lock installs on this interpreter and platform."""
    pins = {}
    for match in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)(?:\s*;\s*([^\\\n]+))?", PRODUCTION_LOCK.read_text(encoding="utf-8"), re.M):
        name, version, marker = match.groups()
        if marker is None or Marker(marker.strip()).evaluate():
            pins[_normal(name)] = version
    return pins


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv as the image's /opt/venv: no pip, the production lock with hashes, then our package."""
    root = tmp_path_factory.mktemp("base-install")
    source = root / "src"
    for name in BUILD_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    locked = subprocess.run([*pip, "--require-hashes", "-r", str(PRODUCTION_LOCK)], capture_output=True, text=True, timeout=900)
    assert locked.returncode == 0, f"the production lock does not install with --require-hashes:\n{locked.stderr[-3000:]}"
    ours = subprocess.run([*pip, str(source)], capture_output=True, text=True, timeout=600)
    assert ours.returncode == 0, f"imaging-sync does not install into the production venv:\n{ours.stderr[-3000:]}"
    return venv


def _python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    # -I: isolated, so neither this checkout (cwd) nor PYTHONPATH can stand in for a missing package.
    return subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code], capture_output=True, text=True, timeout=300, cwd="/")


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The compose API service's environment, pointed at this machine: SQLite in tmp_path, 127.0.0.1."""
    env = base_env(**environment_of(SERVICES["api"]))
    env.update({
        "IMAGING_SYNC_CONFIG": str(COMPOSE_CONFIG),
        "IMAGING_SYNC__DATABASE__URL": f"sqlite:///{tmp_path / 'index.db'}",
        "IMAGING_SYNC__DATABASE__PASSWORD_ENV": "",
        "IMAGING_SYNC__DATABASE__RUNTIME_ROLE": "",  # SQLite has no roles
        "IMAGING_SYNC__DATABASE__RUNTIME_PASSWORD_ENV": "",
        "PYTHONPATH": "",
    })
    env.update(overrides)
    return env


def _cli(venv: Path) -> list[str]:
    return [str(venv / "bin" / "imaging-sync")]


@pytest.fixture
def migrated(base_venv: Path, tmp_path: Path) -> dict[str, str]:
    env = _env(tmp_path)
    done = run([*_cli(base_venv), "db", "upgrade"], env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


@pytest.fixture(scope="module")
def dcmtk() -> Path:
    """DCMTK's echoscu (skipped without it; IMAGING_SYNC_REQUIRE_DCMTK=1 makes that a failure)."""
    if not (DCMTK / "echoscu").exists():
        if os.environ.get("IMAGING_SYNC_REQUIRE_DCMTK") == "1":
            pytest.fail("DCMTK's echoscu is not in /usr/bin (IMAGING_SYNC_REQUIRE_DCMTK=1 forbids skipping)")
        pytest.skip("DCMTK's echoscu is not in /usr/bin")
    return DCMTK


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


# -- what is installed ------------------------------------------------------------------------------


def test_the_production_venv_holds_exactly_the_production_lock_and_nothing_of_demo_or_dev(base_venv: Path) -> None:
    listed = _python(base_venv, "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    assert listed.returncode == 0, listed.stderr
    installed = {_normal(name): version for name, version in json.loads(listed.stdout).items()}
    assert installed.pop("imaging-sync") == "0.1.0"
    assert installed == _locked_for_this_python()
    assert not (set(installed) & NEVER_IN_PRODUCTION), sorted(set(installed) & NEVER_IN_PRODUCTION)
    assert not (base_venv / "bin" / "pip").exists(), "the production venv has no installer in it"


def test_every_module_of_ours_imports_in_the_base_install_and_loads_no_demo_package(base_venv: Path) -> None:
    script = f"""
import importlib, json, pkgutil, sys
failed = {{}}
for package in {list(OURS)!r}:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # runs the CLI
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed[info.name] = repr(exc)
demo = [m for m in {list(EXTRA_MODULES['demo'])!r} if m in sys.modules]
print(json.dumps({{"failed": failed, "demo_loaded": demo, "where": importlib.import_module("imaging_sync").__file__}}))
"""
    done = _python(base_venv, script)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["where"].startswith(str(base_venv)), "imported from the venv, not from this checkout"
    assert report["failed"] == {}
    assert report["demo_loaded"] == []


# -- what it serves ---------------------------------------------------------------------------------


def test_the_base_install_serves_health_the_openapi_document_and_the_offline_docs(base_venv: Path, migrated: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    api = start([*_cli(base_venv), "serve", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], migrated, "api", cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = wait_until(lambda: (r := _get(f"{base}/health"))[0] == 200 and r, "the API's /health", alive=api, timeout=60)
        assert json.loads(body)["status"] == "ok"
        status, body = _get(f"{base}/api/v1/schema/openapi.json")
        assert status == 200 and json.loads(body)["openapi"].startswith("3.1"), "the OpenAPI document is generated without polyfactory"
        status, page = _get(f"{base}/api/v1/docs")
        assert status == 200 and b"swagger-ui-bundle.js" in page
        asset = re.search(rb'src="([^"]+/swagger-ui-bundle\.js)"', page)
        assert asset is not None
        status, script = _get(base + asset.group(1).decode())
        assert status == 200 and len(script) > 1_000_000
    finally:
        api.stop()


def test_the_base_install_dicom_node_answers_dcmtks_c_echo(base_venv: Path, migrated: dict[str, str], tmp_path: Path, dcmtk: Path) -> None:
    port = free_port()
    node = start([*_cli(base_venv), "serve", "dicom", "--host", "127.0.0.1", "--port", str(port)], migrated, "dicom", cwd=tmp_path)
    try:
        def echo() -> subprocess.CompletedProcess[str] | None:
            done = run([str(dcmtk / "echoscu"), "-aet", "ISYNC_HEALTH", "-aec", "IMAGING_SYNC", "127.0.0.1", str(port)], base_env(), timeout=30)
            return done if done.returncode == 0 else None

        assert wait_until(echo, "a C-ECHO answered by the DICOM node", alive=node, timeout=60)
    finally:
        node.stop()


def test_the_base_install_syncs_a_partner_served_from_another_environment(base_venv: Path, migrated: dict[str, str], tmp_path: Path) -> None:
    sim_argv = argv_of(SERVICES["simulator"])
    for flag, value in {"--host": "127.0.0.1", "--port": str(free_port()), "--studies": "8"}.items():
        sim_argv[sim_argv.index(flag) + 1] = value
    sim_port = sim_argv[sim_argv.index("--port") + 1]
    sim_env = base_env(**environment_of(SERVICES["simulator"]))
    simulator = start([sys.executable, *sim_argv[1:]], sim_env, "simulator", cwd=REPO)
    try:
        probe = [sys.executable, str(HEALTHCHECK_SCRIPT), "simulator", "--port", sim_port]
        wait_until(lambda: run(probe, sim_env, timeout=30).returncode == 0, "the simulator's health check", alive=simulator)
        env = {**migrated, "IMAGING_SYNC__PARTNERS__DEMO__BASE_URL": f"http://127.0.0.1:{sim_port}"}
        synced = run([*_cli(base_venv), "sync", "--partner", "demo", "--quiet"], env, cwd=tmp_path, timeout=180)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert "demo: succeeded" in synced.stdout and "8 studies fetched (8 created" in synced.stdout, synced.stdout
    finally:
        simulator.stop()


@pytest.mark.parametrize("argv", [["serve", "api"], ["demo", "--no-serve"]], ids=["embedded-s3", "demo-command"])
def test_asking_the_base_install_for_the_embedded_s3_names_the_extra_to_install(base_venv: Path, migrated: dict[str, str], tmp_path: Path, argv: list[str]) -> None:
    if argv[0] == "demo":
        argv = [*argv, "--workdir", str(tmp_path / "demo")]
    env = {**migrated, "IMAGING_SYNC__STORAGE__EMBEDDED": "true"}
    done = run([*_cli(base_venv), *argv], env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "storage.embedded" in done.stderr and "pip install 'imaging-sync[demo]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "demo").exists(), "the demo refuses before it touches its work dir"


# -- what it is made of -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bill_of_materials(base_venv: Path) -> dict[str, object]:
    return sbom.build(str(base_venv / "bin" / "python"))


def test_the_bill_of_materials_is_valid_cyclonedx_listing_every_installed_package(base_venv: Path, bill_of_materials: dict[str, object]) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bill_of_materials)) is None
    listed = _python(base_venv, "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    installed = {_normal(name): version for name, version in json.loads(listed.stdout).items()}
    root = bill_of_materials["metadata"]["component"]  # type: ignore[index]
    assert (root["name"], root["version"]) == ("imaging-sync", installed.pop("imaging-sync"))
    components = {_normal(c["name"]): c for c in bill_of_materials["components"]}  # type: ignore[attr-defined]
    assert {name: c["version"] for name, c in components.items() if c["purl"].startswith("pkg:pypi/")} == installed
    swagger = components["swagger-ui-dist"]
    assert swagger["purl"] == "pkg:npm/swagger-ui-dist@" + swagger["version"]
    assert all(c.get("licenses") for c in components.values()), "every component declares its licence"


def test_the_production_licences_pass_the_policy_and_the_committed_list_is_theirs(bill_of_materials: dict[str, object]) -> None:
    verdicts = licences.judge_bom(bill_of_materials)
    assert [v for v in verdicts if not v.allowed] == []
    committed = (REPO / "docs" / "licences.md").read_text(encoding="utf-8")
    assert committed == licences.markdown(verdicts), "docs/licences.md is stale: regenerate it (README, Dependencies)"
