"""The pynetdicom internals the node's fast paths rely on (pinned in pyproject.toml): if an upgrade moves them, fail here.

dicom.responses replaces ``service_class.encode`` and wraps an association's
``dimse.send_msg``; dicom.handlers shortens the DUL reactor's
``_run_loop_delay`` while a C-FIND streams; dicom.reactors parks a DUL in its
idle wait while dicom.sending writes a C-MOVE's files to its socket.
"""

from __future__ import annotations

from typing import Any

import pynetdicom
from dicom_fixtures import Node
from pynetdicom import evt, service_class
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from scu import FIND, identifier, scu

import dicom.responses
from devtools.waiting import eventually


def test_the_version_is_the_one_the_fast_paths_were_written_for() -> None:
    assert pynetdicom.__version__.startswith("3.0.")


def test_the_reactors_idle_sleeps_are_the_ones_dicom_reactors_replaces() -> None:
    import inspect

    from pynetdicom import association, dul

    from dicom.reactors import ASSOCIATION_LOOP_SLEEP, REACTOR_TIME

    assert dul.time is REACTOR_TIME and association.time is REACTOR_TIME
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor)
    assert f"time.sleep({ASSOCIATION_LOOP_SLEEP})" in inspect.getsource(association.Association._run_reactor)
    assert hasattr(association.Association, "dimse") or "dimse" in inspect.getsource(association.Association.__init__)
    # dicom.reactors.wake_on_acse: releases and aborts reach the association thread through the DUL's to_user_queue,
    # DIMSE messages through the DIMSE provider's msg_queue; the reactor checks both each loop.
    assert "self.to_user_queue" in inspect.getsource(DULServiceProvider.__init__)
    assert "msg_queue" in inspect.getsource(DIMSEServiceProvider.get_msg)
    assert "is_release_requested" in inspect.getsource(association.Association._run_reactor)


def test_the_dul_loop_reads_its_socket_only_after_the_idle_wait_park_dul_holds() -> None:
    """dicom.reactors.park_dul holds the DUL in its idle sleep; dicom.sending's line then owns the socket."""
    import inspect

    source = inspect.getsource(DULServiceProvider.run_reactor)
    sleep, received, killed = source.index("time.sleep(self._run_loop_delay)"), source.index("self._is_transport_event()"), source.index("self._kill_thread")
    assert sleep < received and sleep < killed  # nothing read between the sleep and the next loop's checks
    assert "self._idle_timer.restart()" in source and "to_provider_queue" in inspect.getsource(DULServiceProvider.__init__)
    from pynetdicom.association import Association

    # The line sends with the acceptor's Maximum Length Received and the association's DIMSE timeout.
    assert "acceptor.maximum_length" in inspect.getsource(DIMSEServiceProvider.maximum_pdu_size.fget)  # type: ignore[attr-defined]
    assert "dimse_timeout" in inspect.getsource(Association)


def test_the_identifier_encoder_is_ours_and_the_reactor_has_its_loop_delay() -> None:
    assert service_class.encode is dicom.responses._encode
    assert callable(DIMSEServiceProvider.send_msg) and hasattr(DIMSEServiceProvider, "maximum_pdu_size")
    assert "_run_loop_delay" in DULServiceProvider.__init__.__code__.co_names


def test_each_pending_response_arrives_as_one_pdu_with_its_command_and_identifier(node: Node) -> None:
    pdus: list[Any] = []
    ae = scu()
    assoc = ae.associate(*node.address, ae_title="ISYNC_TEST", evt_handlers=[(evt.EVT_PDU_RECV, lambda event: pdus.append(event.pdu))])
    try:
        responses = list(assoc.send_c_find(identifier("STUDY", StudyInstanceUID="", PatientName=""), FIND["STUDY"]))
    finally:
        assoc.release()
    pending = [ds for status, ds in responses if status is not None and status.Status == 0xFF00]
    data = [p for p in pdus if isinstance(p, P_DATA_TF)]
    assert len(pending) >= 5
    paired = [p for p in data if [item.presentation_data_value[0] & 0x01 for item in p.presentation_data_value_items] == [1, 0]]
    assert len(paired) == len(pending)  # the final Success response (command only) is the one other P-DATA-TF
    assert len(data) == len(pending) + 1


def test_negotiation_only_reads_the_shared_supported_contexts(node: Node) -> None:
    """dicom.server shares the server's supported contexts with every association instead of deep-copying them."""
    server = node.server._server
    assert server is not None
    before = [(cx.abstract_syntax, list(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.context_id) for cx in server.contexts]
    for _ in range(2):
        assoc = scu().associate(*node.address, ae_title="ISYNC_TEST")
        assert assoc.is_established
        assoc.release()
    assert [(cx.abstract_syntax, list(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.context_id) for cx in server.contexts] == before


def test_associations_give_back_every_descriptor_they_took(node: Node) -> None:
    """dicom.reactors gives each association a wake-up pipe: closed with the connection, whatever the ending."""
    import os

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_descriptors()
    for ending in ("release", "abort") * 5:
        assoc = scu().associate(*node.address, ae_title="ISYNC_TEST")
        assert assoc.is_established
        list(assoc.send_c_find(identifier("STUDY", StudyInstanceUID="", PatientName=""), FIND["STUDY"]))
        assoc.release() if ending == "release" else assoc.abort()
    eventually(lambda: open_descriptors() <= before, timeout=10, what="descriptors given back")
