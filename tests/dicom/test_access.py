"""Who the node serves, tried from outside: DCMTK and pynetdicom as an unlisted AE, a listed AE from the wrong
address, a listed AE without C-GET, a listed AE with everything. Each is refused or served, and each audited."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_fixtures import NODE_AE, Files, Node, StoreSCP, load_index, run_tool, start_node
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from scu import FIND, GET, MOVE, get_ae, identifier
from sqlalchemy import Engine

from imaging_sync import audit, audit_refusals
from imaging_sync.config import DicomPeer

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_1 = "1.2.826.0.1.1"  # 6 instances in 4 transfer syntaxes
STUDY_2 = "1.2.826.0.1.2"  # 2 instances, Explicit VR Little Endian
UNLISTED = "INTRUDER"
PEERS = {
    "FULL": DicomPeer(operations=["echo", "find", "move", "get"], addresses=["127.0.0.1"]),
    "NO_GET": DicomPeer(operations=["echo", "find", "move"], addresses=["127.0.0.0/8"]),
    "LOCAL_ONLY": DicomPeer(operations=["echo", "find", "move", "get"], addresses=["127.0.0.1"]),
    "ELSEWHERE": DicomPeer(operations=["echo", "find", "move", "get"], addresses=["10.99.0.0/16", "fd00:99::/64"]),
}


@pytest.fixture
def guarded(engine: Engine, files: Files) -> Iterator[Node]:
    """The node with only PEERS listed, on SQLite and PostgreSQL."""
    load_index(engine, files)
    node = start_node(engine, files, peers=PEERS)
    yield node
    node.server.stop()


@pytest.fixture
def destination(dcmtk: Path, guarded: Node, tmp_path: Path) -> Iterator[StoreSCP]:
    import subprocess

    from dicom_fixtures import wait_for_port

    out = tmp_path / "received"
    out.mkdir()
    process = subprocess.Popen([str(dcmtk / "storescp"), "-aet", "STORESCP", "+xa", "-od", str(out), "-q", str(guarded.ports["STORESCP"])])
    wait_for_port(guarded.ports["STORESCP"])
    yield StoreSCP(out, process)
    process.terminate()
    process.wait(timeout=10)


def entries(node: Node, actor: str) -> list[dict[str, Any]]:
    """The audit entries naming this calling AE, oldest first."""
    with node.engine.connect() as conn:
        return list(reversed(audit.search(conn, actor=actor)))


def counted_refusals(node: Node) -> list[dict[str, Any]]:
    """The rows of unauthenticated refusals counted on the DICOM channel (imaging_sync.audit_refusals), newest first."""
    with node.engine.connect() as conn:
        return audit_refusals.search(conn, channel="dicom")


def final_outcome(entry: dict[str, Any]) -> tuple[str, int | None]:
    """(outcome, status) an entry ended with: its own, or its completion's for a two-step (started) entry."""
    done = entry["completion"]
    return (done["outcome"], done["status"]) if done else (entry["outcome"], entry["status"])


def dcmtk_call(dcmtk: Path, node: Node, tool: str, calling: str, *args: str) -> str:
    out = run_tool(dcmtk, tool, "-v", "-aet", calling, "-aec", NODE_AE, *args, "127.0.0.1", str(node.port))
    return out.stdout + out.stderr


STUDY_KEYS = ("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_1}")


