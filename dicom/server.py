"""Wiring of the DICOM Query/Retrieve node: the Application Entity, its contexts, its handlers.

Built once per process from the settings, the process's engine and its
bucket registry (``build_services``, ``build_ae``, :class:`DicomServer`); the
handlers get their dependencies when bound, nothing is global. Supports
Verification and the Patient Root and Study Root Query/Retrieve information
models for FIND, MOVE and GET (PS3.4 Annex C), and as C-GET needs, every
storage SOP class in the SCP role (PS3.4 C.4.3.3.1).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import: no attribute mypy can see
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from dicom import handlers
from dicom.access import AccessPolicy
from dicom.find import Finder
from dicom.handlers import FIND_MODELS, GET_MODELS, MOVE_MODELS, Services
from dicom.limits import Limits
from dicom.reactors import REACTOR_TIME  # noqa: F401  # imported for its effect: pynetdicom's idle waits wake on input
from dicom.retrieve import Spool
from dicom.sending import use_stored_encoding
from imaging_sync.config import DicomConfig
from storage import ObjectReader

log = logging.getLogger("dicom.server")

# pynetdicom logs whole request/response identifiers at INFO: they hold patient names and IDs.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


class _SharedUIDContext(PresentationContext):
    """A supported context that pynetdicom's per-association deep copy shares instead of copying.

    pynetdicom deep-copies every supported context for each association it
    accepts (``transport.RequestHandler._create_association``); with every
    storage SOP class in every transfer syntax (needed for C-GET) that took
    ~40 ms an association, and copying only the lists still ~1.2 ms. An
    acceptor's supported contexts are only read: negotiation
    (``presentation.negotiate_as_acceptor``) builds new result contexts. So
    each association shares the server's (guarded by
    tests/dicom/test_pynetdicom_internals.py).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> PresentationContext:
        return self


class QueryRetrieveAE(AE):
    """Our AE: each association it opens (the C-MOVE sub-operations' one) sends stored files as they are."""

    def associate(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["evt_handlers"] = [
            *(kwargs.get("evt_handlers") or []),
            (evt.EVT_CONN_OPEN, handlers.handle_outgoing_connection_open),
            (evt.EVT_CONN_CLOSE, handlers.handle_outgoing_connection_closed),
        ]
        assoc = super().associate(*args, **kwargs)
        use_stored_encoding(assoc)
        return assoc


def build_services(
    config: DicomConfig, engine: Engine, reader: ObjectReader, *, partner_priority: Mapping[str, int] | None = None
) -> Services:
    from dicom.retrieve import Retriever

    return Services(
        engine=engine,
        finder=Finder(engine, retrieve_ae_title=config.ae_title),
        retriever=Retriever(
            engine, reader, fetch_concurrency=config.fetch_concurrency, spool_dir=config.spool_dir, partner_priority=partner_priority,
            in_memory_bytes=config.in_memory_object_bytes,
        ),
        config=config,
        access=AccessPolicy(config),
        limits=Limits.of(config),
    )


# Connections pynetdicom serves at once beyond the associations admitted (dicom.access counts those): peers
# still to send their A-ASSOCIATE-RQ, or rejected ones closing. Each costs two threads; past this many,
# pynetdicom itself rejects (local limit exceeded), and handlers.handle_rejected audits it.
EXTRA_CONNECTIONS = 32


def build_ae(config: DicomConfig) -> QueryRetrieveAE:
    ae = QueryRetrieveAE(ae_title=config.ae_title)
    ae.maximum_associations = config.max_associations + EXTRA_CONNECTIONS
    # Idle: the peer sends nothing between requests (pynetdicom aborts the association), or a new connection
    # sends no A-ASSOCIATE-RQ (ACSE timeout). Our own waits for a peer's answer (C-STORE responses of a
    # retrieve, a destination accepting us) keep the longer network timeout.
    ae.network_timeout = config.idle_timeout_seconds
    ae.acse_timeout = config.idle_timeout_seconds
    ae.dimse_timeout = config.network_timeout_seconds
    ae.connection_timeout = config.network_timeout_seconds
    ae.maximum_pdu_size = config.max_pdu_bytes
    # Who may associate is decided per request by dicom.access (handlers.handle_requested), not by
    # pynetdicom's require_calling_aet, which cannot tie a title to addresses nor count per peer.
    ae.add_supported_context(Verification)
    for uid in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
        ae.add_supported_context(uid)
    # C-GET: we store to the requester, which takes the SCP role. Of the syntaxes a requester proposes in
    # one context we accept the first in this order; files are sent only in their stored syntax, and
    # Explicit VR Little Endian is the most common one.
    syntaxes = [ExplicitVRLittleEndian, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian)]
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None  # each of pynetdicom's storage contexts names its SOP class
        ae.add_supported_context(cx.abstract_syntax, syntaxes, scu_role=False, scp_role=True)
    return ae


