"""The process map and the package layout (``docs/processes.md``), drawn from the code.

Which processes exist, what each is assembled from and which ports its
command gives it are read from the command line and :mod:`app.assembly`
(:mod:`app.diagrams.process_reading`). Ports, AE title, queue, broker and the
database's roles are the code's own defaults (:class:`~imaging_sync.config.Settings`,
``task_names.QUEUE``, :func:`~imaging_sync.db.engine.connection_url` on the
config's documented examples), and the scheduled jobs are the beat schedule
itself (:func:`jobs.schedule.build_beat_schedule`), built for settings with
every optional job turned on. What only a person can say (what a part talks
to, which outside system a job reaches, what the demo runs in place of the
real thing) is declared here, next to the thing it describes; a part, task
or command these tables do not know is an error naming where to describe it,
not a map that is silently wrong.

The layout is drawn from :mod:`app.layout`, the very rule ``tests/test_layout.py``
enforces: one arrow per allowed import.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click
import msgspec
from celery.schedules import crontab

from app import layout
from app.diagrams.process_reading import PARTS as PART_ORDER
from app.diagrams.process_reading import Process, assembly_functions, commands, processes, settings_of
from imaging_sync import task_names
from imaging_sync.config import AtnaConfig, DatabaseConfig, PartnerConfig, Settings, WebhookConfig
from imaging_sync.db.engine import Purpose, connection_url
from jobs.schedule import build_beat_schedule

# -- what only a person can say: the parts a process runs, what they talk to ----------------------


@dataclass(frozen=True)
class Link:
    """An arrow between a part of a process and a system outside it.

    ``inbound``: the outside system calls in. ``optional``: only when the
    config asks for it (drawn dotted).
    """

    to: str
    label: str
    inbound: bool = False
    optional: bool = False


@dataclass(frozen=True)
class External:
    """A system outside our processes; ``shape`` is Mermaid's node syntax around the label.

    ``label``: for a stand-in, what every arrow to it says instead (an SQLite file has no roles).
    """

    title: str
    shape: str = "{{%s}}"
    label: str | None = None


EXTERNALS: dict[str, External] = {
    "clients": External("Platform frontend, operators<br/>HTTP clients", "([%s])"),
    "pacs": External("PACS, modalities<br/>DICOM peers", "([%s])"),
    "database": External("Index database", "[(%s)]"),
    "broker": External("Celery broker", "[/%s/]"),
    "partner-api": External("Partner export APIs<br/>HTTPS, docs/partner-api.md"),
    "buckets": External("Partner S3 buckets<br/>read and presign only", "[(%s)]"),
    "audit-buckets": External("Audit seal bucket<br/>optional, object lock", "[(%s)]"),
    "webhook": External("Outbox webhook receivers<br/>docs/webhooks.md"),
    "alerts": External("Alert webhooks<br/>Slack-compatible, generic"),
    "atna": External("ATNA Audit Record Repository"),
    # Stand-ins a process runs inside itself instead of the real system (STAND_INS).
    "simulators": External("Partner simulators<br/>in the process, devtools.simulator", "[%s]", "HTTP pulls on loopback, API key"),
    "embedded-s3": External("Embedded S3<br/>in the process, moto", "[(%s)]", "HEAD, GET, presign on loopback"),
    "sqlite-workdir": External("SQLite file<br/>in --workdir", "[(%s)]", "SQL"),
}

# command -> {external it would reach -> the stand-in it runs in its own process instead}
STAND_INS: dict[str, dict[str, str]] = {
    "demo": {"partner-api": "simulators", "buckets": "embedded-s3", "database": "sqlite-workdir"},
}

# Commands that connect as the owning role (connection_url(config, "migrate")); every other one as the runtime role.
OWNER_COMMANDS = ("db upgrade", "audit archive")


def _atna_label() -> str:
    atna = AtnaConfig(host="arr.example")  # the defaults of [audit.atna]
    return f"syslog {atna.transport.upper()} :{atna.effective_port}"


# Scheduled task -> what the job reaches besides the index database (every job reads or writes it).
TASK_LINKS: dict[str, tuple[Link, ...]] = {
    task_names.SYNC_PARTNER: (
        Link("partner-api", "HTTPS pulls, API key"),
        Link("alerts", "POST alerts, with [alerts]", optional=True),
        Link("buckets", "ranged GETs of new files' headers, with dicomweb.read_headers_after_sync", optional=True),
    ),
    task_names.RELAY_OUTBOX: (Link("webhook", "POST events, HMAC-SHA256, with [outbox.webhook]", optional=True),),
    task_names.SEAL_AUDIT: (Link("audit-buckets", "seal objects, with audit.seal_bucket", optional=True),),
    task_names.RELAY_ATNA: (Link("atna", f"{_atna_label()}, with [audit.atna]", optional=True),),
    task_names.CHECK_ALERTS: (Link("alerts", "POST alerts, with [alerts]", optional=True),),
    task_names.PRUNE: (),
}

DATABASE = Link("database", "SQL, runtime role")


@dataclass(frozen=True)
class Part:
    """What a process runs: its name, where it listens, what it talks to."""

    title: str
    listens: Callable[[Settings], str | None]
    links: Callable[[Settings], tuple[Link, ...]]


def _job_links(settings: Settings) -> tuple[Link, ...]:
    return (DATABASE, *(link for job in scheduled_jobs(settings) for link in job.links))


PARTS: dict[str, Part] = {
    "api": Part(
        "REST API",
        lambda s: f"HTTP {s.api.host}:{s.api.port}",
        lambda s: (
            Link("clients", f"HTTP :{s.api.port} /api/v1, /dicomweb", inbound=True),
            DATABASE,
            Link("buckets", "HEAD, then presigned GET URLs;<br/>DICOMweb: ranged GETs of headers and frames, GET objects"),
            Link("broker", "sync tasks, if api.sync_launcher is queue", optional=True),
        ),
    ),
    "dicom": Part(
        "DICOM node",
        lambda s: f"DICOM {s.dicom.host}:{s.dicom.port}, AE {s.dicom.ae_title}",
        lambda s: (
            Link("pacs", f"DICOM :{s.dicom.port}, AE {s.dicom.ae_title}<br/>C-FIND, C-MOVE, C-GET", inbound=True),
            DATABASE,
            Link("buckets", "GET objects for C-MOVE, C-GET"),
            Link("pacs", "C-STORE to C-MOVE destinations"),
        ),
    ),
    "worker": Part(
        "Celery worker",
        lambda s: None,
        lambda s: (Link("broker", f"tasks from queue {task_names.QUEUE}", inbound=True), *_job_links(s)),
    ),
    "beat": Part(
        "Celery beat",
        lambda s: None,
        lambda s: (Link("broker", f"scheduled tasks to queue {task_names.QUEUE}"),),
    ),
    "scheduler": Part("in-process scheduler", lambda s: None, _job_links),
}

# -- the scheduled jobs -----------------------------------------------------------------------------

PROBE_PARTNER = "example"  # the partner the probe settings sync; its name shows as {partner}


def _with_partner(settings: Settings) -> Settings:
    partner = PartnerConfig(base_url="https://partner.example", name=PROBE_PARTNER)
    return msgspec.structs.replace(settings, partners={PROBE_PARTNER: partner})


def _with_outbox_sink(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, outbox=msgspec.structs.replace(settings.outbox, webhook=WebhookConfig(url="https://receiver.example/")))


def _with_atna(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, audit=msgspec.structs.replace(settings.audit, atna=AtnaConfig(host="arr.example")))


# What turns an optional job on, and settings with it on: each job of the schedule is found under one of these.
OPTIONAL_JOBS: tuple[tuple[str, Callable[[Settings], Settings]], ...] = (
    ("each enabled partner", _with_partner),
    ("an outbox sink ([outbox.webhook] or outbox.celery_task)", _with_outbox_sink),
    ("[audit.atna]", _with_atna),
)


@dataclass(frozen=True)
class Job:
    """One entry of the beat schedule (and of the in-process scheduler, which runs the same entries)."""

    name: str
    task: str
    timing: str
    only_with: str | None
    links: tuple[Link, ...]


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _timing(schedule: Any) -> str:
    """A Celery schedule as people read it: ``every 15 s`` or ``crontab `0 6,18 * * *` UTC``."""
    if isinstance(schedule, crontab):
        fields = (schedule._orig_minute, schedule._orig_hour, schedule._orig_day_of_month, schedule._orig_month_of_year, schedule._orig_day_of_week)
        return f"crontab `{' '.join(str(f) for f in fields)}`, {getattr(schedule, 'zone', 'UTC')}"
    return f"every {_duration(schedule.run_every.total_seconds())}"


def scheduled_jobs(settings: Settings) -> list[Job]:
    """The beat schedule for ``settings`` with every optional job turned on, each with what turns it on."""
    everything = settings
    for _, turn_on in OPTIONAL_JOBS:
        everything = turn_on(everything)
    alone = [(None, build_beat_schedule(settings)), *((when, build_beat_schedule(turn_on(settings))) for when, turn_on in OPTIONAL_JOBS)]
    jobs = []
    for name, entry in build_beat_schedule(everything).items():
        if entry["task"] not in TASK_LINKS:
            raise ValueError(f"scheduled task {entry['task']} ({name}): say what it reaches in TASK_LINKS (app/diagrams/processes.py)")
        only_with = next((when for when, schedule in alone if name in schedule), "several settings together")
        jobs.append(Job(name.replace(PROBE_PARTNER, "{partner}"), entry["task"], _timing(entry["schedule"]), only_with, TASK_LINKS[entry["task"]]))
    return jobs


# -- drawing ----------------------------------------------------------------------------------------


def _node_id(prefix: str, key: str) -> str:
    return prefix + "_" + "".join(c if c.isalnum() else "_" for c in key)


def _external_node(key: str, settings: Settings) -> str:
    external = EXTERNALS[key]
    title = external.title
    if key == "database":
        title += f"<br/>PostgreSQL; default {settings.database.url}"
    elif key == "broker":
        title += f", queue {task_names.QUEUE}<br/>default {settings.jobs.broker_url}"
    return _node_id("x", key) + external.shape % f'"{title}"'


def _short(key: str) -> str:
    return EXTERNALS[key].title.split("<br/>")[0]


def _links(process: Process, settings: Settings) -> list[Link]:
    """What the process's parts talk to, its stand-ins in place of the systems they replace, labels merged per arrow."""
    stand_ins = STAND_INS.get(process.command, {})
    merged: dict[tuple[str, bool], list[Link]] = {}
    for part in process.parts:
        for link in PARTS[part].links(settings_of(process, settings)):
            to = stand_ins.get(link.to, link.to)
            same = merged.setdefault((to, link.inbound), [])
            label = EXTERNALS[to].label or link.label
            if all(other.label != label for other in same):
                same.append(Link(to, label, link.inbound, link.optional))
    return [Link(to, "<br/>".join(link.label for link in same), inbound, all(link.optional for link in same))
            for (to, inbound), same in merged.items()]


