"""``imaging-sync demo``: the whole service on one machine with nothing else running.

Two demo partners (simulators on 127.0.0.1) with overlapping studies and
different vocabularies, an embedded S3 whose two buckets (two regions) hold
real small DICOM files for every instance, a first sync of both partners,
then the REST API, the DICOM node and the in-process scheduler in this
process until Ctrl-C. It prints ready-to-paste commands.

The demo owns its work dir (``--workdir``, default ``./var/demo``) while it
runs: a lock there refuses a second demo, and everything else in it is
replaced at start. It writes its settings to ``imaging-sync.toml`` in the
work dir (secrets in files beside it), so ``export IMAGING_SYNC_CONFIG=…``
makes every other command (``doctor``, ``partners list``, ``runs list``,
``outbox status``, ``apikeys``) see the demo. The usual config file and
``IMAGING_SYNC__…`` variables add to the demo's settings (CORS origins,
logging, alerts…); the demo sets the database, partners, buckets and ports.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import msgspec
from sqlalchemy import select

from app import assembly
from app.services import run_services
from app.viewer import DEFAULT_DIR as VIEWER_DIR
from app.viewer import installed_version
from devtools.datagen import PARTNER_VOCABULARY, DatasetSpec
from devtools.dicom_files import dicom_file_for_item
from devtools.factories import simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync import apikeys
from imaging_sync.config import (
    CONFIG_ENV,
    BucketConfig,
    DatabaseConfig,
    DicomOperation,
    LoggingConfig,
    Settings,
    StorageConfig,
    load_settings,
)
from imaging_sync.config_toml import dumps
from imaging_sync.core import Core
from imaging_sync.db import migrate
from imaging_sync.db.models import Instance, Series, Study, Subject
from imaging_sync.extras import require_extra
from storage import EmbeddedS3

# Partner C speaks another vocabulary: lower-case sex letters and "<modality>-scan".
C_VOCABULARY = {
    "sex": {"m": "M", "f": "F", "o": "O"},
    "modality": {f"{code.lower()}-scan": code for code in set(PARTNER_VOCABULARY["modality"].values())},
}
_B_TO_DICOM = PARTNER_VOCABULARY
ENCODABLE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BUCKETS = {"b-dicom": "ap-northeast-2", "c-dicom": "eu-west-1"}
CONFIG_FILE = "imaging-sync.toml"
KEYS_FILE = "api-keys.env"
VIEWER_KEY_FILE = "viewer-api-key"
LOCK_FILE = "demo.lock"
# The first subjects get these names, so the printed searches always find someone: Hangul, the
# three component groups of a Korean name (PS3.5 6.2), and accents.
DEMO_NAMES = ("HONG^GILDONG=洪^吉洞=홍^길동", "김^민준", "KIM^SEOYEON", "Dupont^Élodie")
DCMTK_FINDSCU = Path("/usr/bin/findscu")
DEMO_DICOM_PEERS: dict[str, list[DicomOperation]] = {"FINDSCU": ["echo", "find"], "ISYNC_DOCTOR": ["echo"]}


@click.command("demo")
@click.option("--studies", default=30, show_default=True, type=click.IntRange(2, 5000), help="Studies per partner.")
@click.option("--workdir", default="./var/demo", show_default=True, type=click.Path(file_okay=False),
              help="The demo's database, config, keys and spool; emptied at start. A second demo in the same work dir is refused.")
@click.option("--api-port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="The REST API's port (0: any free one); when the default is busy another is chosen and printed.")
@click.option("--dicom-port", default=11112, show_default=True, type=click.IntRange(0, 65535), help="The DICOM node's port, chosen like --api-port.")
@click.option("--no-serve", is_flag=True, help="Stop after the first sync and the report (no servers).")
@click.pass_context
def demo(ctx: click.Context, studies: int, workdir: str, api_port: int, dicom_port: int, no_serve: bool) -> None:
    """Run the whole service on this machine: demo partners, embedded S3, sync, API, DICOM node, scheduler."""
    # Before the work dir is emptied: a production install (no demo extra) says what to install instead.
    require_extra("demo", key="storage.embedded", purpose="imaging-sync demo (its embedded S3 and DICOM files with pixel data)")
    flags = {name: ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE for name in ("api_port", "dicom_port")}
    root = ctx.find_root().obj
    config_flag = getattr(root, "config_path", None) if getattr(root, "config_flag", False) else None
    work = Path(workdir).absolute()
    with _claim(work):
        ports = (_port(api_port, "--api-port", "the REST API", flags["api_port"], click.echo),
                 _port(dicom_port, "--dicom-port", "the DICOM node", flags["dicom_port"], click.echo))
        (work / LOCK_FILE).write_text(f"pid {os.getpid()}, REST API on http://127.0.0.1:{ports[0]}\n")
        base = _base_settings(config_flag, work, click.echo)
        run_demo(base, studies=studies, workdir=work, api_port=ports[0], dicom_port=ports[1], serve=not no_serve, echo=click.echo)


def run_demo(base: Settings, *, studies: int, workdir: Path, api_port: int, dicom_port: int, serve: bool, echo: Callable[[str], None]) -> None:
    """The demo in ``workdir`` (claimed and emptied by the caller), on ``base`` settings plus its own parts."""
    secret_dir = workdir / "secrets"
    (workdir / "spool").mkdir(parents=True)
    secret_dir.mkdir(mode=0o700)
    key = _write_secret(secret_dir / "partner-api-key", secrets.token_urlsafe(18))
    s3_keys = {}
    for bucket in BUCKETS:
        access_key = _write_secret(secret_dir / f"{bucket}-access-key-id", f"AKIA{secrets.token_hex(8).upper()}")
        s3_keys[access_key] = _write_secret(secret_dir / f"{bucket}-secret-access-key", secrets.token_urlsafe(30))

    with (
        EmbeddedS3(buckets=BUCKETS, secrets=s3_keys) as s3,
        PartnerSimulator(DatasetSpec(partner="b", studies=studies, series_per_study=2, instances_per_series=3), SimulatorConfig(api_key=key)) as sim_b,
        PartnerSimulator(
            DatasetSpec(partner="c", studies=studies // 2, series_per_study=2, instances_per_series=3, seed=7, uid_root="1.2.826.0.1.3680043.10.5678"),
            SimulatorConfig(api_key=key),
        ) as sim_c,
    ):
        echo(f"embedded S3 on {s3.endpoint_url}; partner b on {sim_b.base_url}; partner c on {sim_c.base_url}")
        files = _prepare_partners(sim_b, sim_c, s3, overlap=max(1, studies // 5))
        echo(f"uploaded {files} real DICOM files to buckets {', '.join(BUCKETS)} (regions {', '.join(BUCKETS.values())})")
        config_path = _write_config(_settings(base, workdir, sim_b.base_url, sim_c.base_url, s3.endpoint_url, api_port, dicom_port), workdir)
        settings = load_settings(config_path, {k: v for k, v in os.environ.items() if k != CONFIG_ENV})  # exactly what the CLI will read
        with assembly.open_process(settings, require_schema=False) as process:
            core = process.core
            migrate.upgrade(core.engine)
            for result in core.runner.sync_all(trigger="demo"):
                echo("  " + result.summary().splitlines()[0])
            keys = _create_keys(core, workdir / KEYS_FILE)
            echo(f"\nsettings written to {config_path}; in another shell, every imaging-sync command sees this demo after:\n"
                 f"  export {CONFIG_ENV}={config_path}\n")
            _echo_keys(keys, workdir / KEYS_FILE, echo)
            echo(_outbox_line(core.settings))
            if serve:
                _serve(_with_viewer(process, secret_dir), workdir / KEYS_FILE, echo)


# -- the work dir and the ports ---------------------------------------------------------------


@contextmanager
def _claim(workdir: Path) -> Iterator[None]:
    """Hold the work dir's lock while the demo runs; a second demo there is refused, not let to delete it.

    The lock is an ``flock``: released by the kernel when this process ends,
    however it ends, so a crashed demo never blocks the next one.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    lock_path = workdir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_path.read_text(encoding="utf-8").strip() or "another process"
            raise click.ClickException(
                f"another demo is running in {workdir} ({holder}); stop it first (Ctrl-C in its terminal) or give this one its own --workdir"
            ) from None
        for child in workdir.iterdir():
            if child != lock_path:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        yield
    finally:
        os.close(fd)


