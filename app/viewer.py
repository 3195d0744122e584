"""``imaging-sync viewer install``: the prebuilt OHIF Viewer from the npm registry, adapted to be served at /viewer/.

OHIF publishes its built web app as the npm package ``@ohif/app``; its
``package/dist/`` is a complete static site. ``npm pack`` fetches exactly the
pinned version (never a newer one by surprise), its SHA-512 is checked
against the one pinned here, and the site is unpacked into ``./var/ohif``
(never into the repository: it is 200 MB of someone else's build).

The build expects to be served at ``/``; this service serves it at
``/viewer/`` beside the API. Two mechanical rewrites adapt it, each checked
to have applied (a different OHIF build layout fails the install, naming the
file, rather than serving a broken viewer): the webpack public path of every
bundle (``__webpack_require__.p = "/"``), the absolute ``url(/…)`` of the
style sheets, and the absolute asset paths and ``window.PUBLIC_URL`` of ``index.html``, whose service worker registration is
dropped (it would cache the app and answer for ``/`` outside the mount).
``app-config.js`` is not used: the API process generates its own
(``api.viewer``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import click

from imaging_sync.errors import ConfigError

PACKAGE = "@ohif/app"
VERSION = "3.13.2"
# npm's dist.integrity of @ohif/app@3.13.2 (`npm view @ohif/app@3.13.2 dist.integrity`).
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
DEFAULT_DIR = Path("var/ohif")
MOUNT = "/viewer/"
MARKER = ".imaging-sync-viewer.json"
_PUBLIC_PATH = '__webpack_require__.p = "/";'
_SERVICE_WORKER = re.compile(r'<script[^>]*src="/init-service-worker\.js"[^>]*>\s*</script>')


@click.group("viewer")
def viewer() -> None:
    """The OHIF web viewer served at /viewer/ (fetched from the npm registry, not kept in the repository)."""


@viewer.command("install")
@click.option("--dir", "target", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True, help="Where to unpack it.")
def install_command(target: Path) -> None:
    """Fetch OHIF Viewer (npm pack @ohif/app@3.13.2), check it, unpack it for /viewer/."""
    click.echo(f"fetching {PACKAGE}@{VERSION} from the npm registry …")
    install(target)
    click.echo(f"OHIF Viewer {VERSION} installed in {target}; `imaging-sync demo` serves it at http://127.0.0.1:<api port>/viewer/ "
               f"(elsewhere: [dicomweb] viewer_dir = \"{target}\")")


def install(target: Path) -> None:
    """Fetch, check, adapt and put the viewer in ``target`` (replaced whole, never half-written)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError("viewer", "npm is not installed (Debian: apt-get install npm); it fetches the viewer from the npm registry")
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ohif-") as work:
        work_dir = Path(work)
        done = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=work_dir, capture_output=True, text=True, timeout=600, check=False)
        tarballs = list(work_dir.glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise ConfigError("viewer", f"npm pack {PACKAGE}@{VERSION} failed: {done.stderr.strip()[-300:] or 'no tarball'}")
        check_integrity(tarballs[0])
        site = work_dir / "site"
        _unpack_dist(tarballs[0], site)
        adapt_for_mount(site)
        (site / MARKER).write_text(json.dumps({"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY, "mount": MOUNT}) + "\n", encoding="utf-8")
        old = work_dir / "old"
        if target.exists():
            target.rename(old)
        site.rename(target)


def check_integrity(tarball: Path) -> None:
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    if "sha512-" + base64.b64encode(digest).decode() != INTEGRITY:
        raise ConfigError("viewer", f"{tarball.name} does not match the pinned SHA-512 of {PACKAGE}@{VERSION}; not installed")


def _unpack_dist(tarball: Path, site: Path) -> None:
    """``package/dist/`` of the tarball into ``site``, refusing any member that would land outside it."""
    site.mkdir()
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if not member.name.startswith("package/dist/") or not (member.isfile() or member.isdir()):
                continue
            relative = Path(member.name).relative_to("package/dist")
            destination = (site / relative).resolve()
            if not destination.is_relative_to(site.resolve()):
                raise ConfigError("viewer", f"{member.name} would be written outside the viewer's directory; not installed")
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None  # a regular file
            destination.write_bytes(source.read())


def adapt_for_mount(site: Path, mount: str = MOUNT) -> None:
    """Rewrite the build, made for ``/``, to be served at ``mount``; ConfigError when the build is not laid out as expected."""
    bundles = 0
    for script in site.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        if _PUBLIC_PATH in text:
            script.write_text(text.replace(_PUBLIC_PATH, f'__webpack_require__.p = "{mount}";'), encoding="utf-8")
            bundles += 1
    if bundles == 0:
        raise ConfigError("viewer", f"no bundle sets the webpack public path ({_PUBLIC_PATH}): this OHIF build is not the one this installer knows")
    for sheet in site.glob("*.css"):  # fonts referenced from the root (url(/….woff2))
        text = sheet.read_text(encoding="utf-8")
        sheet.write_text(re.sub(r"url\(/(?!/)", f"url({mount}", text), encoding="utf-8")
    index = site / "index.html"
    html = index.read_text(encoding="utf-8")
    if 'window.PUBLIC_URL="/"' not in html:
        raise ConfigError("viewer", "index.html does not set window.PUBLIC_URL: this OHIF build is not the one this installer knows")
    html = _SERVICE_WORKER.sub("", html)
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{mount}"')
    html = re.sub(r'(src|href)="/(?!/)', rf'\1="{mount}', html)
    index.write_text(html, encoding="utf-8")


def installed_version(directory: Path) -> str | None:
    """The version installed in ``directory`` by :func:`install`, or None when there is none."""
    try:
        return str(json.loads((directory / MARKER).read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return None


__all__ = ["DEFAULT_DIR", "INTEGRITY", "MOUNT", "VERSION", "adapt_for_mount", "install", "installed_version", "viewer"]
