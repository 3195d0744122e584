"""The OHIF Viewer, in a real browser, reading the federated index through this server's DICOMweb.

The app runs under uvicorn on 127.0.0.1 with the viewer ``imaging-sync viewer install`` put in ``var/ohif``
(``.ci/run`` installs it when missing; without it these tests skip, or fail where services are required).
Debian's chromium renders WebGL with SwiftShader. Real DICOM files sit in two partners' buckets (the
embedded S3): a CT series of five slices in partner b's, an MR series in partner c's.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from api_fixtures import IndexBuilder, Located, make_settings
from dicomweb_fixtures import WEBGL_ARGS, FileSpec, dicom_bytes
from required import require
from sqlalchemy import select

from api.service import ApiService
from app.assembly import api_app, open_core
from app.viewer import installed_version
from devtools.storage import EmbeddedStorage
from imaging_sync import apikeys
from imaging_sync.db.models import Instance, Series, Study
from storage import BucketRegistry

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow
OHIF = Path(__file__).resolve().parents[2] / "var" / "ohif"
KEY_ENV = "IMAGING_SYNC_TEST_VIEWER_KEY"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Site:
    url: str
    studies: dict[str, str]  # patient id -> Study Instance UID


def _put_series(index: IndexBuilder, s3: EmbeddedStorage, study_id: Any, *, partner: str, bucket: str, modality: str, slices: int) -> None:
    series_id = index.series(study_id, modality, number=1, partners=(partner,))
    with index.engine.connect() as conn:
        study_uid = conn.execute(select(Study.study_instance_uid).where(Study.id == study_id)).scalar_one()
        series_uid = conn.execute(select(Series.series_instance_uid).where(Series.id == series_id)).scalar_one()
    for n in range(1, slices + 1):
        key = f"ohif/{series_uid}/{n}.dcm"
        instance_id = index.instance(series_id, number=n, locations=[Located(partner, bucket, key)])
        with index.engine.connect() as conn:
            sop = conn.execute(select(Instance.sop_instance_uid).where(Instance.id == instance_id)).scalar_one()
        spec = FileSpec(rows=64, columns=64, extra={
            "Modality": modality, "SOPClassUID": CT_SOP_CLASS, "InstanceNumber": n, "SeriesNumber": 1,
            "ImagePositionPatient": [0, 0, 5 * n], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "PixelSpacing": [1, 1], "SliceThickness": 5,
            "WindowCenter": 2000, "WindowWidth": 4000,
        })
        data, _ = dicom_bytes(spec, study=study_uid, series=series_uid, sop=sop, seed=1000 + n)
        s3.put(bucket, key, data)


@pytest.fixture
def site(sqlite_url: str, s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    require(None if installed_version(OHIF) else f"no OHIF viewer in {OHIF} (imaging-sync viewer install)")
    s3.export_environ(monkeypatch.setenv)
    settings = make_settings(sqlite_url, s3.config, [b.name for b in s3.buckets], host="127.0.0.1", port=0)
    import msgspec

    settings = msgspec.structs.replace(settings, dicomweb=msgspec.structs.replace(settings.dicomweb, viewer_dir=str(OHIF), viewer_key_env=KEY_ENV))
    core = open_core(settings, configure_logs=False)
    with core.engine.begin() as conn:
        monkeypatch.setenv(KEY_ENV, apikeys.create_key(conn, "ohif test", "viewer")[1])
    index = IndexBuilder(core.engine)
    studies = {}
    for patient_id, name, partner, bucket, modality, slices in (
        ("P-KO", "김^민준", "b", s3.buckets[0].name, "CT", 5),
        ("P-HONG", "HONG^GILDONG=洪^吉洞=홍^길동", "b", s3.buckets[0].name, "CT", 1),
        ("P-KIM", "KIM^SEOYEON", "c", s3.buckets[1].name, "MR", 3),
    ):
        study_id = index.study(index.subject(patient_id, name), partners=(partner,), description=f"{modality} study")
        _put_series(index, s3, study_id, partner=partner, bucket=bucket, modality=modality, slices=slices)
        with core.engine.connect() as conn:
            studies[patient_id] = conn.execute(select(Study.study_instance_uid).where(Study.id == study_id)).scalar_one()
    service = ApiService(api_app(core, BucketRegistry(core.settings.storage)), core.settings.api)
    try:
        service.start()
        yield Site(f"http://127.0.0.1:{service.port}", studies)
    finally:
        service.stop()
        core.close()


def rows(page: Page) -> list[str]:
    """The study list's rows (not its filter row, whose only text is its Reset button)."""
    return [text for text in page.locator("tbody tr").all_inner_texts() if text.strip() and text.strip() != "Reset"]