def _port(wanted: int, flag: str, what: str, explicit: bool, echo: Callable[[str], None]) -> int:
    """``wanted`` if it is free on 127.0.0.1; a port asked for on the command line must be, a default may move (and says so)."""
    if wanted and _is_free(wanted):
        return wanted
    if wanted and explicit:
        raise click.BadParameter(f"port {wanted} is in use on 127.0.0.1", param_hint=flag)
    chosen = next((p for p in range(wanted + 1, wanted + 20) if wanted and _is_free(p)), 0) or _any_free_port()
    if wanted:
        echo(f"port {wanted} is busy: {what} listens on {chosen} instead (choose with {flag})")
    return chosen


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- settings -----------------------------------------------------------------------------------


def _base_settings(config_path: str | None, workdir: Path, echo: Callable[[str], None]) -> Settings:
    """The settings the demo adds to: the usual config file and environment, unless that file is a demo's own."""
    environ = dict(os.environ)
    named = config_path or environ.get(CONFIG_ENV)
    if named and Path(named).absolute() == workdir / CONFIG_FILE:
        echo(f"({CONFIG_ENV} names this demo's own settings from an earlier run: starting from the defaults instead)")
        environ.pop(CONFIG_ENV)
        config_path = None
    return load_settings(config_path, environ)