def _process_node(process: Process) -> str:
    titles = " + ".join(PARTS[part].title for part in process.parts)
    return f'{_node_id("p", process.command)}("imaging-sync {process.command}<br/>{titles}")'


def process_map(found: Sequence[Process], settings: Settings, *, owner_commands: Sequence[str] = ()) -> str:
    """A Mermaid flowchart of ``found``: the processes, the systems around them, arrows labelled with ports and protocols.

    Arrows that only a config key turns on are dotted. ``owner_commands``
    adds the one-shot commands that connect as the owning role.
    """
    lines = ["flowchart LR"]
    links = {process.command: _links(process, settings) for process in found}
    used = [key for key in EXTERNALS if any(link.to == key for ls in links.values() for link in ls)]
    lines += [f"  {_external_node(key, settings)}" for key in used]
    lines += [f"  {_process_node(process)}" for process in found]
    if owner_commands:
        lines.append(f'  p_owner[["imaging-sync {", ".join(owner_commands)}<br/>one-shot, as the owning role"]]')
    for process in found:
        source = _node_id("p", process.command)
        for link in links[process.command]:
            target = _node_id("x", link.to)
            ends = (target, source) if link.inbound else (source, target)
            lines.append(f'  {ends[0]} {"-.->" if link.optional else "-->"}|"{link.label}"| {ends[1]}')
    if owner_commands:
        lines.append('  p_owner -->|"SQL, owning role: migrations, grants, partitions"| x_database')
    if "clients" in used:
        stores = {STAND_INS.get(process.command, {}).get("buckets", "buckets") for process in found} & set(used)
        lines += [f'  x_clients -->|"GET, presigned URL"| {_node_id("x", store)}' for store in sorted(stores)]
    return "```mermaid\n" + "\n".join(lines) + "\n```"


