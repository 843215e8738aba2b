"""The application factory: builds a configured Flask app; nothing happens at import time."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from . import cors, gc_policy
from .api import State, bp
from .config import Settings
from .feedback import FeedbackStore
from .json_provider import OrjsonProvider
from .logs import configure, init_salt, salt_file
from .ruleset_provider import RuleSetProvider
from .storage import SchemaError, Storage, StorageUnavailable, open_storage
from .web import web

log = logging.getLogger(__name__)


def _open_storage(settings: Settings) -> Storage:
    try:
        storage = open_storage(settings.database, migrate=settings.auto_migrate)
    except (SchemaError, StorageUnavailable) as exc:
        raise SystemExit(f"database: {exc}") from None
    db = storage.database
    log.info("storage: %s, schema version %d", db.describe(), max(db.applied_versions(), default=0))
    db.release()  # gunicorn forks after this: workers open their own connections
    return storage


def check_public_base_url(url: str | None) -> None:
    """JWT mode needs the URL clients call: the expected ``aud`` is built from it, never from the
    request's (client-controlled) Host or X-Forwarded-* headers."""
    if not url:
        raise SystemExit(
            "JWT mode needs the URL clients call, for the token audience: pass --public-base-url "
            "(KETAMINE_CDS_PUBLIC_BASE_URL), e.g. https://cds.example.org"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SystemExit(f"--public-base-url must be an http(s) URL without query or fragment, got {url!r}")


def create_app(
    settings: Settings | None = None,
    *,
    store: FeedbackStore | None = None,
    authenticator: Any | None = None,
) -> Flask:
    """Build the service. Refuses to start on an invalid rule set or without authentication
    configured (unless ``insecure_no_auth`` is set explicitly)."""
    settings = settings or Settings.from_env()
    configure(settings.log_level)
    init_salt(settings.log_salt, salt_file(settings.database))
    # first: an invalid rule set stops here, and every log line from now on names the rule set
    rules = RuleSetProvider(settings.rules_dir, settings.site_config_path, hot_reload=settings.hot_reload)
    storage: Storage | None = None
    if store is None:
        storage = _open_storage(settings)
        store = storage.feedback
    if authenticator is None and not settings.insecure_no_auth:
        if settings.trusted_issuers is None:
            raise SystemExit(
                "no trusted issuers configured: pass --trusted-issuers FILE (see docs/security.md) "
                "or, for local development only, --insecure-no-auth"
            )
        from .auth import Authenticator

        # The replay cache lives in the shared database: every worker, and with PostgreSQL every
        # instance, sees every jti (docs/deployment.md).
        storage = storage or _open_storage(settings)
        authenticator = Authenticator.from_file(settings.trusted_issuers, jti_cache=storage.jti_cache)
        if not authenticator.issuers:
            raise SystemExit(f"{settings.trusted_issuers}: no trusted issuers listed")
    if not settings.insecure_no_auth:
        check_public_base_url(settings.public_base_url)
    if settings.insecure_no_auth:
        log.warning("AUTHENTICATION DISABLED (--insecure-no-auth): any caller can use this service")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = OrjsonProvider(app)  # compact, insertion order (cds_service/json_provider.py)
    cors.install(  # flask_cors; its answer to Origin-less calls (an EHR's server) kept
        app,
        origins=settings.cors_origins,
        methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
        max_age=600,
    )
    app.extensions["ketamine_cds"] = State(settings, rules, store, authenticator)
    # Everything built so far (1,800 FHIR model classes, the compiled rules) lives for the life of
    # the process: out of the collector's way (cds_service/gc_policy.py).
    gc_policy.settle()
    app.register_blueprint(bp)
    app.register_blueprint(web)
    return app
