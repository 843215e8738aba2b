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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import yaml

from . import bundled
from .compact import order_context
from .reading.prefetch import fill_template

EXAMPLES_DIR = bundled.examples_dir()
FHIR_SERVER_DIR = bundled.fhir_server_dir()
NODE_ENV = "KETAMINE_CDS_NODE"
HOOKS = ("patient-view", "order-select", "order-sign")
DEFAULT_USER = "Practitioner/example"
TIME_EXTENSION = "ketamine-cds.evaluation-time"
FHIR_JSON = "application/fhir+json"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
WEIGHT = "http://loinc.org|29463-7"
#: SMART scopes the service's prefetch templates need (sent in ``fhirAuthorization.scope``).
SCOPES = " ".join(
    f"patient/{t}.read"
    for t in (
        "Patient",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationDispense",
        "MedicationAdministration",
        "Observation",
        "Procedure",
        "AllergyIntolerance",
        "Medication",
    )
)


class ClientError(Exception):
    """A failure to show to the user as it is (no traceback)."""


# -- FHIR server access -----------------------------------------------------------------------------
@dataclass
class Fhir:
    """A FHIR R4 server as the CDS client (the EHR) sees it: a base URL and an optional bearer token."""

    base_url: str
    token: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not re.match(r"^https?://", self.base_url):
            raise ClientError(f"FHIR server URL must start with http:// or https://, got {self.base_url!r}")

    def headers(self, content_type: bool = False) -> dict[str, str]:
        out = {"Accept": f"{FHIR_JSON}, application/json"}
        if content_type:
            out["Content-Type"] = FHIR_JSON
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def get(self, query: str) -> dict[str, Any]:
        """GET ``{base}/{query}``; :class:`ClientError` on any failure."""
        url = f"{self.base_url}/{query.lstrip('/')}"
        try:
            resp = requests.get(url, headers=self.headers(), timeout=self.timeout)
        except requests.RequestException as exc:
            raise ClientError(self._unreachable(exc)) from exc
        return self._json(resp, f"GET {query.split('?')[0]}")

    def post_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a batch/transaction Bundle to the base URL."""
        try:
            resp = requests.post(
                self.base_url, data=json.dumps(bundle), headers=self.headers(True), timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ClientError(self._unreachable(exc)) from exc
        return self._json(resp, "transaction")

    def _unreachable(self, exc: requests.RequestException) -> str:
        kind = "timed out" if isinstance(exc, requests.Timeout) else "unreachable"
        return f"FHIR server {kind} at {self.base_url} ({type(exc).__name__})"

    def _json(self, resp: requests.Response, what: str) -> dict[str, Any]:
        if resp.status_code in (401, 403):
            hint = "check --token" if self.token else "it wants a bearer token: pass --token"
            raise ClientError(
                f"FHIR server refused access ({resp.status_code}) for {what}{_outcome_text(resp)}; {hint}"
            )
        if resp.status_code >= 300:
            raise ClientError(f"FHIR server answered {resp.status_code} for {what}{_outcome_text(resp)}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise ClientError(f"FHIR server sent a non-JSON body for {what}") from exc
        if not isinstance(data, dict):
            raise ClientError(f"FHIR server sent JSON that is not a resource for {what}")
        return data


def _outcome_text(resp: requests.Response) -> str:
    """`: diagnostics` of an OperationOutcome body, or a short body excerpt."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return f": {text[:200]}" if text else ""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [
            i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
            for i in body.get("issue") or []
            if isinstance(i, dict)
        ]
        return ": " + "; ".join(t for t in texts if t) if any(texts) else ""
    return ""


# -- seeding ----------------------------------------------------------------------------------------
def example_files(paths: Iterable[Path | str] = ()) -> list[Path]:
    """JSON files named, or found in the directories named (default: the bundled fhir_examples/)."""
    paths = [Path(p) for p in paths] or [EXAMPLES_DIR]
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(p.glob("*.json"))
        elif p.is_file():
            out.append(p)
        else:
            raise ClientError(f"{p}: no such file or directory")
    if not out:
        raise ClientError(f"no JSON files in {', '.join(map(str, paths))}")
    return out


def resources_in(document: Any, where: str = "file") -> list[dict[str, Any]]:
    """The resources a file contributes: a CDS Hooks request's prefetch (not its draft orders),
    a Bundle's entries, or a single resource."""
    if not isinstance(document, dict):
        raise ClientError(f"{where}: expected a JSON object")
    if "hook" in document and "context" in document:
        found: list[dict[str, Any]] = []
        for value in (document.get("prefetch") or {}).values():
            if isinstance(value, dict):
                found += resources_in(value, where)
        return found
    if document.get("resourceType") == "Bundle":
        return [e["resource"] for e in document.get("entry") or [] if isinstance(e.get("resource"), dict)]
    if document.get("resourceType") == "OperationOutcome":
        return []
    if document.get("resourceType") and document.get("id"):
        return [document]
    raise ClientError(f"{where}: neither a CDS Hooks request, a Bundle nor a resource with an id")


