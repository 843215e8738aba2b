"""A CDS client for integrators, tests and demos: what an EHR does around a CDS Hooks call.

- :func:`seed`: load example patients into a FHIR server (one transaction of ``PUT Type/id`` per file).
- :func:`fill_prefetch`: run a service's prefetch templates against the FHIR server, as an EHR does
  (tokens filled by :func:`cds_service.reading.prefetch.fill_template`; a key whose query fails is left out,
  like the CDS Hooks Sandbox does).
- :func:`build_request` / :func:`draft_order` / :class:`Preset`: a CDS Hooks 2.0.1 request.
- :class:`HttpService` / :class:`InProcessService`: discovery and the service call, over HTTP or
  through the Flask test client.
- :func:`fhir_server_command`: the command that starts the project's Node FHIR server.

No click here: :mod:`cds_service.integrator_cli` is the command line. Errors meant for the user
are :class:`ClientError`.

Split by job: :mod:`.fhir` (FHIR server access), :mod:`.seeding`, :mod:`.ehr` (prefetch, draft
orders, the request), :mod:`.service` (the CDS service), :mod:`.node_server` and :mod:`.common`.
Everything is importable from here, as before.
"""

from __future__ import annotations

from .common import (
    DEFAULT_USER,
    EXAMPLES_DIR,
    FHIR_JSON,
    FHIR_SERVER_DIR,
    HOOKS,
    NODE_ENV,
    RXNORM,
    SCOPES,
    TIME_EXTENSION,
    WEIGHT,
    ClientError,
)
from .ehr import (
    Prefetch,
    Preset,
    build_request,
    draft_order,
    fhir_authorization,
    fill_prefetch,
    find_preset,
    format_time,
    latest_weight,
    load_presets,
    parse_time,
    preset_dose,
)
from .fhir import Fhir
from .node_server import (
    CACHE_ENV,
    MEDPLUM_PACKAGES,
    SERVER_FILES,
    cache_dir,
    fhir_server_command,
    fhir_server_folder,
    node_command,
    run_fhir_server,
)
from .seeding import SeedReport, example_files, resources_in, seed, transaction
from .service import (
    CdsService,
    HttpService,
    InProcessService,
    JwtSigner,
    Reply,
    check_reply,
    discover,
    service_urls,
)

__all__ = [
    "CACHE_ENV",
    "CdsService",
    "ClientError",
    "DEFAULT_USER",
    "EXAMPLES_DIR",
    "FHIR_JSON",
    "FHIR_SERVER_DIR",
    "Fhir",
    "HOOKS",
    "HttpService",
    "InProcessService",
    "JwtSigner",
    "MEDPLUM_PACKAGES",
    "NODE_ENV",
    "Prefetch",
    "Preset",
    "RXNORM",
    "Reply",
    "SCOPES",
    "SERVER_FILES",
    "SeedReport",
    "TIME_EXTENSION",
    "WEIGHT",
    "build_request",
    "cache_dir",
    "check_reply",
    "discover",
    "draft_order",
    "example_files",
    "fhir_authorization",
    "fhir_server_command",
    "fhir_server_folder",
    "fill_prefetch",
    "find_preset",
    "format_time",
    "latest_weight",
    "load_presets",
    "node_command",
    "parse_time",
    "preset_dose",
    "resources_in",
    "run_fhir_server",
    "seed",
    "service_urls",
    "transaction",
]