def _listens(process: Process, settings: Settings) -> list[str]:
    found = [text for part in process.parts if (text := PARTS[part].listens(settings_of(process, settings)))]
    if process.embedded_s3 and "buckets" not in STAND_INS.get(process.command, {}):
        port = f":{settings.storage.embedded_port}" if settings.storage.embedded_port else ", a free port"
        found.append(f"S3 127.0.0.1{port}, only with storage.embedded")
    return found


def process_table(found: Sequence[Process], settings: Settings) -> str:
    """process | command | assembled by | listens on | talks to, one row per process."""
    rows = ["| process | command | assembled by (`app/assembly.py`) | listens on | talks to |", "|---|---|---|---|---|"]
    for process in found:
        talks = [f"{_short(link.to)} ({link.label.replace('<br/>', '; ')})" for link in _links(process, settings) if not link.inbound]
        rows.append(" | ".join([
            "| " + " + ".join(PARTS[part].title for part in process.parts),
            f"`imaging-sync {process.command}`",
            ", ".join(f"`{name}`" for name in process.assembled_by),
            "<br>".join(_listens(process, settings)) or "nothing",
            "<br>".join(talks),
        ]) + " |")
    said = [f"- `imaging-sync {process.command}`: {process.summary}" for process in found]
    return "\n".join(rows) + "\n\nWhat each command says of itself (`--help`):\n\n" + "\n".join(said)


