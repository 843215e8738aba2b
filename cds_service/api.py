"""The CDS Hooks endpoints: discovery, service calls, feedback, and a health check."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import gc_policy, ids, pipeline
from .config import Settings
from .errors import ApiError, DataUnavailable
from .feedback import FeedbackStore
from .logs import hash_id, log_call
from .request_body import body_bytes
from .ruleset_provider import RuleSetProvider
from .services import SERVICES, prefetch_for
from .storage import StorageUnavailable
from .validation import error_message, field_path, first_error, parse_json, schema_validator, validate_request

log = logging.getLogger(__name__)
bp = Blueprint("cds", __name__)


@dataclass
class State:
    settings: Settings
    rules: RuleSetProvider
    store: FeedbackStore
    authenticator: Any | None  # cds_service.auth.Authenticator; None only with insecure_no_auth


def state() -> State:
    return current_app.extensions["ketamine_cds"]


# -- request plumbing -------------------------------------------------------------------------------
@bp.before_app_request
def _start() -> None:
    # Flask's g and request are werkzeug proxies: each use looks the object up again (~5-10 k
    # instructions), so on a call's path each is looked up once and the object itself used.
    here = g._get_current_object()
    here.started = time.perf_counter()
    # from the environ: a missing header is no werkzeug KeyError raised and caught on every call
    incoming = request.environ.get("HTTP_X_REQUEST_ID", "")
    here.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isascii() else ids.uuid4()


@bp.after_app_request
def _finish(resp: Response) -> Response:
    resp.headers["X-Request-ID"] = g.get("request_id", "")
    return resp


def _authenticate(st: State | None = None) -> None:
    """401 on any failure (CDS Hooks 2.0.1 §Security); OPTIONS never reaches here.

    The expected ``aud`` is the configured public base URL plus the path invoked: never anything
    taken from the request's Host or X-Forwarded-* headers, which the caller controls.
    ``create_app`` refuses to start in JWT mode without a public base URL.
    """
    st = st or state()
    if st.settings.insecure_no_auth:
        return
    from .auth import AuthError

    base = (st.settings.public_base_url or "").rstrip("/")
    try:
        if not base:
            raise AuthError("no public base URL configured")
        g.claims = st.authenticator.verify(request.headers.get("Authorization"), base + request.path)  # type: ignore[union-attr]
    except AuthError as exc:
        log.warning("authentication failed: %s", exc)
        raise ApiError(401, "authentication required: a valid CDS Hooks JWT (see the service log)") from exc


def _fhir_origins(here: Any = g) -> tuple[str, ...] | None:
    """FHIR servers the calling issuer is allowlisted for (None: no allowlist for it)."""
    claims = here.get("claims")
    return getattr(claims, "fhir_origins", None)


CONTENT_ENCODING_UNSUPPORTED = "Content-Encoding is not supported: send the body uncompressed (identity)"


def _json_body() -> Any:
    request_ = request._get_current_object()  # type: ignore[attr-defined]
    # the header as most clients write it needs no parsing (werkzeug's mimetype: ~10 k instructions)
    plain = request_.environ.get("CONTENT_TYPE") == "application/json"
    mimetype = "application/json" if plain else (request_.mimetype or "")
    if not (
        mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))
    ):
        raise ApiError(415, "Content-Type must be application/json", "Content-Type")
    coding = request_.environ.get("HTTP_CONTENT_ENCODING")
    if coding and coding.strip().lower() != "identity":
        # a compressed body is not read (it would only fail as "malformed JSON"): said as such
        raise ApiError(415, CONTENT_ENCODING_UNSUPPORTED, "Content-Encoding")
    return parse_json(body_bytes(request_))


# -- errors -----------------------------------------------------------------------------------------
@bp.app_errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response | str, int]:
    if request.path.startswith("/cds-services"):
        # every call gets its log line; the field name only, never the value
        log_call(
            path=request.path,
            status=exc.status,
            field=exc.field,
            request_id=g.get("request_id"),
            duration_ms=_elapsed(),
        )
    if exc.status == 401:
        # RFC 6750 §3: say which scheme is expected; the reason stays in the log only
        resp = jsonify({"status": 401, "error": "authentication required"})
        error = ', error="invalid_token"' if request.headers.get("Authorization") else ""
        resp.headers["WWW-Authenticate"] = f'Bearer realm="ketamine-cds"{error}'
        return resp, 401
    resp = jsonify(exc.body())
    if exc.field == "Content-Encoding":
        resp.headers["Accept-Encoding"] = "identity"  # RFC 9110 §15.5.16: the codings accepted
    return resp, exc.status


@bp.app_errorhandler(DataUnavailable)
def _unavailable(exc: DataUnavailable) -> tuple[Response, int]:
    return jsonify({"status": 412, "error": exc.message, "missing": exc.missing}), 412


@bp.app_errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
    limit = state().settings.max_body_bytes
    return jsonify(
        {"status": 413, "error": f"request body larger than {limit} bytes", "field": "(body)"}
    ), 413


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[Response, int]:
    return jsonify({"status": exc.code, "error": exc.description}), exc.code or 500


@bp.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("unexpected error (request %s)", g.get("request_id"))
    return jsonify({"status": 500, "error": "internal error", "request_id": g.get("request_id")}), 500


# -- endpoints --------------------------------------------------------------------------------------
@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    st = state()
    rs = st.rules.get()
    body: dict[str, Any] = {
        "status": "ok",
        "rules": len(rs.rules),
        "rules_version": rs.version,
        "fingerprint": rs.fingerprint,  # SHA-256 of the rule files' content (see engine/loader.py)
    }
    if st.rules.last_errors:
        body["rejected_rule_change"] = len(st.rules.last_errors)
    status = 200
    db = getattr(st.store, "db", None)  # the store's database (a store given by a test may have none)
    if db is not None:
        body["storage"] = {"backend": db.backend, "reachable": True}
        try:
            db.ping()
        except StorageUnavailable as exc:  # names the backend and error class, never the URL's secrets
            log.error("health check: storage unreachable: %s", exc)
            body["storage"]["reachable"] = False
            # Without it, authenticated calls are refused (the jti replay cache lives there): take
            # this instance out. Without authentication, cards are still served, feedback is not stored.
            if st.authenticator is not None:
                body["status"], status = "unavailable", 503
            else:
                body["status"] = "degraded"
    return jsonify(body), status


@bp.get("/cds-services")
def discovery() -> Response:
    _authenticate()
    templates = prefetch_for(state().rules.get().observation_kinds)  # with the site's own codes
    return jsonify({"services": [s.discovery(templates) for s in SERVICES.values()]})


@bp.post("/cds-services/<service_id>")
@gc_policy.without_collection  # what a call builds is acyclic: no collection while it runs
def call(service_id: str) -> Response:
    st = state()
    service = SERVICES.get(service_id)
    if service is None:
        raise ApiError(404, "no such CDS service (see GET /cds-services)", "service")
    _authenticate(st)
    here = g._get_current_object()  # looked up once (see _start)
    request_id = here.request_id
    body = validate_request(_json_body(), service)
    ruleset = st.rules.get()
    fields: dict[str, Any] = {
        "service": service_id,
        "hookInstance": body["hookInstance"],
        "request_id": request_id,
        "patient": hash_id(body["context"].get("patientId")),
    }
    try:
        outcome = pipeline.run(
            body, ruleset, st.settings, request_id=request_id, fhir_origins=_fhir_origins(here)
        )
    except DataUnavailable as exc:
        log_call(**fields, status=412, missing=exc.missing, duration_ms=_elapsed(here))
        raise
    cards = outcome.response["cards"]
    try:
        st.store.record_shown(
            service_id,
            body["hookInstance"],
            [(c["uuid"], c["source"]["topic"]["code"], c["indicator"]) for c in cards],
        )
    except StorageUnavailable as exc:  # the cards matter more than their statistics
        log.error("shown cards not recorded (request %s): %s", request_id, exc)
    log_call(
        **fields,
        status=200,
        duration_ms=_elapsed(here),
        rules_fired=[o.rule.id for o in outcome.evaluation.fired],
        cards=len(cards),
        fhir_fetches=outcome.prefetch.stats.requests,
        prefetch={k: v for k, v in outcome.prefetch.origin.items() if v != "prefetched"},
        resources=outcome.evaluation.facts.record.size,
        skipped_resources=len(outcome.evaluation.facts.record.problems),
        ignored_elements=outcome.evaluation.facts.record.ignored_counts(),
        rules_version=ruleset.version,
    )
    return jsonify(outcome.response)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    st = state()
    if service_id not in SERVICES:
        raise ApiError(404, "no such CDS service (see GET /cds-services)", "service")
    _authenticate()
    body = _json_body()
    error = first_error(schema_validator("feedback"), body)
    if error is not None:
        raise ApiError(400, error_message(error), field_path(error))
    try:
        stored = st.store.add_feedback(service_id, body["feedback"])
    except StorageUnavailable as exc:
        log.error("feedback not stored (request %s): %s", g.request_id, exc)
        raise ApiError(503, "feedback store unavailable: nothing was stored, retry later") from None
    log_call(
        service=service_id, event="feedback", request_id=g.request_id, stored=stored, duration_ms=_elapsed()
    )
    return jsonify({"stored": stored})


def _elapsed(here: Any = g) -> float:
    started = here.get("started")
    return round((time.perf_counter() - started) * 1000, 2) if started else 0.0