def _settings(base: Settings, workdir: Path, b_url: str, c_url: str, s3_url: str, api_port: int, dicom_port: int) -> Settings:
    """``base`` with the demo's database, partners, buckets, ports and spool; the rest (CORS origins, say) as configured."""
    secret_dir = workdir / "secrets"
    storage = StorageConfig(
        presign_default_seconds=base.storage.presign_default_seconds,
        presign_max_seconds=base.storage.presign_max_seconds,
        buckets={
            name: BucketConfig(region=region, endpoint_url=s3_url, auth="keys", addressing_style="path",
                               access_key_id_file=str(secret_dir / f"{name}-access-key-id"),
                               secret_access_key_file=str(secret_dir / f"{name}-secret-access-key"))
            for name, region in BUCKETS.items()
        },
    )
    key_file = str(secret_dir / "partner-api-key")
    partners = {
        "b": simulator_partner("b", b_url, api_key_env=None, api_key_file=key_file, priority=10, page_size=100),
        "c": simulator_partner("c", c_url, api_key_env=None, api_key_file=key_file, priority=5, page_size=100, vocabulary=C_VOCABULARY),
    }
    return msgspec.structs.replace(
        base,
        database=DatabaseConfig(url=f"sqlite:///{workdir / 'index.db'}"),
        # The demo's console shows its own lines; INFO logs only when the config asks for them.
        logging=LoggingConfig(level="WARNING", format=base.logging.format) if base.logging == LoggingConfig() else base.logging,
        storage=storage,
        api=msgspec.structs.replace(base.api, port=api_port),
        # Deny by default: the node serves the AEs the demo prints (findscu's default title) and `imaging-sync doctor`, from this machine.
        dicom=msgspec.structs.replace(base.dicom, port=dicom_port, spool_dir=str(workdir / "spool")).with_local_peers(DEMO_DICOM_PEERS),
        jobs=msgspec.structs.replace(base.jobs, scheduler="embedded"),
        partners=partners,
    )


