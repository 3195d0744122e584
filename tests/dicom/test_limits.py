"""Limits a hostile peer cannot exceed: request size and values, associations per AE and in total, idle and
empty-identifier timeouts, PDU length. Each refusal gets its DICOM answer and an audit row."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from dicom_fixtures import CT, NODE_AE, Files, Node, load_index, start_node
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_FIND_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification
from scu import FIND, GET, MOVE, get_ae, identifier
from sqlalchemy import Engine

from devtools.waiting import eventually
from imaging_sync import audit, audit_refusals
from imaging_sync.config import DicomPeer

EVERYTHING = ["echo", "find", "move", "get"]


def peers(*titles: str) -> dict[str, DicomPeer]:
    return {title: DicomPeer(operations=EVERYTHING, addresses=["127.0.0.1"]) for title in titles}


@pytest.fixture
def limited(sqlite_engine: Engine, files: Files) -> Iterator[Node]:
    """A node with small limits, so a test reaches them with a few associations and a few kilobytes."""
    load_index(sqlite_engine, files)
    node = start_node(
        sqlite_engine, files, peers=peers("FULL", "OTHER", "THIRD"), max_identifier_bytes=4096, max_values_per_key=3,
        max_associations=2, max_associations_per_peer=1, idle_timeout_seconds=1.0,
    )
    yield node
    node.server.stop()


def refusals(node: Node, actor: str | None = None) -> list[dict[str, Any]]:
    with node.engine.connect() as conn:
        return [e for e in reversed(audit.search(conn, actor=actor)) if e["outcome"] == "denied" or (e["completion"] or {}).get("outcome") == "denied"]


def associate(node: Node, calling: str, *contexts: str) -> Any:
    ae = AE(ae_title=calling)
    for cx in contexts or (Verification, FIND["STUDY"]):
        ae.add_requested_context(cx)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate(*node.address, ae_title=NODE_AE)


def big_identifier(size: int) -> Dataset:
    ds = identifier("STUDY", StudyInstanceUID="")
    ds.add_new(0x00091010, "OB", b"x" * size)  # private: never matched, only carried
    return ds


def test_an_identifier_over_the_size_limit_is_refused_out_of_resources_and_the_association_goes_on(limited: Node) -> None:
    assoc = associate(limited, "FULL", FIND["STUDY"])
    assert assoc.is_established
    try:
        [(status, _)] = list(assoc.send_c_find(big_identifier(64 * 1024), FIND["STUDY"]))
        assert status.Status == 0xA700  # PS3.4 C.4.1.1.4: Refused, out of resources
        results = [s.Status for s, _ in assoc.send_c_find(identifier("STUDY", StudyInstanceUID="1.2.826.0.1.2"), FIND["STUDY"])]
        assert results == [0xFF00, 0x0000]
    finally:
        assoc.release()
    [row] = refusals(limited, "FULL")
    assert row["action"] == "c-find" and row["status"] == 0xA700 and row["query"]["identifier"] == "not decoded"


def test_a_c_get_identifier_over_the_size_limit_is_refused_a701(limited: Node) -> None:
    ae, roles = get_ae([(CT, ["1.2.840.10008.1.2.1"])], calling_ae="FULL")
    assoc = ae.associate(*limited.address, ae_title=NODE_AE, ext_neg=roles)
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(big_identifier(64 * 1024), GET["STUDY"])]
    finally:
        assoc.release()
    assert statuses == [0xA701]  # PS3.4 C.4.3.1.4: Refused, out of resources (unable to calculate matches)


def test_a_key_with_more_values_than_allowed_is_refused_naming_the_key(limited: Node) -> None:
    uids = ["1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3", "1.2.826.0.1.4"]
    assoc = associate(limited, "FULL", FIND["STUDY"], MOVE["STUDY"])
    try:
        [(found, _)] = list(assoc.send_c_find(identifier("STUDY", StudyInstanceUID=uids), FIND["STUDY"]))
        assert found.Status == 0xA700 and found.OffendingElement == 0x0020000D
        three = [s.Status for s, _ in assoc.send_c_find(identifier("STUDY", StudyInstanceUID=uids[:3]), FIND["STUDY"])]
        assert three == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    finally:
        assoc.release()
    [row] = refusals(limited, "FULL")
    assert (row["action"], row["status"]) == ("c-find", 0xA700)


def test_one_calling_ae_cannot_hold_more_associations_than_its_share_and_others_still_get_in(limited: Node) -> None:
    first = associate(limited, "FULL")
    assert first.is_established
    second = associate(limited, "FULL")
    assert second.is_rejected
    rj = second.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, provider (presentation), local limit exceeded
    other = associate(limited, "OTHER")
    assert other.is_established  # the node's own limit (2) is not reached
    third = associate(limited, "THIRD")
    assert third.is_rejected and third.acceptor.primitive.result == 0x02  # now it is
    for assoc in (first, other):
        assoc.release()
    eventually(lambda: limited.server.services.access.open_associations() == 0, what="the released associations no longer counted")
    again = associate(limited, "FULL")
    assert again.is_established
    again.release()
    reasons = [(r["actor"], r["action"], r["detail"]["reason"]) for r in refusals(limited)]
    assert reasons == [("FULL", "associate", "peer_association_limit"), ("THIRD", "associate", "association_limit")]


def test_an_association_that_sends_no_request_is_aborted_after_the_idle_timeout(limited: Node) -> None:
    idle = associate(limited, "FULL")
    assert idle.is_established
    eventually(lambda: idle.is_aborted, what="the idle association aborted by the node")
    [row] = eventually(lambda: refusals(limited, "FULL"), what="the abort's audit entry")  # written as the node aborts: may trail the A-ABORT
    assert (row["action"], row["detail"]["reason"]) == ("association", "idle_timeout")
    assert limited.server.services.access.open_associations() == 0


def test_a_request_whose_identifier_never_comes_is_aborted_after_the_idle_timeout(limited: Node) -> None:
    """The C-FIND command says a data set follows; none does. Nothing is answered, the association ends."""
    assoc = associate(limited, "FULL", FIND["STUDY"])
    assert assoc.is_established
    request = C_FIND()
    request.MessageID, request.AffectedSOPClassUID, request.Priority = 7, FIND["STUDY"], 2
    request.Identifier = BytesIO(encode(identifier("STUDY", StudyInstanceUID=""), True, True))  # the context's implicit VR LE
    message = C_FIND_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id
    command_only = [p for p in message.encode_msg(context_id, 16382) if p.presentation_data_value_list[0][1][0] & 0x01]
    for primitive in command_only:
        assoc.dul.send_pdu(primitive)
    eventually(lambda: assoc.is_aborted, what="the association aborted by the node")
    [row] = eventually(lambda: refusals(limited, "FULL"), what="the abort's audit entry")
    assert row["detail"]["reason"] == "idle_timeout"


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_pdu_longer_than_announced_is_not_read_the_peer_is_aborted(limited: Node) -> None:
    # Before any association: an A-ASSOCIATE-RQ claiming 10 MB.
    with socket.create_connection(limited.address, timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 10_000_000) + b"\x00" * 64)
        abort = _read_exactly(sock, 10)
        assert abort == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])  # A-ABORT: service-provider, invalid PDU parameter value
        assert sock.recv(1) == b""  # and closed
    # Inside one: a P-DATA-TF longer than dicom.max_pdu_bytes.
    assoc = associate(limited, "OTHER")
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, limited.config.max_pdu_bytes + 100_000))
    eventually(lambda: assoc.is_aborted, what="the association aborted by the node")
    rows = [(r["actor"], r["action"], r["detail"]["reason"]) for r in refusals(limited)]
    assert rows == [("OTHER", "association", "pdu_too_long")]
    # Before any association nobody is identified: counted per address and minute, not an entry (imaging_sync.audit_refusals).
    with limited.engine.connect() as conn:
        [counted] = audit_refusals.search(conn, channel="dicom")
    assert (counted["client_addr"], counted["count"], counted["sample"]) == ("127.0.0.1", 1, ["- -> - (pdu_too_long)"])


def test_the_pynetdicom_internals_the_limits_rely_on_are_still_there() -> None:
    """dicom.limits and dicom.handlers use these pynetdicom attributes that are not its documented API:
    if an upgrade moves one, this fails before a limit silently stops working."""
    ae = AE()
    assoc = Association(ae, "acceptor")
    assert callable(assoc.dul._idle_timer.restart) and callable(assoc.dul.idle_timer_expired)
    assert hasattr(assoc.dul, "event_queue") and hasattr(assoc.dul, "to_provider_queue")
    assert isinstance(assoc.dimse, DIMSEServiceProvider) and assoc.dimse.message is None
    message = DIMSEMessage()
    assert isinstance(message.encoded_command_set, BytesIO) and isinstance(message.data_set, BytesIO) and isinstance(message.command_set, Dataset)
    assert callable(assoc.acse.send_reject)
