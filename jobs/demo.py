"""``imaging-sync demo``: the whole service on one machine with nothing else running.

Two demo partners (simulators on 127.0.0.1) with overlapping studies and
different vocabularies, an embedded S3 whose two buckets (two regions) hold
real small DICOM files for every instance, a first sync of both partners,
then the REST API, the DICOM node and the in-process scheduler in this
process until Ctrl-C. It prints ready-to-paste commands.
"""

from __future__ import annotations

import copy
import hashlib
import os
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec

from imaging_sync import apikeys
from imaging_sync.bootstrap import Core, bootstrap
from imaging_sync.config import ApiConfig, BucketConfig, DatabaseConfig, DicomConfig, LoggingConfig, Settings, StorageConfig
from imaging_sync.db import migrate
from imaging_sync.services import run_services
from imaging_sync.testing.datagen import PARTNER_VOCABULARY, DatasetSpec
from imaging_sync.testing.dicom_files import dicom_file_for_item
from imaging_sync.testing.factories import simulator_partner
from imaging_sync.testing.simulator import PartnerSimulator, SimulatorConfig
from storage import EmbeddedS3

# Partner C speaks another vocabulary: lower-case sex letters and "<modality>-scan".
C_VOCABULARY = {
    "sex": {"m": "M", "f": "F", "o": "O"},
    "modality": {f"{code.lower()}-scan": code for code in set(PARTNER_VOCABULARY["modality"].values())},
}
_B_TO_DICOM = PARTNER_VOCABULARY
ENCODABLE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@click.command("demo")
@click.option("--studies", default=30, show_default=True, type=click.IntRange(2, 5000), help="Studies per partner.")
@click.option("--workdir", default="./var/demo", show_default=True, type=click.Path(file_okay=False), help="Recreated at each run.")
@click.option("--api-port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--dicom-port", default=11112, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-serve", is_flag=True, help="Stop after the first sync and the report (no servers).")
def demo(studies: int, workdir: str, api_port: int, dicom_port: int, no_serve: bool) -> None:
    """Run the whole service on this machine: demo partners, embedded S3, sync, API, DICOM node, scheduler."""
    run_demo(studies=studies, workdir=Path(workdir), api_port=api_port, dicom_port=dicom_port, serve=not no_serve, echo=click.echo)


def run_demo(*, studies: int, workdir: Path, api_port: int, dicom_port: int, serve: bool, echo: Callable[[str], None]) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "spool").mkdir(parents=True)
    os.environ.setdefault("IMAGING_SYNC_DEMO_PARTNER_KEY", secrets.token_urlsafe(18))
    key = os.environ["IMAGING_SYNC_DEMO_PARTNER_KEY"]
    buckets = {"b-dicom": "ap-northeast-2", "c-dicom": "eu-west-1"}
    s3_keys = {}
    for bucket in buckets:
        env = bucket.upper().replace("-", "_")
        os.environ.setdefault(f"DEMO_{env}_ACCESS_KEY_ID", f"AKIA{secrets.token_hex(8).upper()}")
        os.environ.setdefault(f"DEMO_{env}_SECRET_ACCESS_KEY", secrets.token_urlsafe(30))
        s3_keys[os.environ[f"DEMO_{env}_ACCESS_KEY_ID"]] = os.environ[f"DEMO_{env}_SECRET_ACCESS_KEY"]

    with (
        EmbeddedS3(buckets=buckets, secrets=s3_keys) as s3,
        PartnerSimulator(DatasetSpec(partner="b", studies=studies, series_per_study=2, instances_per_series=3), SimulatorConfig(api_key=key)) as sim_b,
        PartnerSimulator(DatasetSpec(partner="c", studies=studies // 2, series_per_study=2, instances_per_series=3, seed=7, uid_root="1.2.826.0.1.3680043.10.5678"), SimulatorConfig(api_key=key)) as sim_c,
    ):
        echo(f"embedded S3 on {s3.endpoint_url}; partner b on {sim_b.base_url}; partner c on {sim_c.base_url}")
        files = _prepare_partners(sim_b, sim_c, s3, overlap=max(1, studies // 5))
        echo(f"uploaded {files} real DICOM files to buckets {', '.join(buckets)} (regions {', '.join(buckets.values())})")
        settings = _settings(workdir, sim_b.base_url, sim_c.base_url, s3.endpoint_url, buckets, api_port, dicom_port)
        core = bootstrap(settings)
        try:
            migrate.upgrade(core.engine)
            for result in core.runner.sync_all(trigger="demo"):
                echo("  " + result.summary().splitlines()[0])
            with core.engine.begin() as conn:
                _, viewer = apikeys.create_key(conn, "demo viewer", "viewer")
                _, operator = apikeys.create_key(conn, "demo operator", "operator")
            if not serve:
                echo(f"viewer key: {viewer}\noperator key: {operator}")
                return
            _serve(core, viewer, operator, echo)
        finally:
            core.close()


def _prepare_partners(sim_b: PartnerSimulator, sim_c: PartnerSimulator, s3: EmbeddedS3, overlap: int) -> int:
    """Real files for every instance; C gets its own vocabulary and copies of some of B's studies."""
    client_b, client_c = s3.admin_client("ap-northeast-2"), s3.admin_client("eu-west-1")
    uploaded = 0
    for sim, client, bucket, translate in ((sim_b, client_b, "b-dicom", None), (sim_c, client_c, "c-dicom", _to_c_vocabulary)):
        for study_id in sim.dataset.live_study_ids():
            item = sim.dataset.item(study_id)
            uploaded += _attach_files(item, client, bucket)
            sim.dataset.put_study(translate(item) if translate else item)
    for index in range(overlap):  # the same studies (same UIDs) at C, under C's ids, bucket and vocabulary
        shared = copy.deepcopy(sim_b.dataset.item(sim_b.dataset.spec.study_id(index)))
        shared["id"] = f"c-copy-{index:04d}"
        shared["subject"]["id"] = f"c-copy-subj-{index:04d}"
        for series in shared["series"]:
            series["id"] = f"c-{series['id']}"
            for inst in series["instances"]:
                inst["id"] = f"c-{inst['id']}"
        uploaded += _attach_files(shared, client_c, "c-dicom", reuse_bytes_from=client_b)
        sim_c.dataset.put_study(_to_c_vocabulary(shared))
    return uploaded


def _attach_files(item: dict[str, Any], client: Any, bucket: str, reuse_bytes_from: Any = None) -> int:
    """Upload one file per instance and make the item tell the truth about it (key, size, hash, syntax)."""
    count = 0
    for series in item["series"]:
        modality = _B_TO_DICOM["modality"].get(series["modality"], "OT")
        for inst in series["instances"]:
            if inst.get("transfer_syntax_uid") not in ENCODABLE_SYNTAXES:
                inst["transfer_syntax_uid"] = EXPLICIT_LE
            key = f"studies/{item['study_instance_uid']}/{inst['sop_instance_uid']}.dcm"
            if reuse_bytes_from is not None:
                data = reuse_bytes_from.get_object(Bucket="b-dicom", Key=key)["Body"].read()
            else:
                data = dicom_file_for_item(item, series["series_instance_uid"], inst["sop_instance_uid"], modality=modality)
            client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/dicom")
            inst.update(location=f"s3://{bucket}/{key}", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            count += 1
    return count


def _to_c_vocabulary(item: dict[str, Any]) -> dict[str, Any]:
    item = copy.deepcopy(item)
    sex = item["subject"].get("sex")
    if sex:
        item["subject"]["sex"] = _B_TO_DICOM["sex"][sex].lower()
    for series in item["series"]:
        series["modality"] = f"{_B_TO_DICOM['modality'][series['modality']].lower()}-scan" if series["modality"] in _B_TO_DICOM["modality"] else series["modality"]
        if series.get("body_part_examined") in _B_TO_DICOM.get("body_part_examined", {}):
            series["body_part_examined"] = _B_TO_DICOM["body_part_examined"][series["body_part_examined"]]  # C sends DICOM terms
    return item


def _settings(workdir: Path, b_url: str, c_url: str, s3_url: str, buckets: dict[str, str], api_port: int, dicom_port: int) -> Settings:
    storage = StorageConfig(
        buckets={
            name: BucketConfig(region=region, endpoint_url=s3_url, auth="keys", addressing_style="path",
                               access_key_id_env=f"DEMO_{name.upper().replace('-', '_')}_ACCESS_KEY_ID",
                               secret_access_key_env=f"DEMO_{name.upper().replace('-', '_')}_SECRET_ACCESS_KEY")
            for name, region in buckets.items()
        }
    )
    partners = {
        "b": simulator_partner("b", b_url, api_key_env="IMAGING_SYNC_DEMO_PARTNER_KEY", priority=10, page_size=100),
        "c": simulator_partner("c", c_url, api_key_env="IMAGING_SYNC_DEMO_PARTNER_KEY", priority=5, page_size=100, vocabulary=C_VOCABULARY),
    }
    base = Settings(database=DatabaseConfig(url=f"sqlite:///{workdir / 'index.db'}"), logging=LoggingConfig(level="WARNING"), source="demo")
    return msgspec.structs.replace(
        base,
        storage=storage,
        api=ApiConfig(port=_free_or(api_port)),
        dicom=DicomConfig(port=_free_or(dicom_port), spool_dir=str(workdir / "spool")),
        jobs=msgspec.structs.replace(base.jobs, timezone="Asia/Seoul"),
        partners=partners,
    )


def _free_or(port: int) -> int:
    """The wanted port if it is free on 127.0.0.1, else any free one (0)."""
    if port == 0:
        return 0
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def _serve(core: Core, viewer: str, operator: str, echo: Callable[[str], None]) -> None:
    from api.service import ApiService
    from dicom.service import DicomService
    from jobs.service import SchedulerService

    api, node, scheduler = ApiService(core), DicomService(core), SchedulerService(core)

    def echo_and_hint(line: str) -> None:
        echo(line)
        if line.startswith("running"):
            base = f"http://127.0.0.1:{api.port}/api/v1"
            dicom_port = node._server.port if node._server else core.settings.dicom.port  # noqa: SLF001
            echo(
                "\ntry:\n"
                f"  curl -s -H 'Authorization: Bearer {viewer}' '{base}/studies?limit=3'\n"
                f"  curl -s -H 'Authorization: Bearer {viewer}' '{base}/studies?name=*' | python3 -m json.tool | head -40\n"
                f"  curl -s -H 'Authorization: Bearer {viewer}' '{base}/instances/<instance id from a study>/url'   # then curl the url\n"
                f"  curl -s -H 'Authorization: Bearer {operator}' '{base}/sync-runs'\n"
                f"  /usr/bin/findscu -S -k QueryRetrieveLevel=STUDY -k PatientName -k StudyInstanceUID -k ModalitiesInStudy -aec {core.settings.dicom.ae_title} 127.0.0.1 {dicom_port}\n"
                f"  open {base}/docs for the interactive API docs\n"
            )

    run_services(core, [api, node, scheduler], echo=echo_and_hint)