def _with_viewer(process: assembly.Process, secret_dir: Path) -> assembly.Process:
    """The process serving the OHIF viewer at /viewer/ when `imaging-sync viewer install` has put one in ./var/ohif, with the
    demo's viewer key (its file written by _create_keys; the demo listens on 127.0.0.1 only). Not in the config file the
    demo writes: that key exists only once the database does, and a shared `serve` must not hand a key to every visitor."""
    dicomweb = process.settings.dicomweb
    if dicomweb.viewer_dir is not None or installed_version(VIEWER_DIR) is None:
        return process
    viewer = msgspec.structs.replace(dicomweb, viewer_dir=str(VIEWER_DIR.resolve()), viewer_key_env=None, viewer_key_file=str(secret_dir / VIEWER_KEY_FILE))
    settings = msgspec.structs.replace(process.settings, dicomweb=viewer)
    return dataclasses.replace(process, settings=settings, core=dataclasses.replace(process.core, settings=settings))


def _write_config(settings: Settings, workdir: Path) -> Path:
    """The settings as a config file any command can read (secrets stay in their files)."""
    data = msgspec.to_builtins(settings)
    data.pop("source", None)
    for partner in data["partners"].values():
        partner.pop("name", None)
    path = workdir / CONFIG_FILE
    path.write_text(f"# Written by `imaging-sync demo` at its start; valid while that demo runs.\n{dumps(data)}", encoding="utf-8")
    return path


def _write_secret(path: Path, value: str) -> str:
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return value


def _create_keys(core: Core, keys_file: Path) -> dict[str, str]:
    """One API key per role the demo shows, also written (0600) as shell variables."""
    keys = {}
    with core.engine.begin() as conn:
        for role in ("viewer", "operator"):
            _, keys[role] = apikeys.create_key(conn, f"demo {role}", role)
    _write_secret(keys_file, "\n".join(f"{role.upper()}_KEY={token}" for role, token in keys.items()))
    _write_secret(keys_file.parent / "secrets" / VIEWER_KEY_FILE, keys["viewer"])  # the served viewer's key ([dicomweb] viewer_key_file)
    return keys


def _echo_keys(keys: dict[str, str], keys_file: Path, echo: Callable[[str], None]) -> None:
    echo(f"viewer key (patients, studies, file URLs): {keys['viewer']}\n"
         f"operator key (partners, sync runs, rejected items): {keys['operator']}\n"
         f"both also in {keys_file} (`. {keys_file}` sets $VIEWER_KEY and $OPERATOR_KEY)")


def _outbox_line(settings: Settings) -> str:
    if settings.outbox.has_sink:
        return "outbox: change events are written and relayed to the configured sink"
    return "outbox: no sink configured ([outbox.webhook]), so the sync writes no change events"


# -- data ---------------------------------------------------------------------------------------


def _prepare_partners(sim_b: PartnerSimulator, sim_c: PartnerSimulator, s3: EmbeddedS3, overlap: int) -> int:
    """Real files for every instance; known names for the first subjects; C gets its own vocabulary and copies of some of B's studies."""
    client_b, client_c = s3.admin_client("ap-northeast-2"), s3.admin_client("eu-west-1")
    names: dict[str, str] = {}
    uploaded = 0
    for sim, client, bucket, translate in ((sim_b, client_b, "b-dicom", None), (sim_c, client_c, "c-dicom", _to_c_vocabulary)):
        for study_id in sim.dataset.live_study_ids():
            item = _existing_item(sim, study_id)
            if sim is sim_b:
                _name_subject(item, names)
            uploaded += _attach_files(item, client, bucket)
            sim.dataset.put_study(translate(item) if translate else item)
    for index in range(overlap):  # the same studies (same UIDs) at C, under C's ids, bucket and vocabulary
        shared = copy.deepcopy(_existing_item(sim_b, sim_b.dataset.spec.study_id(index)))
        shared["id"] = f"c-copy-{index:04d}"
        shared["subject"]["id"] = f"c-copy-subj-{index:04d}"
        for series in shared["series"]:
            series["id"] = f"c-{series['id']}"
            for inst in series["instances"]:
                inst["id"] = f"c-{inst['id']}"
        uploaded += _attach_files(shared, client_c, "c-dicom", reuse_bytes_from=client_b)
        sim_c.dataset.put_study(_to_c_vocabulary(shared))
    return uploaded


