"""The ATNA exporter against a real syslog daemon: Debian's rsyslogd on loopback, over UDP, TCP and TLS.

rsyslogd runs from each test as an unprivileged listener with its own config,
pid file and work directory under tmp_path, writing what it receives to a
file (the raw message, JSON-escaped, one a line). The messages are parsed as
RFC 5424 and their XML validated against the PS3.15 A.5.1 schema
(``ps3_15_audit_message.rng``). Entries are written through the audit log's
own writer and sealed by the real sealer (``imaging_sync.audit_seals``).

rsyslog missing: skipped with the reason (``apt-get install rsyslog
rsyslog-gnutls``; .ci/run installs them), a failure under
``IMAGING_SYNC_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_run import run
from lxml import etree
from required import require
from sqlalchemy import Engine, insert

from devtools.ports import free_port
from imaging_sync import audit, audit_seals
from imaging_sync.atna.relay import CURSOR, AtnaRelay, relay_for, relay_status
from imaging_sync.atna.syslog import UdpTransport, transport_for
from imaging_sync.audit import AuditEvent
from imaging_sync.config import AtnaConfig
from imaging_sync.db.models import Study, Subject, table_of, utcnow

RSYSLOGD = Path("/usr/sbin/rsyslogd")
GTLS = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")
SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).with_name("ps3_15_audit_message.rng"))))
APP = "imaging-sync-test"
HEADER = re.compile(r"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) - \ufeff(.*)$", re.S)


def _missing(path: Path, package: str) -> None:
    require(None if path.exists() else f"{path} missing: apt-get install -y {package}")


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    return free_port(kind)  # below the ephemeral range: rsyslog binds it a moment later (devtools/ports.py)


class Rsyslog:
    """One rsyslogd of the test's own: plain TCP (also the readiness probe), UDP, and TLS with a test CA."""

    def __init__(self, root: Path, *, tls: bool) -> None:
        self.root, self.tls = root, tls
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.output = root / "received.log"
        self.tcp_port, self.udp_port = _free_port(), _free_port(socket.SOCK_DGRAM)
        self.tls_port = _free_port() if tls else 0
        self.process: subprocess.Popen[bytes] | None = None
        inputs = [f'input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1")', 'module(load="imudp")',
                  f'input(type="imudp" port="{self.udp_port}" address="127.0.0.1")']
        if tls:
            inputs.append(f'input(type="imtcp" port="{self.tls_port}" address="127.0.0.1" streamDriver.name="gtls" streamDriver.mode="1" '
                          f'streamDriver.authMode="anon" streamDriver.CAFile="{root}/ca.pem" streamDriver.CertFile="{root}/server.pem" '
                          f'streamDriver.KeyFile="{root}/server.key")')
        (root / "rsyslog.conf").write_text("\n".join([
            f'global(workDirectory="{self.work}" maxMessageSize="64k")',
            'module(load="imtcp" maxSessions="50")',
            *inputs,
            'template(name="raw" type="string" string="%rawmsg:::json%\\n")',
            f'if $app-name == "{APP}" then {{ action(type="omfile" file="{self.output}" template="raw") }}',
        ]) + "\n")

    def start(self) -> None:
        self.process = subprocess.Popen([str(RSYSLOGD), "-n", "-f", str(self.root / "rsyslog.conf"), "-i", str(self.root / "rsyslogd.pid")],
                                        stdout=subprocess.DEVNULL, stderr=(self.root / "rsyslogd.err").open("ab"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "rsyslogd.err").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.tls_port or self.tcp_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("rsyslogd did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the process we started, by its own handle
            self.process.wait(15)
        self.process = None

    def raw_messages(self, count: int, timeout: float = 15.0) -> list[str]:
        """The messages received so far, waiting until there are at least ``count`` (rsyslog writes asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.output.read_text(encoding="utf-8").splitlines() if self.output.exists() else []
            if len(lines) >= count or time.monotonic() > deadline:
                return [json.loads(f'"{line}"') for line in lines]
            time.sleep(0.05)

    def audit_messages(self, count: int) -> list[etree._Element]:
        documents = []
        for raw in self.raw_messages(count):
            match = HEADER.match(raw)
            assert match, raw[:200]
            pri, _, _, app, _, msgid, xml = match.groups()
            assert (int(pri) >> 3, app, msgid) == (10, APP, "IHE+RFC-3881")
            document = etree.fromstring(xml.encode("utf-8"))
            SCHEMA.assertValid(document)
            documents.append(document)
        return documents


def _certificates(root: Path) -> None:
    """A test CA and a server certificate for 127.0.0.1 and localhost, with openssl."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=imaging-sync test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (root / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    _missing(RSYSLOGD, "rsyslog")
    daemon = Rsyslog(tmp_path / "rsyslog", tls=False)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def rsyslog_tls(tmp_path: Path) -> Iterator[Rsyslog]:
    _missing(RSYSLOGD, "rsyslog")
    _missing(GTLS, "rsyslog-gnutls")
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    root = tmp_path / "rsyslog"
    root.mkdir()
    _certificates(root)
    daemon = Rsyslog(root, tls=True)
    daemon.start()
    yield daemon
    daemon.stop()


# -- data: a patient with a study, and entries written through the audit log's own writer ------------------


def patient_with_study(engine: Engine, patient_id: str, study_uid: str) -> tuple[uuid.UUID, uuid.UUID]:
    subject_id, study_id = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(insert(table_of(Subject)).values(id=subject_id, source_partner="b", source_priority=1, issuer="HOSP", patient_id=patient_id))
        conn.execute(insert(table_of(Study)).values(id=study_id, source_partner="b", source_priority=1, study_instance_uid=study_uid, subject_id=subject_id))
    return subject_id, study_id


def config(port: int, **values: Any) -> AtnaConfig:
    return AtnaConfig(**{"host": "127.0.0.1", "port": port, "transport": "tcp", "app_name": APP, "timeout_seconds": 5.0, **values})


def event_codes(documents: list[etree._Element]) -> list[str]:
    return [d.find("EventIdentification/EventID").get("csd-code") for d in documents]


def object_ids(document: etree._Element) -> list[tuple[str, str]]:
    return [(o.find("ParticipantObjectIDTypeCode").get("csd-code"), o.get("ParticipantObjectID")) for o in document.findall("ParticipantObjectIdentification")]


# -- the tests ---------------------------------------------------------------------------------------------


def test_sealed_entries_arrive_as_valid_audit_messages_over_tcp(engine: Engine, rsyslog: Rsyslog) -> None:
    subject_id, study_id = patient_with_study(engine, "P-100", "1.2.826.0.1.100")
    audit.record_now(engine, AuditEvent(channel="http", actor="isk_view", action="read", outcome="success", client_addr="10.0.0.7",
                                        path=f"/api/v1/studies/{study_id}", resource_type="study", resource_id=str(study_id), status=200),
                     subject_ids=[subject_id], study_ids=[study_id])
    audit.record_now(engine, AuditEvent(channel="http", actor="anonymous", action="search", outcome="denied", status=401,
                                        client_addr="10.0.0.8", detail={"error": "unauthenticated"}))
    handle = audit.begin(engine, AuditEvent(channel="dicom", actor="PACS1", action="c-find", client_addr="10.0.0.9",
                                            query={"model": "STUDY", "PatientID": "P-100"}, resource_type="study"),
                         subject_ids=[subject_id], study_ids=[study_id])
    relay = relay_for(engine, config(rsyslog.tcp_port))
    audit_seals.seal_through_now(engine)
    first = relay.run_until_idle()
    assert (first.error, first.reports) == (None, 2)  # the C-FIND is not sent before its end is sealed
    handle.finish("success", status=0, detail={"matches": 1})
    audit_seals.seal_through_now(engine)
    assert relay.run_until_idle().reports == 1

    documents = rsyslog.audit_messages(3)
    assert sorted(event_codes(documents)) == ["110103", "110112", "110114"]
    by_code = {code: d for code, d in zip(event_codes(documents), documents, strict=True)}
    assert object_ids(by_code["110103"]) == [("2", "P-100^^^HOSP"), ("110180", "1.2.826.0.1.100")]
    assert object_ids(by_code["110112"]) == [("110181", "1.2.840.10008.5.1.4.1.2.2.1"), ("2", "P-100^^^HOSP"), ("110180", "1.2.826.0.1.100")]
    login = by_code["110114"]
    assert (login.find("EventIdentification/EventTypeCode").get("csd-code"), login.find("EventIdentification").get("EventOutcomeIndicator")) == ("110122", "4")
    assert login.find("ActiveParticipant").get("NetworkAccessPointID") == "10.0.0.8"
    with engine.connect() as conn:
        assert relay_status(engine)[CURSOR] == audit_seals.seals_after(conn, 0, 1000)[-1]


def test_nothing_is_lost_across_a_receiver_restart(engine: Engine, rsyslog: Rsyslog) -> None:
    subject_id, study_id = patient_with_study(engine, "P-200", "1.2.826.0.1.200")
    relay = relay_for(engine, config(rsyslog.tcp_port, initial_backoff=0.01, max_backoff=0.01))
    audit.record_now(engine, AuditEvent(channel="http", actor="isk_view", action="read", outcome="success", status=200), study_ids=[study_id])
    audit_seals.seal_through_now(engine)
    assert relay.run_until_idle().messages == 1
    assert len(rsyslog.raw_messages(1)) == 1

    rsyslog.stop()
    handle = audit.begin(engine, AuditEvent(channel="dicom", actor="PACS2", action="c-move", query={"model": "STUDY"}),
                         subject_ids=[subject_id], study_ids=[study_id])
    handle.finish("success", status=0, detail={"destination": "WS1", "completed": 3})
    for n in range(3):
        audit.record_now(engine, AuditEvent(channel="http", actor="isk_view", action="search", outcome="success", path="/api/v1/studies",
                                            query={"n": n}, status=200), subject_ids=[subject_id])
    audit_seals.seal_through_now(engine)
    before = relay.position()
    failed = relay.run_until_idle()
    assert failed.error is not None and "ConnectionRefused" in failed.error
    assert relay.position() == before  # it failed and kept its position

    rsyslog.start()
    time.sleep(0.02)  # past the (test-sized) backoff
    sent = relay.run_until_idle()
    assert (sent.error, sent.reports) == (None, 5)
    documents = rsyslog.audit_messages(6)
    assert sorted(event_codes(documents)) == ["110102", "110103", "110104", "110112", "110112", "110112"]
    descriptions = [d.find("EventIdentification/EventOutcomeDescription").text for d in documents]
    assert len(set(descriptions)) == 6
    assert relay.run_until_idle().messages == 0  # everything sent: nothing again


def test_an_operation_that_never_ends_is_sent_as_a_serious_failure(engine: Engine, rsyslog: Rsyslog) -> None:
    subject_id, study_id = patient_with_study(engine, "P-300", "1.2.826.0.1.300")
    audit.begin(engine, AuditEvent(channel="dicom", actor="PACS3", action="c-get"), subject_ids=[subject_id], study_ids=[study_id])  # never finished
    audit_seals.seal_through_now(engine)
    later = [utcnow()]
    relay = AtnaRelay(engine, config(rsyslog.tcp_port, abandon_after_seconds=600), relay_for(engine, config(rsyslog.tcp_port)).transport,
                      clock=lambda: later[0])
    assert relay.run_until_idle().abandoned == 0  # begun, may still end
    later[0] += dt.timedelta(seconds=601)
    assert relay.run_until_idle().abandoned == 1
    assert relay.run_until_idle().abandoned == 0  # reported once
    begun, failed = rsyslog.audit_messages(2)
    assert event_codes([begun, failed]) == ["110102", "110104"]
    assert failed.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    assert object_ids(failed) == [("2", "P-300^^^HOSP"), ("110180", "1.2.826.0.1.300")]


def test_tls_delivers_to_a_receiver_whose_certificate_our_ca_file_trusts(engine: Engine, rsyslog_tls: Rsyslog) -> None:
    subject_id, study_id = patient_with_study(engine, "P-400", "1.2.826.0.1.400")
    audit.record_now(engine, AuditEvent(channel="http", actor="isk_view", action="issue_url", outcome="success", status=200),
                     subject_ids=[subject_id], study_ids=[study_id])
    audit_seals.seal_through_now(engine)
    relay = relay_for(engine, config(rsyslog_tls.tls_port, transport="tls", ca_file=str(rsyslog_tls.root / "ca.pem")))
    assert relay.run_until_idle().error is None
    [document] = rsyslog_tls.audit_messages(1)
    assert event_codes([document]) == ["110103"]
    assert object_ids(document) == [("2", "P-400^^^HOSP"), ("110180", "1.2.826.0.1.400")]


def test_tls_refuses_a_receiver_it_cannot_verify_and_keeps_its_position(engine: Engine, rsyslog_tls: Rsyslog, tmp_path: Path) -> None:
    audit.record_now(engine, AuditEvent(channel="cli", actor="cli:root", action="create_api_key", outcome="success"))
    audit_seals.seal_through_now(engine)
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    _certificates(other_ca)
    relay = relay_for(engine, config(rsyslog_tls.tls_port, transport="tls", ca_file=str(other_ca / "ca.pem")))
    result = relay.run_until_idle()
    assert result.error is not None and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert relay.position() == 0
    assert rsyslog_tls.raw_messages(0, timeout=0.5) == []


def test_udp_datagrams_arrive_while_the_receiver_listens(engine: Engine, rsyslog: Rsyslog) -> None:
    """UDP is lossy by nature (a datagram sent while nobody listens is gone, and the relay cannot tell): only arrival is tested."""
    for n in range(5):
        audit.record_now(engine, AuditEvent(channel="http", actor="isk_view", action="search", outcome="success", path="/api/v1/subjects",
                                            query={"n": n}, status=200))
    audit_seals.seal_through_now(engine)
    relay = relay_for(engine, config(rsyslog.udp_port, transport="udp"))
    assert isinstance(relay.transport, UdpTransport)
    assert relay.run_until_idle().messages == 5
    assert event_codes(rsyslog.audit_messages(5)) == ["110112"] * 5


def test_the_cli_sends_one_pass_and_exits_1_when_the_receiver_is_down(sqlite_url: str, rsyslog: Rsyslog, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from imaging_sync.config import DatabaseConfig
    from imaging_sync.db.engine import create_db_engine

    config_file = tmp_path / "imaging-sync.toml"
    config_file.write_text(f'[database]\nurl = "{sqlite_url}"\n\n[audit.atna]\nhost = "127.0.0.1"\nport = {rsyslog.tcp_port}\ntransport = "tcp"\napp_name = "{APP}"\n')
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(config_file))
    engine = create_db_engine(DatabaseConfig(url=sqlite_url))
    audit.record_now(engine, AuditEvent(channel="cli", actor="cli:root", action="revoke_api_key", outcome="success", resource_type="api_key"))
    audit_seals.seal_through_now(engine)
    engine.dispose()

    assert run("audit", "atna-send") == 0
    assert "1 seals, 1 entries, 1 messages sent over tcp" in capsys.readouterr().out
    [document] = rsyslog.audit_messages(1)
    assert document.find("EventIdentification/EventTypeCode").get("csd-code") == "110129"
    rsyslog.stop()
    engine = create_db_engine(DatabaseConfig(url=sqlite_url))
    audit.record_now(engine, AuditEvent(channel="cli", actor="cli:root", action="list_api_keys", outcome="success"))
    audit_seals.seal_through_now(engine)
    engine.dispose()
    assert run("audit", "atna-send") == 1
    assert "delivery failed, position unchanged" in capsys.readouterr().out


def test_the_beat_schedule_runs_the_relay_only_when_configured(sqlite_url: str) -> None:
    from imaging_sync.config import AuditConfig, DatabaseConfig, Settings
    from imaging_sync.task_names import RELAY_ATNA
    from jobs.schedule import build_beat_schedule

    plain = Settings(database=DatabaseConfig(url=sqlite_url))
    assert "relay-atna" not in build_beat_schedule(plain)
    with_atna = Settings(database=DatabaseConfig(url=sqlite_url), audit=AuditConfig(atna=config(514, interval_seconds=12.0)))
    entry = build_beat_schedule(with_atna)["relay-atna"]
    assert (entry["task"], entry["schedule"].run_every.total_seconds()) == (RELAY_ATNA, 12.0)


def test_a_bad_atna_config_names_its_key(tmp_path: Path) -> None:
    from imaging_sync.config import load_settings
    from imaging_sync.errors import ConfigError

    path = tmp_path / "c.toml"
    for body, key in (('transport = "carrier-pigeon"', "audit.atna.transport"), ('transport = "tls"\ncert_file = "/x.pem"', "cert_file and key_file"),
                      ('transport = "udp"\nca_file = "/ca.pem"', "only for transport")):
        path.write_text(f'[audit.atna]\nhost = "arr"\n{body}\n')
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_settings(path, {})
    path.write_text('[audit.atna]\nhost = "arr"\ntransport = "tls"\nca_file = "/nonexistent/ca.pem"\n')
    with pytest.raises(ConfigError, match="audit.atna.ca_file"):
        transport_for(load_settings(path, {}).audit.atna)  # type: ignore[arg-type]
