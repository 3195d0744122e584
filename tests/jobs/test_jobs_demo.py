"""The README's first command, end to end: the demo serves the API and the DICOM node over real data,
and every printed command works as printed."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from serve_process import serving

pytestmark = pytest.mark.slow
DCMTK = Path("/usr/bin")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=120)


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGING_SYNC")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def running_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One serving demo for this module's tests (ports chosen by the OS): its printed text and work dir."""
    workdir = tmp_path_factory.mktemp("running") / "demo"
    args = ["demo", "--studies", "6", "--api-port", "0", "--dicom-port", "0", "--workdir", str(workdir)]
    env = demo_env(IMAGING_SYNC__API__CORS_ALLOWED_ORIGINS="http://localhost:5173")
    with serving(args, env, ready=lambda line: "interactive API docs" in line, timeout=120) as text:
        yield text, workdir


def test_demo_serves_studies_urls_and_dicom_until_stopped(running_demo: tuple[str, Path]) -> None:
    text, workdir = running_demo
    base = re.search(r"'(http://127\.0\.0\.1:\d+/api/v1)/studies\?limit=3'", text)
    dicom = re.search(r"-aec (\S+) .* 127\.0\.0\.1 (\d+)", text)
    assert base and dicom, text
    keys = dict(line.split("=", 1) for line in (workdir / "api-keys.env").read_text().splitlines())
    headers = {"Authorization": f"Bearer {keys['VIEWER_KEY']}"}

    studies = httpx.get(f"{base.group(1)}/studies", params={"limit": 50}, headers=headers, timeout=30).json()
    assert len(studies["items"]) >= 6
    detail = httpx.get(f"{base.group(1)}/studies/{studies['items'][0]['id']}", headers=headers, timeout=30).json()
    urls = httpx.get(f"{base.group(1)}/series/{detail['series'][0]['id']}/urls", headers=headers, timeout=30).json()
    body = httpx.get(urls["items"][0]["url"], timeout=30).content
    assert body[128:132] == b"DICM"  # a real DICOM file, from the embedded S3 bucket

    ae = AE(ae_title="ISYNC_DOCTOR")  # one of the AEs the demo lists
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", int(dicom.group(2)), ae_title=dicom.group(1))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_every_printed_curl_line_works_as_printed(running_demo: tuple[str, Path]) -> None:
    text, workdir = running_demo
    keys_line = re.search(r"^  (\. \S+api-keys\.env)$", text, re.MULTILINE)
    curls = re.findall(r"^  (curl .*?\| python3 -m json\.tool --no-ensure-ascii)", text, re.MULTILINE)
    assert keys_line and len(curls) == 4, text
    assert "<" not in "".join(curls), "no placeholder left to fill in"
    for line in curls:
        done = subprocess.run(["bash", "-c", f"set -o pipefail; {keys_line.group(1)}; {line}"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (line, done.stderr)
        assert "error" not in json.loads(done.stdout), (line, done.stdout)  # an answer, not an error body
    name_search = next(line for line in curls if "name=홍" in line)
    found = subprocess.run(["bash", "-c", f"{keys_line.group(1)}; {name_search}"], capture_output=True, text=True, timeout=60).stdout
    assert "HONG^GILDONG=洪^吉洞=홍^길동" in found  # a Korean-named patient, shown in UTF-8 (--no-ensure-ascii)
    url_line = next(line for line in curls if "/instances/" in line)
    signed = subprocess.run(["bash", "-c", f"{keys_line.group(1)}; {url_line}"], capture_output=True, text=True, timeout=60).stdout
    assert '"url": "http://127.0.0.1:' in signed


def test_the_printed_findscu_line_finds_the_demo_patient(running_demo: tuple[str, Path]) -> None:
    if not (DCMTK / "findscu").exists():
        pytest.skip("DCMTK's findscu is not installed")
    text, _ = running_demo
    line = re.search(r"^  (/usr/bin/findscu .*?)   # ", text, re.MULTILINE)
    assert line, text
    done = subprocess.run([*shlex.split(line.group(1)), "-v"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HONG^GILDONG" in done.stderr + done.stdout


def test_every_cli_command_sees_the_demo_through_the_printed_export_line(running_demo: tuple[str, Path]) -> None:
    text, workdir = running_demo
    export = re.search(r"^  export IMAGING_SYNC_CONFIG=(\S+)$", text, re.MULTILINE)
    assert export, text
    env = {**demo_env(), "IMAGING_SYNC_CONFIG": export.group(1)}
    doctor = cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert re.search(r"^broker\s+SKIP", doctor.stdout, re.MULTILINE) and "FAIL" not in doctor.stdout
    partners = cli("partners", "list", env=env)
    assert partners.returncode == 0 and re.search(r"^b\s+reference-v1", partners.stdout, re.MULTILINE) and re.search(r"^c\s", partners.stdout, re.MULTILINE)
    runs = cli("runs", "list", env=env)
    assert runs.returncode == 0 and runs.stdout.count("succeeded") == 2
    outbox = cli("outbox", "status", env=env)
    assert outbox.returncode == 0 and "no sink configured" in outbox.stdout and "pending: 0" in outbox.stdout
    keys = cli("apikeys", "list", env=env)
    assert keys.returncode == 0 and "demo viewer" in keys.stdout and "demo operator" in keys.stdout


def test_the_environment_adds_a_cors_origin_to_the_demo(running_demo: tuple[str, Path]) -> None:
    text, workdir = running_demo
    settings = tomllib.loads((workdir / "imaging-sync.toml").read_text())
    assert settings["api"]["cors_allowed_origins"] == ["http://localhost:5173"]
    base = re.search(r"'(http://127\.0\.0\.1:\d+/api/v1)/studies\?limit=3'", text)
    assert base, text
    preflight = httpx.options(f"{base.group(1)}/studies", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}, timeout=30)
    assert preflight.headers.get("access-control-allow-origin") == "http://localhost:5173"


def test_a_second_demo_in_the_same_work_dir_is_refused_and_the_first_keeps_serving(running_demo: tuple[str, Path]) -> None:
    text, workdir = running_demo
    second = cli("demo", "--no-serve", "--workdir", str(workdir), env=demo_env())
    assert second.returncode == 2
    assert f"another demo is running in {workdir}" in second.stderr and "pid " in second.stderr
    assert (workdir / "index.db").exists()
    base = re.search(r"'(http://127\.0\.0\.1:\d+/api/v1)/studies\?limit=3'", text)
    assert base and httpx.get(base.group(1).replace("/api/v1", "/ready"), timeout=30).status_code == 200


def test_busy_default_ports_are_reported_with_the_port_chosen(tmp_path: Path) -> None:
    held = []
    for port in (8080, 11112):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            pass  # already busy: the demo must move all the same
        held.append(sock)
    try:
        done = cli("demo", "--no-serve", "--studies", "2", "--workdir", str(tmp_path / "demo"), env=demo_env())
        explicit = cli("demo", "--no-serve", "--studies", "2", "--api-port", "8080", "--workdir", str(tmp_path / "other"), env=demo_env())
    finally:
        for sock in held:
            sock.close()
    assert done.returncode == 0, done.stderr
    moved = re.search(r"port 8080 is busy: the REST API listens on (\d+) instead", done.stdout)
    assert moved and re.search(r"port 11112 is busy: the DICOM node listens on \d+ instead", done.stdout), done.stdout
    assert tomllib.loads((tmp_path / "demo" / "imaging-sync.toml").read_text())["api"]["port"] == int(moved.group(1))
    assert explicit.returncode == 2 and "--api-port" in explicit.stderr and "8080 is in use" in explicit.stderr