def test_an_unlisted_ae_is_rejected_at_association_by_every_dcmtk_tool_and_pynetdicom_and_the_refusals_are_counted(guarded: Node, dcmtk: Path) -> None:
    calls = {
        "echoscu": (),
        "findscu": ("-S", *STUDY_KEYS),
        "movescu": ("-S", "-aem", "STORESCP", *STUDY_KEYS),
        "getscu": ("-S", *STUDY_KEYS),
    }
    for tool, args in calls.items():
        text = dcmtk_call(dcmtk, guarded, tool, UNLISTED, *args)
        assert "Association Rejected" in text, (tool, text)
        if tool != "getscu":  # getscu prints no reason
            assert "Rejected Permanent" in text and "Calling AE Title Not Recognized" in text, (tool, text)
    ae = AE(ae_title=UNLISTED)
    ae.add_requested_context(Verification)
    ae.add_requested_context(FIND["STUDY"])
    assoc = ae.associate(*guarded.address, ae_title=NODE_AE)
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)  # PS3.8 Table 9-21: calling AE title not recognised

    # Unauthenticated: not an audit entry each, but counted in the address's row of the minute (two rows if the minute turned).
    assert entries(guarded, UNLISTED) == []
    rows = counted_refusals(guarded)
    assert 1 <= len(rows) <= 2 and sum(r["count"] for r in rows) == 5
    for row in rows:
        assert (row["channel"], row["client_addr"]) == ("dicom", "127.0.0.1")
        assert set(row["sample"]) == {f"{UNLISTED} -> {NODE_AE} (calling_ae_not_listed)"}


