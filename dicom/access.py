"""Who may associate, from where, to do what, and how many at once: the node's access policy, deny by default.

Decided once, here, from ``[dicom.peers]`` and the association limits:

- **at association** (:meth:`AccessPolicy.admit`, called for each A-ASSOCIATE-RQ
  before anything is negotiated): a calling AE title that is not listed, or a
  listed one from an address outside its ``addresses``, is rejected as *calling
  AE title not recognised* (PS3.8 9.3.4, Table 9-21: result rejected-permanent,
  source DICOM UL service-user, reason 3): to a probing peer both look the same.
  A peer over its own association limit, or any peer over the node's, is
  rejected *local limit exceeded* (rejected-transient, source DICOM UL
  service-provider presentation related, reason 2): it may try again later.
- **per request** (:meth:`AccessPolicy.may`): a listed AE asking an operation
  it was not granted gets ``0124`` *Refused: Not Authorized* (PS3.7 C.5.x, a
  status every DIMSE service may return). The request is refused, not the
  presentation context at association: a refused context would show the peer
  only *abstract syntax not supported*, which reads like a missing feature of
  the node, and we would never see what it wanted; refused per request, the
  peer learns why and the audit row names the identifier it sent (which
  patient someone without C-GET tried to pull). Nothing is disclosed either way.

AE titles are compared without padding and ignoring case
(:func:`imaging_sync.config.ae_title_key`); addresses as IP addresses, an
IPv4-mapped IPv6 peer as its IPv4 address.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imaging_sync.config import DicomConfig, DicomOperation, DicomPeer, ae_title_key

# A-ASSOCIATE-RJ (PS3.8 Table 9-21): (result, source, reason).
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER, SOURCE_PROVIDER_PRESENTATION = 0x01, 0x03
REASON_CALLING_AE_NOT_RECOGNISED = 0x03
REASON_LOCAL_LIMIT_EXCEEDED = 0x02

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Refusal:
    """Why an association is rejected: the A-ASSOCIATE-RJ fields and a reason code for the audit row and the log."""

    reason: str  # calling_ae_not_listed | address_not_allowed | peer_association_limit | association_limit | admission_failed
    result: int
    source: int
    diagnostic: int

    @property
    def detail(self) -> dict[str, Any]:
        return {"reason": self.reason, "result": self.result, "source": self.source, "diagnostic": self.diagnostic}


NOT_LISTED = Refusal("calling_ae_not_listed", REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNISED)
WRONG_ADDRESS = Refusal("address_not_allowed", REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNISED)
PEER_LIMIT = Refusal("peer_association_limit", REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED)
TOTAL_LIMIT = Refusal("association_limit", REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED)
# The decision itself failed (a bug): rejected-transient, service-user, no reason given.
ADMISSION_FAILED = Refusal("admission_failed", REJECTED_TRANSIENT, SOURCE_SERVICE_USER, 0x01)
# The peer is not one we know (its calling AE title, or that title from this address): it proved no identity,
# so the rejection is counted per address and minute (imaging_sync.audit_refusals), not an audit entry each.
UNAUTHENTICATED = frozenset({NOT_LISTED, WRONG_ADDRESS})


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address as an IP address (an IPv4-mapped IPv6 one as IPv4), or None if it is not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class _Grant:
    operations: frozenset[str]
    networks: tuple[IpNetwork, ...]  # empty: any address

    @classmethod
    def of(cls, peer: DicomPeer) -> _Grant:
        return cls(frozenset(peer.operations), tuple(ipaddress.ip_network(a.strip(), strict=False) for a in peer.addresses))

    def allows_address(self, address: str) -> bool:
        if not self.networks:
            return True
        ip = ip_of(address)
        return ip is not None and any(ip.version == net.version and ip in net for net in self.networks)


class AccessPolicy:
    """The node's access decisions; one per process (dicom.server.build_services), shared by every association.

    :meth:`admit` counts the associations it admitted that are still open, per
    calling AE and in total; the count and the admission are one step under a
    lock, so concurrent requests cannot overshoot a limit.
    """

    def __init__(self, config: DicomConfig) -> None:
        self._grants = {ae_title_key(title): _Grant.of(peer) for title, peer in config.peers.items()}
        self._max_total = config.max_associations
        self._max_per_peer = config.max_associations_per_peer
        self._lock = threading.Lock()
        # id(association) -> (association, AE key): admitted and not yet ended. The association itself is kept,
        # so its id cannot be reused while the entry lives; one whose thread has ended is dropped at the next count.
        self._open: dict[int, tuple[Any, str]] = {}

    @property
    def listed(self) -> int:
        return len(self._grants)

    def admit(self, association: object, calling_ae: str, address: str) -> Refusal | None:
        """None: admitted (counted until :meth:`ended`); else why the association is rejected."""
        key = ae_title_key(calling_ae)
        grant = self._grants.get(key)
        if grant is None:
            return NOT_LISTED
        if not grant.allows_address(address):
            return WRONG_ADDRESS
        with self._lock:
            self._forget_finished()
            if len(self._open) >= self._max_total:
                return TOTAL_LIMIT
            if sum(1 for _, k in self._open.values() if k == key) >= self._max_per_peer:
                return PEER_LIMIT
            self._open[id(association)] = (association, key)
        return None

    def _forget_finished(self) -> None:
        """Drop associations whose thread has ended without an end event reaching :meth:`ended`."""
        for ident, (assoc, _) in list(self._open.items()):
            is_alive = getattr(assoc, "is_alive", None)
            if is_alive is not None and not is_alive():
                del self._open[ident]

    def ended(self, association: object) -> None:
        """An admitted association is over (released, aborted, or its connection closed); idempotent."""
        with self._lock:
            self._open.pop(id(association), None)

    def open_associations(self) -> int:
        with self._lock:
            self._forget_finished()
            return len(self._open)

    def may(self, calling_ae: str, operation: DicomOperation) -> bool:
        """Whether this calling AE was granted ``operation`` (echo, find, move, get)."""
        grant = self._grants.get(ae_title_key(calling_ae))
        return grant is not None and operation in grant.operations

    def operations(self, calling_ae: str) -> Iterable[str]:
        grant = self._grants.get(ae_title_key(calling_ae))
        return sorted(grant.operations) if grant else []
