"""Seeding a FHIR server with example patients (one transaction of ``PUT Type/id`` per file)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import EXAMPLES_DIR, ClientError
from .fhir import Fhir


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