def bound_handlers(services: Services) -> list[Any]:
    return [
        (evt.EVT_CONN_OPEN, handlers.handle_connection_open, [services]),
        (evt.EVT_REQUESTED, handlers.handle_requested, [services]),
        (evt.EVT_PDU_RECV, handlers.handle_pdu_received, [services]),
        (evt.EVT_C_ECHO, handlers.handle_echo, [services]),
        (evt.EVT_C_FIND, handlers.handle_find, [services]),
        (evt.EVT_C_MOVE, handlers.handle_move, [services]),
        (evt.EVT_C_GET, handlers.handle_get, [services]),
        (evt.EVT_SOP_EXTENDED, handlers.handle_sop_extended),
        (evt.EVT_ESTABLISHED, handlers.handle_established),
        (evt.EVT_RELEASED, handlers.handle_released, [services]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [services]),
        (evt.EVT_REJECTED, handlers.handle_rejected, [services]),
        (evt.EVT_CONN_CLOSE, handlers.handle_connection_closed, [services]),
    ]


class DicomServer:
    """The listening node: ``start()`` returns once it accepts associations; ``port`` is the bound port."""

    def __init__(self, config: DicomConfig, services: Services, *, after_warm_up: Callable[[], None] | None = None) -> None:
        self._config = config
        self._services = services
        self._after_warm_up = after_warm_up
        self.ae = build_ae(config)
        self._server: ThreadedAssociationServer | None = None
        self.spool: Spool | None = None

    @property
    def services(self) -> Services:
        return self._services

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the DICOM server is not running")
        return int(self._server.server_address[1])

    def start(self) -> int:
        """Listen; C-MOVE/C-GET spool into this node's own folder, swept first of what a previous process left.

        With a fixed port the folder is ready before the first connection; with
        ``port = 0`` (tests) it is named after the port just bound, before anyone knows it.
        """
        started = time.time()
        if self._config.port:
            self._use_spool(self._config.port, started)
        server = self.ae.start_server((self._config.host, self._config.port), block=False, evt_handlers=bound_handlers(self._services))
        assert server is not None  # block=False returns the running server
        self._server = server
        for cx in server.contexts:
            cx.__class__ = _SharedUIDContext
        if not self._config.port:
            self._use_spool(self.port, started)
        threading.Thread(target=self._warm_up, name="dicom-warm-up", daemon=True).start()
        log.info(
            "DICOM node %s listening on %s:%d (%d calling AEs listed, %d C-MOVE destinations)",
            self._config.ae_title, self._config.host, self.port, len(self._config.peers), len(self._config.destinations),
        )
        if not self._config.peers:
            log.warning("no [dicom.peers] listed: every association will be rejected")
        return self.port

    def _warm_up(self) -> None:
        """Build the buckets' S3 clients once listening, not on the first C-MOVE's clock nor before the port opens
        (botocore loads its service model: hundreds of milliseconds). A bucket that fails is named here and again,
        as a failed sub-operation, when a retrieve needs it."""
        try:
            self._services.retriever.connect_storage()
        except Exception as exc:
            log.error("DICOM node: a bucket's S3 client could not be built: %s", exc)
        if self._after_warm_up is not None:
            self._after_warm_up()

    def _use_spool(self, port: int, started: float) -> None:
        self.spool = Spool(self._config.spool_dir, port)
        swept = self.spool.sweep(older_than=started)
        if swept:
            log.warning("swept %d spool files a previous DICOM node process left in %s", swept, self.spool.path)
        self._services.retriever.use_spool(self.spool)

    def serve_forever(self) -> None:
        """Serve until interrupted (the CLI): Ctrl-C or SIGTERM."""
        self.start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):  # a timed wait: Ctrl-C is seen on every platform
                continue

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()
        if self.spool is not None:
            self.spool.remove_if_empty()

    def __enter__(self) -> DicomServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
