"""Settings: one dataclass, filled from defaults, ``KETAMINE_CDS_*`` environment variables and flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .bundled import rules_dir as bundled_rules_dir


@dataclass(frozen=True)
class Settings:
    rules_dir: Path = field(default_factory=bundled_rules_dir)
    site_config: Path | None = None  # defaults to rules_dir / "site.yaml"
    database: str = "var/feedback.sqlite3"  # a SQLite path or a postgresql:// URL (cds_service.storage)
    auto_migrate: bool = True
    trusted_issuers: Path | None = None
    insecure_no_auth: bool = False
    public_base_url: str | None = None
    allow_time_override: bool = False
    fhir_connect_timeout: float = 1.0
    fhir_read_timeout: float | None = None  # None: a FHIR read may wait what is left of fhir_deadline
    fhir_deadline: float = 3.0
    fhir_max_pages: int = 50  # per call, all keys together (as the two below)
    fhir_max_bytes: int = 20_000_000
    fhir_max_resources: int = 20_000
    fhir_allow_http: bool = False  # plain-http fhirServer in JWT mode: development only
    fhir_allow_loopback: bool = False  # fhirServer on 127.0.0.0/8, ::1 (tests, --dev)
    fhir_error_detail: bool = False  # 412 bodies carry the network detail (development only)
    max_body_bytes: int = 16_000_000
    cors_origins: str = "*"
    hot_reload: bool = True
    log_level: str = "INFO"
    log_salt: str | None = None  # patient-id hash salt; generated and kept next to the database if unset

    @property
    def site_config_path(self) -> Path:
        return self.site_config or self.rules_dir / "site.yaml"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``KETAMINE_CDS_<FIELD>`` variables, then explicit non-None overrides."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"KETAMINE_CDS_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


#: Settings that default to None but are numbers when set.
OPTIONAL_FLOATS = frozenset({"fhir_read_timeout"})


def _coerce(name: str, raw: str) -> Any:
    default = getattr(Settings(), name)
    if name in ("rules_dir", "site_config", "trusted_issuers"):
        return Path(raw)
    if name in OPTIONAL_FLOATS:
        return float(raw)
    if isinstance(default, bool):
        if raw.lower() not in _BOOL:
            raise ValueError(f"KETAMINE_CDS_{name.upper()}: expected true/false, got {raw!r}")
        return _BOOL[raw.lower()]
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw
