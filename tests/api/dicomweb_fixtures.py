"""Helpers of the DICOMweb tests: real DICOM files in the embedded S3 behind a counting HTTP front, and the index
rows that point at them.

:class:`CountingFront` stands on 127.0.0.1 between the app and the moto S3
server and records each request (method, path, ``Range``) before passing it
on: "a second metadata request makes no S3 request" and "a frame is one
ranged GET" are read off what reached S3.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any
from urllib.parse import unquote

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

# Chromium's command line for pages that render images (OHIF's Cornerstone): WebGL through SwiftShader, the CPU draws.
WEBGL_ARGS = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Seen:
    method: str
    key: str
    range: str | None


class CountingFront(ThreadingHTTPServer):
    """Passes every request to ``upstream`` (the S3 server) and records it in :attr:`seen`."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream.removeprefix("http://")
        self.seen: list[Seen] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> CountingFront:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def gets(self, key: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and (key is None or s.key == key)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingFront

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _forward(self) -> None:
        key = unquote(self.path.split("?", 1)[0]).split("/", 2)[-1]
        self.server.seen.append(Seen(self.command, key, self.headers.get("Range")))
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=10)
        upstream.request(self.command, self.path, headers=dict(self.headers.items()))  # Host as sent: it is signed
        answer = upstream.getresponse()
        body = answer.read()
        upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = _forward
    do_HEAD = _forward


@dataclass
class FileSpec:
    """What one test file holds: its syntax, frames, size, and a bulky element before the pixels if asked."""

    transfer_syntax: str = ExplicitVRLittleEndian
    frames: int = 1
    rows: int = 32
    columns: int = 32
    bits: int = 16
    private_bytes: int = 0  # an OB element of this size before Pixel Data (a header longer than the first read)
    patient_name: str = "HONG^GILDONG=洪^吉洞=홍^길동"
    extra: dict[str, Any] = field(default_factory=dict)


def pixels(spec: FileSpec, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if spec.bits == 16 else np.uint8
    return rng.integers(0, 4000 if spec.bits == 16 else 255, size=(spec.frames, spec.rows, spec.columns)).astype(dtype)


def dicom_bytes(spec: FileSpec, *, study: str, series: str, sop: str, seed: int = 1) -> tuple[bytes, list[bytes]]:
    """A Part 10 file and each frame's native pixel bytes (little endian), for the UIDs of an index row."""
    ts = UID(spec.transfer_syntax)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = spec.patient_name, "P-WADO"
    ds.StudyDate, ds.Modality, ds.InstanceNumber = "20240110", "OT", 1
    ds.ImageComments = "a header to read"
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    if spec.private_bytes:
        block = ds.private_block(0x0009, "IMAGING-SYNC TEST", create=True)
        block.add_new(0x01, "OB", bytes(range(256)) * (spec.private_bytes // 256))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = spec.bits, spec.bits, spec.bits - 1, 0
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    array = pixels(spec, seed)
    frames = [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in array]
    ds.PixelData = b"".join(frames)
    if ts == RLELossless:
        ds.compress(RLELossless, array if spec.frames > 1 else array[0], encoding_plugin="pydicom", generate_instance_uid=False)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue(), frames


__all__ = ["WEBGL_ARGS", "CountingFront", "FileSpec", "Seen", "dicom_bytes", "pixels"]