@dataclass
class SeedReport:
    """What :func:`seed` loaded: per file the patient ids and resource count, totals per type."""

    files: list[tuple[str, list[str], int]] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)

    @property
    def resources(self) -> int:
        return sum(self.types.values())

    @property
    def patients(self) -> list[str]:
        return sorted({p for _, ids, _ in self.files for p in ids})


def transaction(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle of ``PUT Type/id`` entries (ids are kept; references stay literal)."""
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for r in resources:
        if not r.get("resourceType") or not r.get("id"):
            raise ClientError(f"every resource needs resourceType and id: {json.dumps(r)[:200]}")
        unique[(r["resourceType"], r["id"])] = dict(r)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{t}/{i}"}} for (t, i), r in unique.items()
        ],
    }


def seed(fhir: Fhir, files: Iterable[Path]) -> SeedReport:
    """Load every file's resources into ``fhir``; :class:`ClientError` names the first failure."""
    report = SeedReport()
    for path in files:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ClientError(f"{path}: {exc}") from exc
        bundle = transaction(resources_in(document, str(path)))
        if not bundle["entry"]:
            report.files.append((path.name, [], 0))
            continue
        result = fhir.post_bundle(bundle)
        failed = [
            (e["request"]["url"], (r.get("response") or {}).get("status"))
            for e, r in zip(bundle["entry"], result.get("entry") or [], strict=False)
            if not str((r.get("response") or {}).get("status", "")).startswith("2")
        ]
        if failed or len(result.get("entry") or []) != len(bundle["entry"]):
            raise ClientError(f"{path.name}: the FHIR server did not store every resource: {failed[:5]}")
        loaded = [e["resource"] for e in bundle["entry"]]
        report.types.update(r["resourceType"] for r in loaded)
        patients = [r["id"] for r in loaded if r["resourceType"] == "Patient"]
        report.files.append((path.name, patients, len(loaded)))
    return report


# -- prefetch, as an EHR fills it -------------------------------------------------------------------
@dataclass
class Prefetch:
    """Filled prefetch keys, and the keys left out with the reason."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)


def fill_prefetch(fhir: Fhir, templates: Mapping[str, str], context: Mapping[str, Any]) -> Prefetch:
    """Run each template against the FHIR server. A template with a token the context cannot fill,
    or a query that fails (or answers an OperationOutcome), is omitted, as the CDS Hooks Sandbox
    does; an empty search result is sent as the (empty) searchset Bundle the server returned."""
    out = Prefetch()
    queries: dict[str, str] = {}
    for key, template in templates.items():
        query = fill_template(template, dict(context))
        if query is None:
            out.omitted[key] = "a token could not be filled from the context"
        else:
            queries[key] = query

    def run(query: str) -> dict[str, Any] | str:
        try:
            value = fhir.get(query)
        except ClientError as exc:
            return str(exc)
        if value.get("resourceType") == "OperationOutcome":
            return "the FHIR server answered an OperationOutcome"
        return value

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="prefetch") as pool:
        results = dict(zip(queries, pool.map(run, queries.values()), strict=True))
    for key in templates:
        value = results.get(key)
        if isinstance(value, dict):
            out.values[key] = value
        elif isinstance(value, str):
            out.omitted[key] = value
    return out


# -- draft orders and presets -----------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named draft order (see ``cds_service/presets.yaml``)."""

    name: str
    label: str
    code: str
    description: str = ""
    text: str | None = None
    dose: str | None = None
    dose_mg_per_kg: float | None = None
    route: str | None = None
    infusion_minutes: float | None = None
    frequency: str | None = None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_presets(path: Path | None = None) -> dict[str, Preset]:
    """The presets by name (from ``path`` or the package's ``presets.yaml``)."""
    try:
        text = (
            path.read_text(encoding="utf-8")
            if path
            else resources.files("cds_service").joinpath("presets.yaml").read_text(encoding="utf-8")
        )
    except OSError as exc:
        raise ClientError(f"cannot read the presets ({exc}); is presets.yaml in the package data?") from exc
    data = yaml.safe_load(text) or {}
    out: dict[str, Preset] = {}
    for entry in data.get("presets") or []:
        preset = Preset(**{**entry, "code": str(entry["code"])})
        out[preset.name] = preset
    return out


def find_preset(name: str, presets: Mapping[str, Preset] | None = None) -> Preset:
    """A preset by name or label, ignoring case, spaces and punctuation."""
    presets = presets if presets is not None else load_presets()
    for p in presets.values():
        if _norm(name) in (_norm(p.name), _norm(p.label)):
            return p
    names = ", ".join(f"{p.name} ({p.label})" for p in presets.values())
    raise ClientError(f"no preset {name!r}; presets: {names}")


def latest_weight(fhir: Fhir, patient_id: str, at: datetime | None = None) -> tuple[float, str] | None:
    """The newest body weight (LOINC 29463-7) in kg, not after ``at``, with its date; None if none."""
    query = f"Observation?patient={patient_id}&code={WEIGHT}&_sort=-date&_count=1"
    if at is not None:
        query += f"&date=le{format_time(at)}"
    for entry in fhir.get(query).get("entry") or []:
        obs = entry.get("resource") or {}
        q = obs.get("valueQuantity") or {}
        value, unit = q.get("value"), str(q.get("code") or q.get("unit") or "").strip()
        if not isinstance(value, int | float):
            continue
        factor = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237}.get(unit)
        if factor is None:
            continue
        when = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or "?"
        return float(value) * factor, str(when)
    return None