def wait_for(condition: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def canvas_pixels(page: Page) -> dict[str, Any]:
    """The viewport canvas's pixels: how many are not black, and a digest to tell two slices apart."""
    return page.evaluate("""() => {
        const canvas = document.querySelector('canvas.cornerstone-canvas');
        if (!canvas || !canvas.width) return null;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let lit = 0, digest = 0;
        for (let i = 0; i < data.length; i += 4) {
            const v = data[i] + data[i + 1] + data[i + 2];
            if (v > 30) lit++;
            digest = (digest * 31 + v) % 1000000007;
        }
        return {lit, digest, total: data.length / 4};
    }""")


def open_study(page: Page, url: str) -> dict[str, Any]:
    page.goto(url)
    skip = page.get_by_text("Skip all")
    try:
        skip.click(timeout=20_000)  # the first-use tour
    except Exception:  # no tour this time: nothing to dismiss
        page.keyboard.press("Escape")
    return wait_for(lambda: (p := canvas_pixels(page)) and p["lit"] > 0 and p, what="a rendered image")


@pytest.mark.parametrize("chromium", [WEBGL_ARGS], indirect=True)
def test_the_study_list_shows_the_federated_studies_and_filters_by_patient_name(chromium: Browser, site: Site) -> None:
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{site.url}/viewer/")
    listed = wait_for(lambda: len(rows(page)) == 3 and rows(page), what="three studies in the list")
    text = "\n".join(listed)
    assert "김, 민준" in text and "HONG, GILDONG" in text and "KIM, SEOYEON" in text
    page.locator("input").first.fill("kim")
    narrowed = wait_for(lambda: len(rows(page)) == 1 and rows(page), what="the list narrowed to one study")
    assert "KIM, SEOYEON" in narrowed[0]


@pytest.mark.parametrize("chromium", [WEBGL_ARGS], indirect=True)
def test_a_study_renders_scrolls_to_another_slice_and_a_second_partners_series_renders(chromium: Browser, site: Site) -> None:
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    first = open_study(page, f"{site.url}/viewer/viewer?StudyInstanceUIDs={site.studies['P-KO']}")
    assert first["lit"] > first["total"] // 10  # the image, not a blank viewport
    wait_for(lambda: page.get_by_text(re.compile(r"\(1/5\)")).count() > 0, what="the first of five slices")
    box = page.locator("canvas.cornerstone-canvas").first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 120)
    wait_for(lambda: page.get_by_text(re.compile(r"\(2/5\)")).count() > 0, what="the second slice")
    moved = wait_for(lambda: (p := canvas_pixels(page)) and p["lit"] > 0 and p["digest"] != first["digest"] and p, what="another slice's pixels")
    assert moved["lit"] > moved["total"] // 10
    other = open_study(page, f"{site.url}/viewer/viewer?StudyInstanceUIDs={site.studies['P-KIM']}")  # partner c's bucket
    assert other["lit"] > other["total"] // 10


def test_the_served_config_points_at_this_server_and_other_paths_fall_back_safely(site: Site) -> None:
    """app-config.js points at this server's /dicomweb (and carries the key only when one is configured, as here);
    a path of the app's own routes is index.html; a missing bundle is a 404; nothing outside the site is served."""
    import httpx

    from api.viewer import app_config

    config = httpx.get(f"{site.url}/viewer/app-config.js").text
    assert "window.location.origin + '/dicomweb'" in config and '"option": "never"' in config
    assert os.environ[KEY_ENV] in config and "Authorization" not in app_config(None)
    assert httpx.get(f"{site.url}/viewer/viewer?StudyInstanceUIDs=1.2.3").text.lower().startswith("<!doctype html>")
    assert httpx.get(f"{site.url}/viewer/no-such-bundle.js").status_code == 404
    escaped = httpx.get(f"{site.url}/viewer/%2e%2e/%2e%2e/pyproject.toml")
    assert "[project]" not in escaped.text