def _existing_item(sim: PartnerSimulator, study_id: str) -> dict[str, Any]:
    """The wire item of a study the simulator generated (``item`` is None only for an id it never had)."""
    item = sim.dataset.item(study_id)
    if item is None:
        raise LookupError(f"the demo partner has no study {study_id}")
    return item


def _name_subject(item: dict[str, Any], names: dict[str, str]) -> None:
    """The first subjects seen get DEMO_NAMES (the same name for all of a subject's studies)."""
    subject_id = item["subject"]["id"]
    if subject_id not in names and len(names) < len(DEMO_NAMES):
        names[subject_id] = DEMO_NAMES[len(names)]
    if subject_id in names:
        item["subject"]["name"] = names[subject_id]


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


# -- serving ------------------------------------------------------------------------------------


def _serve(process: assembly.Process, keys_file: Path, echo: Callable[[str], None]) -> None:
    """The all-in-one services over the demo's process, with the commands to try once they run."""
    settings = process.settings

    def echo_and_hint(line: str) -> None:
        echo(line)
        if line.startswith("running"):
            echo(try_lines(process.core, f"http://127.0.0.1:{settings.api.port}/api/v1", settings.dicom.port, keys_file))

    run_services(assembly.all_in_one(process), echo=echo_and_hint)


def try_lines(core: Core, base: str, dicom_port: int, keys_file: Path) -> str:
    """Commands to paste, each complete: a real instance id, the keys by role, JSON shown as UTF-8."""
    json_tool = "python3 -m json.tool --no-ensure-ascii"
    findscu = (f"{DCMTK_FINDSCU} -S -aet FINDSCU -aec {core.settings.dicom.ae_title} -k QueryRetrieveLevel=STUDY -k 'PatientName=HONG*' "
               f"-k PatientID -k StudyInstanceUID -k ModalitiesInStudy 127.0.0.1 {dicom_port}")
    dcmtk = "DICOM C-FIND with DCMTK" if DCMTK_FINDSCU.exists() else "needs DCMTK, not installed here: sudo apt-get install dcmtk"
    return (
        "\ntry (in a shell where the keys are set):\n"
        f"  . {keys_file}\n"
        f"  curl -s -H \"Authorization: Bearer $VIEWER_KEY\" '{base}/studies?limit=3' | {json_tool}\n"
        f"  curl -s -G -H \"Authorization: Bearer $VIEWER_KEY\" '{base}/studies' --data-urlencode 'name=홍' | {json_tool}   # name search: any name part, e.g. hong, gil, 김\n"
        f"  curl -s -H \"Authorization: Bearer $VIEWER_KEY\" '{base}/instances/{_an_instance_id(core)}/url' | {json_tool}   # then curl the url\n"
        f"  curl -s -H \"Authorization: Bearer $OPERATOR_KEY\" '{base}/sync-runs' | {json_tool}\n"
        f"  {findscu}   # {dcmtk}\n"
        f"  imaging-sync doctor   # with {CONFIG_ENV} exported as above\n"
        f"  interactive API docs (no internet needed): {base}/docs\n"
        f"{_viewer_line(core, base)}"
    )


def _viewer_line(core: Core, base: str) -> str:
    origin = base.removesuffix("/api/v1")
    if core.settings.dicomweb.viewer_dir is not None:
        return f"  the OHIF viewer on the partners' studies (DICOMweb at {origin}/dicomweb): open {origin}/viewer/ in a browser\n"
    return "  a web viewer: `imaging-sync viewer install` (OHIF, from the npm registry), then run the demo again and open /viewer/\n"


def _an_instance_id(core: Core) -> str:
    """An instance of the first demo patient's study: the URL line works as printed."""
    stmt = (
        select(Instance.id)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .join(Subject, Subject.id == Study.subject_id)
        .where(Instance.deleted_at.is_(None))
        .order_by((Subject.patient_name == DEMO_NAMES[0]).desc(), Instance.id)
        .limit(1)
    )
    with core.engine.connect() as conn:
        return str(conn.execute(stmt).scalar_one())