def preset_dose(preset: Preset, weight: tuple[float, str] | None) -> tuple[str | None, str | None]:
    """(dose, how it was computed) for a preset; (None, None) when it needs a weight that is missing."""
    if preset.dose_mg_per_kg is None:
        return preset.dose, None
    if weight is None:
        return None, None
    kg, when = weight
    mg = round(preset.dose_mg_per_kg * kg * 2) / 2  # to 0.5 mg, as a pump or syringe is set
    dose = f"{mg:g} mg"
    return dose, f"{dose} = {preset.dose_mg_per_kg:g} mg/kg × {kg:g} kg (weight of {when})"


def draft_order(
    patient_id: str,
    code: str,
    *,
    text: str | None = None,
    dose: str | None = None,
    route: str | None = None,
    infusion_minutes: float | None = None,
    frequency: str | None = "once",
    authored_on: datetime | None = None,
    user_id: str = DEFAULT_USER,
    order_id: str | None = None,
) -> dict[str, Any]:
    """A draft MedicationRequest for an RxNorm product code, shaped like the examples' orders."""
    from .compact import CaseError, concept, dosage

    if not re.match(r"^\d{1,10}$", code):
        raise ClientError(f"--order must be an RxNorm code (digits), got {code!r}")
    entry: dict[str, Any] = {"dose": dose, "route": route, "frequency": frequency}
    if infusion_minutes is not None:
        entry["infusion_minutes"] = infusion_minutes
    try:
        med = concept(f"rx:{code}", text, "order")
        instruction = dosage({k: v for k, v in entry.items() if v is not None}, med, "order")
    except CaseError as exc:
        raise ClientError(str(exc).removeprefix("order: ")) from exc
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id or f"draft-{uuid.uuid4().hex[:12]}",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": med,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": format_time(authored_on or datetime.now(UTC)),
        "requester": {"reference": user_id},
    }
    if instruction:
        order["dosageInstruction"] = [{"sequence": 1, **instruction}]
    return order


# -- the request ------------------------------------------------------------------------------------
def parse_time(value: str) -> datetime:
    """An ISO 8601 date-time (``2026-05-04T09:00:00Z``); no zone means UTC."""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ClientError(f"not an ISO date-time: {value!r} (e.g. 2026-05-04T09:00:00Z)") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fhir_authorization(token: str, patient_id: str) -> dict[str, Any]:
    """``fhirAuthorization`` for a bearer token (all five REQUIRED fields, and ``patient``)."""
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": SCOPES,
        "subject": "ketamine-cds",
        "patient": patient_id,
    }


def build_request(
    hook: str,
    patient_id: str,
    *,
    orders: list[dict[str, Any]] | None = None,
    user_id: str = DEFAULT_USER,
    fhir_server: str | None = None,
    token: str | None = None,
    prefetch: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """A CDS Hooks 2.0.1 request: a fresh hookInstance, the hook's context, prefetch when given."""
    if hook not in HOOKS:
        raise ClientError(f"hook must be one of {', '.join(HOOKS)}, got {hook!r}")
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if hook != "patient-view":
        if not orders:
            raise ClientError(f"{hook} needs a draft order: pass --order CODE or --preset NAME")
        context.update(order_context(hook, orders))
    request: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4())}
    if fhir_server:
        request["fhirServer"] = fhir_server
        if token:
            request["fhirAuthorization"] = fhir_authorization(token, patient_id)
    request["context"] = context
    if prefetch:
        request["prefetch"] = dict(prefetch)
    if at is not None:
        request["extension"] = {TIME_EXTENSION: format_time(at)}
    return request


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
        from .config import Settings

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
            from .app import create_app
            from .storage import SQLiteFeedbackStore

            try:
                self._app = create_app(self.settings, store=SQLiteFeedbackStore(":memory:"))
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - invalid rules: shown as they are
                raise ClientError(f"the service cannot start: {exc}") from exc
        return self._app

    @staticmethod
    def templates(hook: str) -> tuple[str, dict[str, str]]:
        """(service id, prefetch templates) for ``hook`` from ``services.py``, without building the app."""
        from .services import PREFETCH, SERVICES

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


