"""The CDS service, over HTTP or in process: discovery, the signed call, the reply checked."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import yaml

from .common import ClientError


# -- the CDS service --------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    body: Any  # parsed JSON, or None


class CdsService(Protocol):
    """Discovery and calls, addressed relative to the discovery URL."""

    where: str

    def discover(self) -> Reply: ...

    def call(self, service_id: str, body: dict[str, Any]) -> Reply: ...


class JwtSigner:
    """Signs CDS Hooks 2.0.1 client JWTs (ES384 for P-384 keys, ES256 for P-256, RS384 for RSA)."""

    def __init__(self, private_key_pem: bytes, iss: str, kid: str, jku: str | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ClientError(f"cannot read the JWT signing key: {exc}") from exc
        if isinstance(key, rsa.RSAPrivateKey):
            self.alg = "RS384"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp384r1", "secp256r1"):
            self.alg = "ES384" if key.curve.name == "secp384r1" else "ES256"
        else:
            raise ClientError("the JWT signing key must be RSA, EC P-384 or EC P-256")
        self.key, self.iss, self.kid, self.jku = key, iss, kid, jku

    def token(self, audience: str) -> str:
        import jwt

        now = int(time.time())
        headers = {"kid": self.kid, "typ": "JWT", **({"jku": self.jku} if self.jku else {})}
        claims = {"iss": self.iss, "aud": audience, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers)


def service_urls(url: str) -> tuple[str, str | None]:
    """(discovery URL, service id or None) from a base URL, a discovery URL or a service URL."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"--service must be an http(s) URL, got {url!r}")
    segments = parts.path.split("/")
    if segments[-1] == "cds-services":
        return url, None
    if len(segments) >= 2 and segments[-2] == "cds-services":
        return url.rsplit("/", 1)[0], segments[-1]
    return url + "/cds-services", None


class HttpService:
    """A CDS service over HTTP(S) (``requests``), optionally with a signed JWT on every call."""

    def __init__(self, discovery_url: str, *, signer: JwtSigner | None = None, timeout: float = 30.0) -> None:
        self.where = discovery_url.rstrip("/")
        self.signer = signer
        self.timeout = timeout

    def _headers(self, url: str) -> dict[str, str]:
        out = {"Accept": "application/json"}
        if self.signer:
            out["Authorization"] = f"Bearer {self.signer.token(url)}"
        return out

    def _send(self, method: str, url: str, body: dict[str, Any] | None = None) -> Reply:
        headers = self._headers(url)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        try:
            resp = requests.request(method, url, data=data, headers=headers, timeout=self.timeout)
        except requests.Timeout as exc:
            raise ClientError(f"CDS service timed out after {self.timeout:g} s at {url}") from exc
        except requests.RequestException as exc:
            raise ClientError(f"CDS service unreachable at {url} ({type(exc).__name__})") from exc
        try:
            parsed = resp.json() if resp.content else None
        except ValueError:
            parsed = None
        return Reply(resp.status_code, parsed)

    def discover(self) -> Reply:
        return self._send("GET", self.where)

    def call(self, service_id: str, body: dict[str, Any]) -> Reply:
        return self._send("POST", f"{self.where}/{service_id}", body)


