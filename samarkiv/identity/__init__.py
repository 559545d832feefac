"""Identity: organisations and the master patient index (one patient, one archive).

- national.py: Swedish, Norwegian and Danish national identity numbers and
  their issuer OIDs; the identifiers a DICOM dataset carries.
- organisations.py: organisations, their AE titles and Issuer of Patient ID;
  which organisation a calling AE belongs to; the config file's organisations.
- patients.py: persons, patient identifiers, automatic links by national
  number, manual link/unlink/merge/unmerge, all kept in a history.
- cli.py: ``samarkiv org`` and ``samarkiv patients``.
"""

from .national import DatasetIdentifier, Issuer, NationalKind, NationalNumber, identifiers_in_dataset
from .organisations import Organisation, organisation_for_aet, sync_from_settings
from .patients import Identifier, ResolvedIdentity, resolve_dataset, resolve_identity

__all__ = [
    "DatasetIdentifier",
    "Identifier",
    "Issuer",
    "NationalKind",
    "NationalNumber",
    "Organisation",
    "ResolvedIdentity",
    "identifiers_in_dataset",
    "organisation_for_aet",
    "resolve_dataset",
    "resolve_identity",
    "sync_from_settings",
]