def _bindable(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def test_a_listed_ae_from_an_address_it_is_not_listed_for_is_rejected_like_an_unknown_one(guarded: Node, dcmtk: Path) -> None:
    # DCMTK from 127.0.0.1 as an AE listed only for 10.99.0.0/16 (an address this host does not have).
    text = dcmtk_call(dcmtk, guarded, "findscu", "ELSEWHERE", "-S", *STUDY_KEYS)
    assert "Association Rejected" in text and "Calling AE Title Not Recognized" in text, text
    assert entries(guarded, "ELSEWHERE") == []
    assert any(r["sample"] == [f"ELSEWHERE -> {NODE_AE} (address_not_allowed)"] for r in counted_refusals(guarded))

    # pynetdicom from 127.0.0.2 as an AE listed only for 127.0.0.1; and from 127.0.0.1, accepted.
    if not _bindable("127.0.0.2"):
        pytest.skip("this host cannot bind 127.0.0.2 (the 10.99.0.0/16 case above covered the address check)")
    ae = AE(ae_title="LOCAL_ONLY")
    ae.add_requested_context(Verification)
    refused = ae.associate(*guarded.address, ae_title=NODE_AE, bind_address=("127.0.0.2", 0))
    assert refused.is_rejected
    assert (refused.acceptor.primitive.result, refused.acceptor.primitive.result_source, refused.acceptor.primitive.diagnostic) == (1, 1, 3)
    accepted = ae.associate(*guarded.address, ae_title=NODE_AE, bind_address=("127.0.0.1", 0))
    assert accepted.is_established and accepted.send_c_echo().Status == 0x0000
    accepted.release()
    assert entries(guarded, "LOCAL_ONLY") == []
    [row] = [r for r in counted_refusals(guarded) if r["client_addr"] == "127.0.0.2"]
    assert (row["count"], row["sample"]) == (1, [f"LOCAL_ONLY -> {NODE_AE} (address_not_allowed)"])


def test_a_listed_ae_without_get_is_refused_c_get_not_authorised_and_audited_with_what_it_asked(guarded: Node, dcmtk: Path) -> None:
    text = dcmtk_call(dcmtk, guarded, "getscu", "NO_GET", "-S", *STUDY_KEYS)
    assert "0x124" in text or "Not Authorized" in text, text  # DCMTK has no name for 0124
    ae, roles = get_ae([(CT, ["1.2.840.10008.1.2.1"])], calling_ae="NO_GET")
    ae.add_requested_context(FIND["STUDY"])
    assoc = ae.associate(*guarded.address, ae_title=NODE_AE, ext_neg=roles)
    assert assoc.is_established
    try:
        statuses = [status.Status for status, _ in assoc.send_c_get(identifier("STUDY", StudyInstanceUID=STUDY_1), GET["STUDY"])]
        assert statuses == [0x0124]  # PS3.7 C.5: Refused, Not Authorized; no file sent
        # The same association is still good for what the AE was granted.
        found = [status.Status for status, _ in assoc.send_c_find(identifier("STUDY", StudyInstanceUID=STUDY_1), FIND["STUDY"])]
        assert found[-1] == 0x0000 and found.count(0xFF00) == 1
    finally:
        assoc.release()
    gets = [e for e in entries(guarded, "NO_GET") if e["action"] == "c-get"]
    assert len(gets) == 2
    for entry in gets:
        assert final_outcome(entry) == ("denied", 0x0124)
        assert entry["query"]["StudyInstanceUID"] == STUDY_1  # which study it tried to pull
        assert entry["detail"].get("sub_operations", 0) == 0


def test_a_listed_ae_without_get_may_still_move_to_a_configured_destination(guarded: Node, destination: StoreSCP, dcmtk: Path) -> None:
    text = dcmtk_call(dcmtk, guarded, "movescu", "NO_GET", "-S", "-aem", "STORESCP", *STUDY_KEYS)
    assert "Received Final Move Response (Success)" in text and text.count("(Pending)") == 6, text
    assert len(destination.files()) == 6


def test_a_listed_ae_with_everything_is_served_echo_find_move_and_get(guarded: Node, destination: StoreSCP, dcmtk: Path, tmp_path: Path) -> None:
    assert "Received Echo Response (Success)" in dcmtk_call(dcmtk, guarded, "echoscu", "FULL")
    found = dcmtk_call(dcmtk, guarded, "findscu", "FULL", "-S", *STUDY_KEYS)
    assert "Received Final Find Response (Success)" in found and found.count("Find Response: 1 (Pending)") == 1, found
    moved = dcmtk_call(dcmtk, guarded, "movescu", "FULL", "-S", "-aem", "STORESCP", *STUDY_KEYS)
    assert "Received Final Move Response (Success)" in moved, moved
    got_dir = tmp_path / "got"
    got_dir.mkdir()
    # getscu proposes only the uncompressed syntaxes: the MR study's two files are stored in one of them.
    got = dcmtk_call(dcmtk, guarded, "getscu", "FULL", "-S", "-od", str(got_dir), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_2}")
    assert "Number of Completed Suboperations : 2" in got, got
    assert len(list(got_dir.iterdir())) == 2 and len(destination.files()) == 6

    ae = AE(ae_title="FULL")
    ae.add_requested_context(MOVE["STUDY"])
    assoc = ae.associate(*guarded.address, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        final = [status for status, _ in assoc.send_c_move(identifier("STUDY", StudyInstanceUID=STUDY_1), "STORESCP", MOVE["STUDY"])][-1]
        assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 6
    finally:
        assoc.release()

    served = {e["action"]: final_outcome(e) for e in entries(guarded, "FULL")}
    assert served == {"c-find": ("success", 0x0000), "c-move": ("success", 0x0000), "c-get": ("success", 0x0000)}


def test_an_ae_granted_only_echo_is_refused_each_query_and_retrieve(guarded: Node, dcmtk: Path, files: Files) -> None:
    node = start_node(guarded.engine, files, peers={"ECHO_ONLY": DicomPeer(operations=["echo"])})
    try:
        assert "Received Echo Response (Success)" in dcmtk_call(dcmtk, node, "echoscu", "ECHO_ONLY")
        text = dcmtk_call(dcmtk, node, "findscu", "ECHO_ONLY", "-S", *STUDY_KEYS)
        assert "Received Final Find Response (Unknown Status: 0x124)" in text, text
        assert "Find Response: 1 (Pending)" not in text
    finally:
        node.server.stop()
    [entry] = entries(node, "ECHO_ONLY")
    assert entry["action"] == "c-find" and final_outcome(entry) == ("denied", 0x0124)


def test_a_listed_ae_not_granted_echo_gets_0124(guarded: Node, files: Files) -> None:
    node = start_node(guarded.engine, files, peers={"FIND_ONLY": DicomPeer(operations=["find"])})
    try:
        ae = AE(ae_title="FIND_ONLY")
        ae.add_requested_context(Verification)
        assoc = ae.associate(*node.address, ae_title=NODE_AE)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0124
        assoc.release()
    finally:
        node.server.stop()
    [entry] = entries(node, "FIND_ONLY")
    assert (entry["action"], entry["outcome"], entry["status"]) == ("c-echo", "denied", 0x0124)