def _first_line(function: Callable[..., Any]) -> str:
    """The first line of a docstring, its reST roles made Markdown code."""
    line = (inspect.getdoc(function) or "").split("\n")[0]
    for role in (":func:", ":class:", ":meth:", ":mod:", ":data:"):
        line = line.replace(role, "")
    return line.replace("~", "").replace("|", "\\|")


def assembly_table(found: Sequence[Process]) -> str:
    """Each function of app/assembly.py: the first line of its docstring and the processes that reach it."""
    rows = ["| function | what it does | reached by |", "|---|---|---|"]
    for function in assembly_functions():
        users = ", ".join(f"`{process.command}`" for process in found if function.__name__ in process.reaches) or "other commands, tests"
        rows.append(f"| `{function.__name__}` | {_first_line(function)} | {users} |")
    return "\n".join(rows)


def jobs_table(settings: Settings) -> str:
    """The scheduled jobs: name, task, default timing, what turns it on, what it reaches."""
    rows = ["| job | Celery task | runs (default) | only with | reaches, besides the index database |", "|---|---|---|---|---|"]
    for job in scheduled_jobs(settings):
        reaches = "; ".join(f"{_short(link.to)} ({link.label})" for link in job.links) or "nothing else"
        rows.append(f"| `{job.name}` | `{job.task}` | {job.timing} | {job.only_with or 'always'} | {reaches} |")
    return "\n".join(rows)


def queue_list(settings: Settings) -> str:
    """The queue, the default broker, and every task name sent through it."""
    scheduled = {job.task: job.name for job in scheduled_jobs(settings)}
    names = sorted(value for key, value in vars(task_names).items() if key.isupper() and key != "QUEUE" and isinstance(value, str))
    tasks = [f"  - `{name}`" + (f" (scheduled as `{scheduled[name]}`)" if name in scheduled else "") for name in names]
    return "\n".join([
        f"- Queue: `{task_names.QUEUE}` (`imaging_sync.task_names.QUEUE`), the one the workers consume.",
        f"- Broker: `jobs.broker_url`, default `{settings.jobs.broker_url}`; RabbitMQ by an `amqp://` URL.",
        "- Tasks sent through it, by name (`imaging_sync.task_names`):",
        *tasks,
    ])


