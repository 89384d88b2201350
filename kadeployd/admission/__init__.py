"""Admission: whether a request may have the nodes it names, decided in one place.

The NodeSupervisor admits every deployment and reboot operation (and checks the nodes of
power commands) with these rules, in its own thread, from its own record of which running
deployment holds which node; the HTTP layer only turns a request into a call and an
:class:`AdmissionRefused` into a response.

- :func:`admit_deployment`, :func:`admit_nodes`: the decisions (:mod:`.decide`);
- :class:`NodeHolds`: which running deployment holds each node (:mod:`.holds`);
- :func:`check_force`: force over another user's running deployment takes an administrator
  (:mod:`.owners`);
- :func:`block_device_problem`, :func:`rights_key`: the disk a request writes to (:mod:`.disks`);
- :class:`AdmissionRefused`, :class:`Refusal`: the refusal and its kinds (:mod:`.refusal`).
"""

from kadeployd.admission.decide import (
    AdmissionReads,
    admit_deployment,
    admit_nodes,
    check_free,
    known_nodes,
)
from kadeployd.admission.disks import block_device_problem, check_block_device, rights_key
from kadeployd.admission.holds import Hold, NodeHolds
from kadeployd.admission.owners import check_force
from kadeployd.admission.refusal import AdmissionRefused, Refusal

__all__ = [
    "AdmissionReads",
    "AdmissionRefused",
    "Hold",
    "NodeHolds",
    "Refusal",
    "admit_deployment",
    "admit_nodes",
    "block_device_problem",
    "check_block_device",
    "check_force",
    "check_free",
    "known_nodes",
    "rights_key",
]
