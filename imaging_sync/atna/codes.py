"""The coded values of the DICOM audit messages: PS3.16 CID 400-405 (scheme ``DCM``), IHE and RFC 3881 codes.

A code is written as ``csd-code``, ``codeSystemName`` and ``originalText``
(PS3.15 A.5.1.1, ``CodedValueType``; ``originalText`` is the DICOM Code
Meaning and is required by the schema).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """One coded value: code, coding scheme, meaning."""

    code: str
    scheme: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# EventID, PS3.16 CID 400 "Audit Event ID"
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
BEGIN_TRANSFERRING = _dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")

# EventTypeCode, PS3.16 CID 401 (Security Alert) and CID 403 (User Authentication)
LOGIN = _dcm("110122", "Login")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")

# RoleIDCode, PS3.16 CID 402 "Audit Active Participant Role ID"
APPLICATION = _dcm("110150", "Application")
DESTINATION = _dcm("110152", "Destination Role ID")
SOURCE = _dcm("110153", "Source Role ID")

# ParticipantObjectIDTypeCode: RFC 3881 (PS3.15 A.5.2.5) and PS3.16 CID 404
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")

# EventOutcomeIndicator (PS3.15 A.5.1.1)
SUCCESS = "0"
MINOR_FAILURE = "4"
SERIOUS_FAILURE = "8"

# NetworkAccessPointTypeCode
MACHINE_NAME = "1"
IP_ADDRESS = "2"

# ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole (PS3.15 A.5.1.2.2)
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_QUERY = "1", "3", "24"

# AuditSourceTypeCode: application server process (PS3.15 A.5.1.2.1)
APPLICATION_SERVER = "4"

# Query/Retrieve information models (PS3.4 C.6) by the name the DICOM node records (dicom.handlers)
FIND_SOP_CLASSES = {
    "PATIENT": "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root Query/Retrieve Information Model - FIND
    "STUDY": "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Query/Retrieve Information Model - FIND
}