def _example(struct: type[msgspec.Struct], name: str) -> Any:
    """The example value the config documents for a key (``imaging-sync config example`` prints the same)."""
    info = msgspec.inspect.type_info(struct)
    for spec in info.fields if isinstance(info, msgspec.inspect.StructType) else ():
        if spec.name == name and isinstance(spec.type, msgspec.inspect.Metadata) and spec.type.extra_json_schema:
            return spec.type.extra_json_schema["examples"][0]
    raise ValueError(f"{struct.__name__}.{name} documents no example")


def databases_table(found: Sequence[Process], settings: Settings) -> str:
    """Which role each kind of connection uses, as connection_url decides it, on the config's own example values."""
    probe = DatabaseConfig(url=_example(DatabaseConfig, "url"), runtime_role=_example(DatabaseConfig, "runtime_role"))
    owner = connection_url(probe, "migrate", with_password=False).username
    rows = ["| connects for | as the role (config's example) | who |", "|---|---|---|"]
    for purpose in typing.get_args(Purpose):
        role = connection_url(probe, purpose, with_password=False).username
        key = "`database.url`'s user, the owner" if role == owner else "`database.runtime_role`"
        readers = [process for process in found if any(link.to == "database" for link in _links(process, settings))]
        who = (", ".join(f"`imaging-sync {command}`" for command in OWNER_COMMANDS) if role == owner
               else ", ".join(f"`{process.command}`" for process in readers) + ", every other command")
        rows.append(f'| `"{purpose}"` | `{role}`: {key} | {who} |')
    rows.append(f"| SQLite | no roles: one file (default `{settings.database.url}`) | every process and command on one machine |")
    return "\n".join(rows)


def layout_diagram() -> str:
    """The packages and the imports the layout allows: one arrow per allowed import, the demo's tools dotted."""
    lines = ["flowchart TB"]
    by_role: dict[str, list[str]] = {}
    for package in layout.OURS:
        by_role.setdefault(layout.ROLES[package], []).append(package)
    for role, packages in by_role.items():
        if len(packages) == 1:
            label = packages[0] if role == packages[0] else f"{packages[0]}<br/>{role}"
            lines.append(f'  {_node_id("pkg", packages[0])}["{label}"]')
            continue
        lines.append(f'  subgraph {_node_id("role", role)} ["{role}s"]')
        lines += [f'    {_node_id("pkg", package)}["{package}"]' for package in packages]
        lines.append("  end")
    for package in layout.OURS:
        lines += [f"  {_node_id('pkg', package)} --> {_node_id('pkg', other)}" for other in sorted(layout.ALLOWED[package])]
    for module in sorted(layout.MAY_IMPORT_DEVTOOLS):
        lines.append(f'  {_node_id("pkg", module.split("/")[0])} -.->|"{module} only"| pkg_devtools')
    return "```mermaid\n" + "\n".join(lines) + "\n```"


def _in_map_order(found: Sequence[Process]) -> list[Process]:
    """One part each first (production: API, DICOM node, worker, beat), then the all-in-one ones, stand-ins last."""
    return sorted(found, key=lambda p: (len(p.parts), [PART_ORDER.index(part) for part in p.parts], p.command in STAND_INS, p.command))


def parts(group: click.Group | None = None, settings: Settings | None = None) -> dict[str, str]:
    """The generated parts of docs/processes.md: the processes of ``group`` (default: ``imaging-sync``) on ``settings`` (default: the defaults)."""
    if group is None:
        from app.cli import cli  # here: app.cli imports every command, the docs command included

        group = cli
    settings = settings or Settings()
    known = dict(commands(group))
    for command in [*STAND_INS, *OWNER_COMMANDS]:
        if command not in known:
            raise ValueError(f"app/diagrams/processes.py names `imaging-sync {command}`, which the command line no longer has")
    found = _in_map_order(processes(group))
    return {
        "process-map": process_map([p for p in found if len(p.parts) == 1], settings, owner_commands=OWNER_COMMANDS),
        "one-process-maps": "\n\n".join(f"**`imaging-sync {p.command}`**\n\n{process_map([p], settings)}" for p in found if len(p.parts) > 1),
        "process-table": process_table(found, settings),
        "assembly": assembly_table(found),
        "scheduled-jobs": jobs_table(settings),
        "queue": queue_list(settings),
        "databases": databases_table(found, settings),
        "package-layout": layout_diagram(),
    }
