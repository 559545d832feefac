"""``GET /fhir/metadata``: the CapabilityStatement (FHIR R4 capabilitystatement.html, http.html#capabilities)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from ... import __version__
from .errors import FhirRoute, fhir_json
from .search import fhir_base, negotiate

FHIR_VERSION = "4.0.1"
_SP = "http://hl7.org/fhir/SearchParameter/"


def _param(name: str, kind: str, definition: str | None, documentation: str) -> dict[str, Any]:
    param = {"name": name, "type": kind, "documentation": documentation}
    if definition:
        param["definition"] = _SP + definition
    return param


def _resource(kind: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": kind,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{kind}",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "searchParam": params,
    }


def capability_statement(base: str, published: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "samarkiv",
        "kind": "instance",
        "software": {"name": "samarkiv", "version": __version__},
        "implementation": {"description": "samarkiv FHIR R4 read access to patients and imaging studies", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Unsupported search parameters are ignored and reported in an OperationOutcome entry, "
                    "or rejected with 400 when the request has 'Prefer: handling=strict'. "
                    "Paging: _count (at most 200) and _offset."
                ),
                "resource": [
                    _resource(
                        "Patient",
                        [
                            _param("_id", "token", "Resource-id", "The person number of the master patient index."),
                            _param(
                                "identifier", "token", "Patient-identifier",
                                "system|value: urn:oid:<issuer OID> (national numbers, issuers with an OID) "
                                "or urn:samarkiv:issuer:<Issuer of Patient ID>.",
                            ),
                            _param(
                                "name", "string", "Patient-name",
                                "A family or given name starting with the value (case-insensitive); "
                                ":exact and :contains modifiers.",
                            ),
                            _param("family", "string", "individual-family", "The family name (as name)."),
                            _param("given", "string", "individual-given", "A given or middle name (as name)."),
                            _param("birthdate", "date", "individual-birthdate", "Birth date, with prefixes."),
                            _param("gender", "token", "individual-gender", "male, female or other."),
                        ],
                    ),
                    _resource(
                        "ImagingStudy",
                        [
                            _param("_id", "token", "Resource-id", "The Study Instance UID."),
                            _param(
                                "identifier", "token", "ImagingStudy-identifier",
                                "urn:dicom:uid|urn:oid:<Study Instance UID>, or an Accession Number.",
                            ),
                            _param("patient", "reference", "clinical-patient", "Patient/<id>."),
                            _param(
                                "subject", "reference", "ImagingStudy-subject",
                                "Patient/<id>; chained: subject:Patient.identifier=system|value and "
                                "patient.identifier=system|value find the person's studies at every organisation.",
                            ),
                            _param("started", "date", "ImagingStudy-started", "Study Date, to the day."),
                            _param("modality", "token", "ImagingStudy-modality", "A DCM modality code."),
                            _param("series", "token", "ImagingStudy-series", "A Series Instance UID."),
                        ],
                    ),
                ],
            }
        ],
    }  # fmt: skip


def create_router() -> APIRouter:
    router = APIRouter(route_class=FhirRoute)
    published = datetime.now(UTC).isoformat(timespec="seconds")

    @router.get("/metadata", include_in_schema=False)
    def metadata(request: Request) -> Response:
        pretty = negotiate(request, list(request.query_params.multi_items()))
        return fhir_json(capability_statement(fhir_base(request), published), pretty=pretty)

    return router