# -- the Node FHIR server ---------------------------------------------------------------------------
def node_command(node: str | None = None) -> list[str]:
    """The node executable, with ``--experimental-websocket`` on Node < 22 (``@medplum/core`` needs it)."""
    executable = node or os.environ.get(NODE_ENV) or shutil.which("node")
    if not executable:
        raise ClientError(f"node is not on PATH: install Node 20+ (or set {NODE_ENV})")
    try:
        version = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClientError(f"cannot run {executable} --version: {exc}") from exc
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < 20:
        raise ClientError(f"node {version or '?'} at {executable}: the FHIR server needs Node 20+")
    return [executable, "--experimental-websocket"] if int(match.group(1)) < 22 else [executable]


#: Where ``fhir-server`` installs the server's npm packages when the bundled folder has none.
CACHE_ENV = "KETAMINE_CDS_CACHE_DIR"
SERVER_FILES = ("package.json", "package-lock.json", "server.mjs")
MEDPLUM_PACKAGES = ("fhir-router", "core", "definitions")


def cache_dir() -> Path:
    """``$KETAMINE_CDS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ketamine-cds``, else ``~/.cache/ketamine-cds``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ketamine-cds"


def _missing_packages(folder: Path) -> list[str]:
    modules = folder / "node_modules" / "@medplum"
    return [f"@medplum/{n}" for n in MEDPLUM_PACKAGES if not (modules / n).is_dir()]


def fhir_server_folder(source: Path | None = None, *, say: Any = None) -> Path:
    """A folder holding ``server.mjs`` and its npm packages, ready to run.

    The bundled folder itself when its ``node_modules`` is installed (a checkout after
    ``npm ci --prefix fhir_server``). Otherwise (an installed wheel, whose site-packages may be
    read-only) a copy in :func:`cache_dir`, one per lockfile, where ``npm ci`` runs once; ``say``
    is told before npm runs.
    """
    source = Path(source or FHIR_SERVER_DIR)
    absent = [n for n in SERVER_FILES if not (source / n).is_file()]
    if absent:
        raise ClientError(f"the FHIR server in {source} is incomplete ({', '.join(absent)} missing)")
    if not _missing_packages(source):
        return source
    lock = (source / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (source / "server.mjs").read_bytes()).hexdigest()[:12]
    target = cache_dir() / f"fhir-server-{digest}"
    if not _missing_packages(target):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ClientError(
            f"the FHIR server's npm packages are not installed in {source}, and npm is not on PATH "
            f"to install them into {target}: install Node 20+ with npm, or run `npm ci --prefix {source}`"
        )
    if say is not None:
        say(f"installing the FHIR server's npm packages into {target} (once): npm ci")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        for name in SERVER_FILES:
            shutil.copyfile(source / name, staging / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise ClientError(f"npm ci in {staging} failed ({done.returncode}): {done.stdout.strip()[-800:]}")
        try:
            staging.rename(target)  # atomic: a half-installed folder is never used
        except OSError:
            if _missing_packages(target):  # not another process winning the race
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def fhir_server_command(
    *,
    port: int = 8090,
    host: str = "127.0.0.1",
    token: str | None = None,
    seeds: Iterable[Path] = (),
    log: bool = False,
    node: str | None = None,
    folder: Path | None = None,
) -> list[str]:
    """The command line that runs ``server.mjs`` from ``folder`` (default :func:`fhir_server_folder`)."""
    folder = folder or fhir_server_folder()
    missing = _missing_packages(folder)
    if missing:
        raise ClientError(
            f"the FHIR server's npm packages are not installed ({', '.join(missing)} missing): "
            f"run `npm ci --prefix {folder}`"
        )
    command = [*node_command(node), str(folder / "server.mjs"), "--port", str(port), "--host", host]
    if token:
        command += ["--token", token]
    seeds = [str(Path(s).resolve()) for s in seeds]
    if seeds:
        command += ["--seed", *seeds]
    if log:
        command.append("--log")
    return command


def run_fhir_server(command: list[str]) -> Iterator[str]:
    """Run the server in the foreground, yielding its stdout lines (``LISTENING <base>`` first);
    stops it when the caller stops iterating (Ctrl-C included)."""
    script = next(Path(a) for a in command if a.endswith("server.mjs"))
    process = subprocess.Popen(command, cwd=script.parent, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield from (line.rstrip("\n") for line in process.stdout)
        if process.wait() != 0:
            raise ClientError(f"the FHIR server stopped with status {process.returncode} (see above)")
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