class InProcessService:
    """The service built in this process (``create_app``, no authentication, time override on),
    called through the Flask test client; feedback is kept in memory. The app is built on first use."""

    def __init__(
        self,
        *,
        rules_dir: Path | None = None,
        site_config: Path | None = None,
        jurisdiction: str | None = None,
        fhir_deadline: float | None = None,
    ) -> None:
        from ..config import Settings

        self.where = "in-process"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._app: Any = None
        self.settings = Settings.from_env(
            rules_dir=rules_dir,
            site_config=site_config,
            insecure_no_auth=True,
            allow_time_override=True,
            hot_reload=False,
            fhir_deadline=fhir_deadline,
            # a local tool on the developer's own machine: its FHIR server is often localhost,
            # and the integrator wants the network detail of a failed fetch
            fhir_allow_loopback=True,
            fhir_error_detail=True,
            log_level="ERROR",  # no per-call log lines or the no-auth warning on the console
        )
        if jurisdiction:
            self.settings = self._with_jurisdiction(self.settings, jurisdiction)

    @property
    def app(self) -> Any:
        if self._app is None:
            from ..app import create_app
            from ..storage import SQLiteFeedbackStore

            try:
                self._app = create_app(self.settings, store=SQLiteFeedbackStore(":memory:"))
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - invalid rules: shown as they are
                raise ClientError(f"the service cannot start: {exc}") from exc
        return self._app

    @staticmethod
    def templates(hook: str) -> tuple[str, dict[str, str]]:
        """(service id, prefetch templates) for ``hook`` from ``services.py``, without building the app."""
        from ..services import PREFETCH, SERVICES

        ids = sorted((s.id for s in SERVICES.values() if s.hook == hook), key=lambda i: i != hook)
        if not ids:
            raise ClientError(f"this service has no CDS service for hook {hook!r}")
        return ids[0], dict(PREFETCH)

    def _with_jurisdiction(self, settings: Any, jurisdiction: str) -> Any:
        from dataclasses import replace

        path = settings.site_config_path
        try:
            site = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ClientError(f"cannot read the site configuration {path}: {exc}") from exc
        site["jurisdiction"] = jurisdiction.upper()
        self._tmp = tempfile.TemporaryDirectory(prefix="ketamine-cds-site-")
        copy = Path(self._tmp.name) / "site.yaml"
        copy.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
        return replace(settings, site_config=copy)

    def discover(self) -> Reply:
        resp = self.app.test_client().get("/cds-services")
        return Reply(resp.status_code, resp.get_json(silent=True))

    def call(self, service_id: str, body: dict[str, Any]) -> Reply:
        resp = self.app.test_client().post(f"/cds-services/{service_id}", json=body)
        return Reply(resp.status_code, resp.get_json(silent=True))

    def close(self) -> None:
        if self._app is not None:
            self._app.extensions["ketamine_cds"].store.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _error_text(reply: Reply) -> str:
    body = reply.body if isinstance(reply.body, dict) else {}
    text = str(body.get("error") or "")
    if body.get("field"):
        text += f" (field {body['field']})"
    return text


def check_reply(reply: Reply, where: str) -> dict[str, Any]:
    """The JSON body of a 200, or a :class:`ClientError` that says what went wrong."""
    if reply.status == 200 and isinstance(reply.body, dict):
        return reply.body
    if reply.status == 401:
        raise ClientError(
            f"the CDS service at {where} refused the call (401): it wants a CDS Hooks JWT from an issuer "
            "it trusts. Pass --jwt-key/--jwt-iss/--jwt-kid (see docs/integrators.md), or for local tests "
            "run the service with `ketamine-cds serve --dev`."
        )
    if reply.status == 412:
        body = reply.body if isinstance(reply.body, dict) else {}
        missing = ", ".join(body.get("missing") or [])
        raise ClientError(
            f"412 Precondition Failed: the service could not get the FHIR data it needs: {_error_text(reply)}"
            + (f" [missing: {missing}]" if missing else "")
        )
    if reply.status == 200:
        raise ClientError(f"the CDS service at {where} answered 200 without a JSON object")
    detail = _error_text(reply)
    raise ClientError(
        f"the CDS service at {where} answered {reply.status}" + (f": {detail}" if detail else "")
    )


def discover(service: CdsService, hook: str, service_id: str | None = None) -> tuple[str, dict[str, str]]:
    """(service id, prefetch templates) of the service for ``hook`` from discovery."""
    body = check_reply(service.discover(), service.where)
    services = [s for s in body.get("services") or [] if isinstance(s, dict)]
    if service_id is not None:
        chosen = [s for s in services if s.get("id") == service_id]
        if chosen and chosen[0].get("hook") != hook:
            raise ClientError(f"service {service_id!r} is for hook {chosen[0].get('hook')!r}, not {hook!r}")
    else:
        chosen = sorted((s for s in services if s.get("hook") == hook), key=lambda s: s.get("id") != hook)
    if not chosen:
        offered = ", ".join(f"{s.get('id')} ({s.get('hook')})" for s in services) or "none"
        wanted = f"service {service_id!r}" if service_id else f"a service for hook {hook!r}"
        raise ClientError(f"discovery at {service.where} lists no {wanted}; it offers: {offered}")
    prefetch = chosen[0].get("prefetch") or {}
    return str(chosen[0]["id"]), {str(k): str(v) for k, v in prefetch.items()}
