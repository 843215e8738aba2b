"""``ketamine-cds seed | call | fhir-server``: act as the EHR around the service (see docs/integrators.md).

The logic lives in :mod:`cds_service.client`; this module only parses options and prints.
:mod:`cds_service.cli` adds these commands to its group, so nothing here imports it at load time.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import client
from .client import ClientError

FHIR_OPTION = click.option(
    "--fhir",
    "fhir_url",
    required=True,
    envvar="KETAMINE_CDS_CLIENT_FHIR",
    help="Base URL of the FHIR R4 server, e.g. http://127.0.0.1:8090/fhir",
)
TOKEN_OPTION = click.option(
    "--token",
    envvar="KETAMINE_CDS_CLIENT_FHIR_TOKEN",
    help="Bearer token for the FHIR server (also sent to the service as fhirAuthorization).",
)
ROUTES = ("iv", "nasal", "sc", "im", "oral", "transdermal")


def _fail(exc: ClientError) -> click.ClickException:
    return click.ClickException(str(exc))


# -- seed -------------------------------------------------------------------------------------------
@click.command()
@FHIR_OPTION
@TOKEN_OPTION
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
def seed(fhir_url: str, token: str | None, files: tuple[Path, ...]) -> None:
    """Load example patients into a FHIR server.

    FILES are CDS Hooks requests (their prefetch resources are loaded, not their draft orders),
    Bundles or single resources, or directories of them (default: fhir_examples/). Each file is
    one transaction of PUT Type/id entries, so ids and references stay as written.
    """
    try:
        fhir = client.Fhir(fhir_url, token)
        report = client.seed(fhir, client.example_files(files))
    except ClientError as exc:
        raise _fail(exc) from exc
    for name, patients, count in report.files:
        click.echo(f"{name}: {count} resources" + (f" (Patient {', '.join(patients)})" if patients else ""))
    types = ", ".join(f"{t} {n}" for t, n in sorted(report.types.items()))
    n = len(report.patients)
    click.echo(
        f"Seeded {n} patient{'s' * (n != 1)}, {report.resources} resources into {fhir.base_url}"
        + (f": {types}" if types else "")
    )


# -- call -------------------------------------------------------------------------------------------
@click.command()
@FHIR_OPTION
@TOKEN_OPTION
@click.option(
    "--patient", "patient_id", required=True, help="Patient id on the FHIR server (context.patientId)."
)
@click.option("--hook", required=True, type=click.Choice(client.HOOKS), help="The hook to call.")
@click.option("--order", "order_code", metavar="RXNORM", help="Draft order: an RxNorm product code.")
@click.option(
    "--preset", metavar="NAME", help="Draft order from cds_service/presets.yaml, e.g. esketamine-56mg."
)
@click.option("--dose", help='Dose of the draft order, e.g. "40 mg" (overrides a preset\'s).')
@click.option("--route", type=click.Choice(ROUTES), help="Route of an --order (presets carry their own).")
@click.option("--minutes", type=float, help="Infusion minutes of an --order.")
@click.option("--frequency", default=None, help="Frequency of an --order: once (default), daily, 2/wk …")
@click.option("--text", help="medicationCodeableConcept.text of an --order.")
@click.option(
    "--service",
    "service_url",
    metavar="URL",
    help="The service's discovery URL (http://host:8411/cds-services), its base URL or a service URL.",
)
@click.option("--in-process", is_flag=True, help="Call the service built in this process (the default).")
@click.option("--no-prefetch", is_flag=True, help="Send no prefetch: the service fetches from --fhir.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw CDS Hooks response.")
@click.option("--dry-run", is_flag=True, help="Print the request that would be sent, and stop.")
@click.option("--jurisdiction", help="In-process only: override the site's jurisdiction (US, CA, UK, NO).")
@click.option(
    "--at", "at_text", metavar="ISO_DATETIME", help="Evaluation time (ketamine-cds.evaluation-time)."
)
@click.option("--user", "user_id", default=client.DEFAULT_USER, show_default=True, help="context.userId.")
@click.option(
    "--jwt-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PEM private key."
)
@click.option("--jwt-iss", help="JWT issuer (iss) the service trusts.")
@click.option("--jwt-kid", help="JWT key id (kid) of --jwt-key.")
@click.option("--jwt-jku", help="Optional jku header (the issuer's JWKS URL).")
@click.option(
    "--rules",
    "rules_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="In-process: rules directory.",
)
def call(
    fhir_url: str,
    token: str | None,
    patient_id: str,
    hook: str,
    order_code: str | None,
    preset: str | None,
    dose: str | None,
    route: str | None,
    minutes: float | None,
    frequency: str | None,
    text: str | None,
    service_url: str | None,
    in_process: bool,
    no_prefetch: bool,
    as_json: bool,
    dry_run: bool,
    jurisdiction: str | None,
    at_text: str | None,
    user_id: str,
    jwt_key: Path | None,
    jwt_iss: str | None,
    jwt_kid: str | None,
    jwt_jku: str | None,
    rules_dir: Path | None,
) -> None:
    """Act as a CDS client: build a CDS Hooks 2.0.1 request, prefetch from the FHIR server with the
    service's own templates, call the service and print its cards.

    \b
    ketamine-cds call --fhir http://127.0.0.1:8090/fhir --patient v01 --hook order-sign \\
        --preset esketamine-56mg --at 2026-05-04T09:00:00Z
    """
    if service_url and in_process:
        raise click.UsageError("--service and --in-process exclude each other")
    if jurisdiction and service_url:
        raise click.UsageError(
            "--jurisdiction works only in-process: a running service uses its own site.yaml"
        )
    if rules_dir and service_url:
        raise click.UsageError("--rules works only in-process")
    jwt_parts = (jwt_key, jwt_iss, jwt_kid)
    if any(jwt_parts) and not all(jwt_parts):
        raise click.UsageError("--jwt-key, --jwt-iss and --jwt-kid go together")
    if jwt_key and not service_url:
        raise click.UsageError(
            "--jwt-* options need --service (the in-process service has no authentication)"
        )
    if hook == "patient-view" and (order_code or preset):
        raise click.UsageError("patient-view takes no draft order (--order/--preset)")
    if order_code and preset:
        raise click.UsageError("--order and --preset exclude each other")
    if preset and (route or minutes or frequency or text):
        raise click.UsageError("--route, --minutes, --frequency and --text apply to --order, not to a preset")
    service: Any = None
    try:
        fhir = client.Fhir(fhir_url, token)
        at = client.parse_time(at_text) if at_text else None
        orders: list[dict[str, Any]] = []
        if hook != "patient-view":
            order = _order(
                fhir, patient_id, at, user_id, order_code, preset, dose, route, minutes, frequency, text
            )
            orders.append(order)
        if service_url:
            discovery_url, wanted_id = client.service_urls(service_url)
            signer = None
            if jwt_key and jwt_iss and jwt_kid:
                signer = client.JwtSigner(jwt_key.read_bytes(), jwt_iss, jwt_kid, jwt_jku)
            service = client.HttpService(discovery_url, signer=signer)
            service_id, templates = client.discover(service, hook, wanted_id)
        else:
            service = client.InProcessService(rules_dir=rules_dir, jurisdiction=jurisdiction)
            service_id, templates = service.templates(hook)
        prefetch = None
        if not no_prefetch:
            filled = client.fill_prefetch(fhir, templates, {"userId": user_id, "patientId": patient_id})
            prefetch = filled.values
            click.echo(
                f"prefetch: {len(filled.values)} of {len(templates)} keys filled from {fhir.base_url}",
                err=True,
            )
            for key, reason in filled.omitted.items():
                click.echo(f"  omitted {key}: {reason}", err=True)
        request = client.build_request(
            hook,
            patient_id,
            orders=orders,
            user_id=user_id,
            fhir_server=fhir.base_url,
            token=token,
            prefetch=prefetch,
            at=at,
        )
        if dry_run:
            click.echo(json.dumps(request, indent=2))
            return
        response = client.check_reply(service.call(service_id, request), f"{service.where}/{service_id}")
    except ClientError as exc:
        raise _fail(exc) from exc
    finally:
        if isinstance(service, client.InProcessService):
            service.close()
    if as_json:
        click.echo(json.dumps(response, indent=2))
        return
    from .cli import render_cards_text

    click.echo(render_cards_text(response.get("cards") or []))


def _order(
    fhir: client.Fhir,
    patient_id: str,
    at: datetime | None,
    user_id: str,
    order_code: str | None,
    preset_name: str | None,
    dose: str | None,
    route: str | None,
    minutes: float | None,
    frequency: str | None,
    text: str | None,
) -> dict[str, Any]:
    """The draft MedicationRequest from --order or --preset (a weight-based dose reads the weight)."""
    if order_code:
        return client.draft_order(
            patient_id,
            order_code,
            text=text,
            dose=dose,
            route=route,
            infusion_minutes=minutes,
            frequency=frequency or "once",
            authored_on=at,
            user_id=user_id,
        )
    if not preset_name:
        raise ClientError("an order hook needs a draft order: pass --order RXNORM or --preset NAME")
    p = client.find_preset(preset_name)
    if dose is None and p.dose_mg_per_kg is not None:
        try:
            weight = client.latest_weight(fhir, patient_id, at)
        except ClientError as exc:
            raise ClientError(f"cannot read the patient's weight ({exc}): pass --dose") from exc
        dose, how = client.preset_dose(p, weight)
        if dose is None:
            raise ClientError(
                f"patient {patient_id} has no body weight (LOINC 29463-7) on the FHIR server to compute "
                f'{p.dose_mg_per_kg:g} mg/kg: pass --dose, e.g. --dose "40 mg"'
            )
        click.echo(f"dose: {how}", err=True)
    return client.draft_order(
        patient_id,
        p.code,
        text=p.text,
        dose=dose or p.dose,
        route=p.route,
        infusion_minutes=p.infusion_minutes,
        frequency=p.frequency or "once",
        authored_on=at,
        user_id=user_id,
    )


# -- fhir-server ------------------------------------------------------------------------------------
@click.command("fhir-server")
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--token", help="Require Authorization: Bearer TOKEN (except /metadata and OPTIONS).")
@click.option("--seed", "do_seed", is_flag=True, help="Load fhir_examples/ (or FILES) at start.")
@click.option("--log", is_flag=True, help="Log every request on stderr.")
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
def fhir_server(
    port: int, host: str, token: str | None, do_seed: bool, log: bool, files: tuple[Path, ...]
) -> None:
    """Run the in-memory FHIR R4 server (Medplum's engine, fhir_server/) in the foreground for demos.

    FILES (implies --seed) are loaded instead of fhir_examples/. Needs Node 20+ with npm: the
    server's npm packages are installed once into ~/.cache/ketamine-cds (or $KETAMINE_CDS_CACHE_DIR)
    unless the bundled fhir_server/ has its own (a checkout after `npm ci --prefix fhir_server`).
    Ctrl-C stops it; nothing is kept.
    """
    seeds = list(files) or ([client.EXAMPLES_DIR] if do_seed else [])
    previous = signal.signal(signal.SIGTERM, _interrupt)  # so that `kill` stops the node child too
    try:
        folder = client.fhir_server_folder(say=lambda msg: click.echo(msg, err=True))
        command = client.fhir_server_command(
            port=port, host=host, token=token, seeds=seeds, log=log, folder=folder
        )
        for line in client.run_fhir_server(command):
            click.echo(line)
            if line.startswith("LISTENING "):
                base = line.split(" ", 1)[1]
                click.echo(f"FHIR R4 server at {base} (Ctrl-C stops it)", err=True)
                if seeds:
                    auth = f" --token {token}" if token else ""
                    click.echo(
                        f"try: ketamine-cds call --fhir {base}{auth} --patient v01 --hook order-sign "
                        "--preset esketamine-56mg --at 2026-05-04T09:00:00Z",
                        err=True,
                    )
    except ClientError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
