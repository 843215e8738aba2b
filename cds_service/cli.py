"""The ``ketamine-cds`` command line: serve, evaluate, explain, lint, test-rules, feedback-stats …"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import click

from . import serving
from .config import Settings

RULES_OPTION = click.option(
    "--rules",
    "rules_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="KETAMINE_CDS_RULES_DIR",
    help="Rules directory (default: the bundled rules/).",
)
DATABASE_OPTION = click.option(
    "--database",
    envvar="KETAMINE_CDS_DATABASE",
    metavar="PATH|URL",
    help="Feedback, shown cards and jti replay cache: a SQLite file (default var/feedback.sqlite3) "
    "or postgresql://user@host:5432/db shared by several instances (docs/deployment.md).",
)
SITE_OPTION = click.option(
    "--site-config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="KETAMINE_CDS_SITE_CONFIG",
    help="Site configuration file (default: RULES/site.yaml).",
)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """The version, and whether the hot path runs compiled (setup.py) or as Python, and why."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    from . import _accel

    click.echo(f"ketamine-cds, version {version('ketamine-cds')}\n{_accel.describe()}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and whether the compiled hot path is in use, then exit.",
)
def main() -> None:
    """CDS Hooks 2.0 decision support for ketamine and esketamine in depression."""


# -- serve ------------------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="KETAMINE_CDS_HOST")
@click.option("--port", default=8411, show_default=True, type=int, envvar="KETAMINE_CDS_PORT")
@click.option("--workers", default=2, show_default=True, type=int, envvar="KETAMINE_CDS_WORKERS")
@click.option("--threads", default=4, show_default=True, type=int, envvar="KETAMINE_CDS_THREADS")
@RULES_OPTION
@SITE_OPTION
@DATABASE_OPTION
@click.option(
    "--trusted-issuers",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="KETAMINE_CDS_TRUSTED_ISSUERS",
    help="YAML file of trusted JWT issuers.",
)
@click.option(
    "--public-base-url",
    envvar="KETAMINE_CDS_PUBLIC_BASE_URL",
    help="Base URL clients call (JWT aud) when behind a proxy, e.g. https://cds.example.org",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    envvar="KETAMINE_CDS_INSECURE_NO_AUTH",
    help="Accept calls without a JWT. Local development only.",
)
@click.option(
    "--dev",
    is_flag=True,
    help="Development mode: --insecure-no-auth and honour the evaluation-time extension.",
)
@click.option(
    "--forwarded-allow-ips",
    default="",
    envvar="KETAMINE_CDS_FORWARDED_ALLOW_IPS",
    help="Proxy addresses whose X-Forwarded-* headers are trusted (comma-separated; default none).",
)
@click.option(
    "--worker-class",
    type=click.Choice(["gevent", "gthread"]),
    default="gevent",
    show_default=True,
    envvar="KETAMINE_CDS_WORKER_CLASS",
    help="gevent: slow clients cost a greenlet, not a thread (docs/security.md). gthread: --threads.",
)
@click.option(
    "--fhir-allow-http",
    is_flag=True,
    envvar="KETAMINE_CDS_FHIR_ALLOW_HTTP",
    help="Allow a plain-http fhirServer with JWT auth on (development only: the token goes in clear).",
)
@click.option(
    "--fhir-deadline",
    type=float,
    envvar="KETAMINE_CDS_FHIR_DEADLINE",
    help="Seconds for all FHIR fetches of one call (default 3).",
)
@click.option("--log-level", default=None, envvar="KETAMINE_CDS_LOG_LEVEL")
@serving.options  # timeouts, keep-alive, max requests, access log (cds_service/serving.py)
def serve(
    host: str,
    port: int,
    workers: int,
    threads: int,
    rules_dir: Path | None,
    site_config: Path | None,
    database: str | None,
    trusted_issuers: Path | None,
    public_base_url: str | None,
    insecure_no_auth: bool,
    dev: bool,
    forwarded_allow_ips: str,
    worker_class: str,
    fhir_allow_http: bool,
    fhir_deadline: float | None,
    log_level: str | None,
    **gunicorn_options: Any,
) -> None:
    """Serve the CDS Hooks endpoints with gunicorn."""
    if worker_class == "gevent":
        # Before the app is built, so every lock and socket it makes is cooperative (a real lock
        # held across a yield would deadlock the worker). ssl is already imported (requests, by the
        # integrator commands) but no SSL context exists yet, which is what gevent warns about.
        import warnings

        from gevent import monkey

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=monkey.MonkeyPatchWarning)
            monkey.patch_all()
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    settings = Settings.from_env(
        rules_dir=rules_dir,
        site_config=site_config,
        database=database,
        trusted_issuers=trusted_issuers,
        public_base_url=public_base_url,
        insecure_no_auth=(insecure_no_auth or dev) or None,
        allow_time_override=dev or None,
        fhir_allow_http=fhir_allow_http or None,
        fhir_allow_loopback=dev or None,  # a local Sandbox's FHIR server is on localhost
        fhir_error_detail=dev or None,
        fhir_deadline=fhir_deadline,
        log_level=log_level,
    )
    operator_settings = serving.gunicorn_settings(gunicorn_options)
    derived = not settings.insecure_no_auth and not settings.public_base_url
    if derived:
        # Only the bind address can say which URL clients call; never the request's headers.
        settings = dataclasses.replace(settings, public_base_url=serving.derived_public_base_url(host, port))
    try:
        app = create_app(settings)  # fail fast in the parent: invalid rules never reach the workers
    except Exception as exc:  # noqa: BLE001 - shown to the operator as is
        raise click.ClickException(str(exc)) from exc
    if derived:
        logging.getLogger("cds_service.serve").info(
            "token audience %s/cds-services/... (from the bind address; set --public-base-url "
            "if clients call another URL)",
            settings.public_base_url,
        )

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", worker_class)
            self.cfg.set("worker_connections", 1000)
            self.cfg.set("preload_app", True)
            self.cfg.set("forwarded_allow_ips", forwarded_allow_ips)
            self.cfg.set("post_fork", serving.exit_with_master)
            serving.configure(self.cfg, operator_settings)  # the operator's settings; control socket off

        def load(self) -> Any:
            return app

    # a log line (JSON, with the rule-set version) like every other one the service writes
    from . import _accel

    logging.getLogger("cds_service.serve").info(
        "ketamine-cds serving http://%s:%s/cds-services (%d workers; %s)",
        host,
        port,
        workers,
        _accel.describe(),
    )
    Server().run()


# -- evaluate / explain -----------------------------------------------------------------------------
def _run_file(path: Path, rules_dir: Path | None, site_config: Path | None, jurisdiction: str | None) -> Any:
    from . import pipeline
    from .engine.loader import RuleLoadError, load_ruleset
    from .errors import ApiError, DataUnavailable
    from .services import SERVICES
    from .validation import parse_json, validate_request

    settings = Settings.from_env(
        rules_dir=rules_dir,
        site_config=site_config,
        allow_time_override=True,
        # a local file on the developer's machine: its fhirServer may be a local test server
        fhir_allow_http=True,
        fhir_allow_loopback=True,
        fhir_error_detail=True,
    )
    try:
        ruleset = load_ruleset(settings.rules_dir, settings.site_config_path)
    except RuleLoadError as exc:
        raise click.ClickException("\n".join(exc.problems)) from exc
    try:
        body = parse_json(path.read_bytes())
        hook = body.get("hook") if isinstance(body, dict) else None
        service = SERVICES.get(str(hook))
        if service is None:
            raise click.ClickException(f"{path}: hook {hook!r} is not served here")
        request = validate_request(body, service)
        return pipeline.run(request, ruleset, settings, jurisdiction=jurisdiction)
    except ApiError as exc:
        raise click.ClickException(f"{path}: {exc.status} {exc.message}") from exc
    except DataUnavailable as exc:
        raise click.ClickException(f"{path}: 412 {exc.message}") from exc


@main.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw CDS Hooks response.")
@click.option("--jurisdiction", help="Override the site's jurisdiction (US, CA, UK, NO).")
@RULES_OPTION
@SITE_OPTION
def evaluate(
    request_file: Path,
    as_json: bool,
    jurisdiction: str | None,
    rules_dir: Path | None,
    site_config: Path | None,
) -> None:
    """Run one CDS Hooks request file in-process and print the cards."""
    outcome = _run_file(request_file, rules_dir, site_config, jurisdiction)
    if as_json:
        click.echo(json.dumps(outcome.response, indent=2))
        return
    click.echo(render_cards_text(outcome.response["cards"]))


def render_cards_text(cards: list[dict[str, Any]]) -> str:
    if not cards:
        return "No cards."
    colours = {"critical": "red", "warning": "yellow", "info": "cyan"}
    out = []
    for card in cards:
        head = click.style(f"[{card['indicator'].upper()}]", fg=colours[card["indicator"]], bold=True)
        out.append(f"{head} {card['summary']}")
        out.append(f"  rule: {card['source']['topic']['code']} · source: {card['source']['label']}")
        for line in (card.get("detail") or "").splitlines():
            out.append(textwrap.indent(line, "    ") if line.strip() else "")
        for s in card.get("suggestions") or []:
            out.append(f"  → suggestion: {s['label']}")
        for link in card.get("links") or []:
            out.append(f"  ↗ {link['label']}: {link['url']}")
        out.append("")
    return "\n".join(out).rstrip()


@main.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--jurisdiction", help="Override the site's jurisdiction (US, CA, UK, NO).")
@click.option(
    "--all", "show_all", is_flag=True, help="Also list rules skipped for another hook or jurisdiction."
)
@RULES_OPTION
@SITE_OPTION
def explain(
    request_file: Path,
    jurisdiction: str | None,
    show_all: bool,
    rules_dir: Path | None,
    site_config: Path | None,
) -> None:
    """Print every rule, fired or not, with the reason — then the cards."""
    outcome = _run_file(request_file, rules_dir, site_config, jurisdiction)
    click.echo(explain_text(outcome, show_all=show_all))


def explain_text(outcome: Any, *, show_all: bool = False) -> str:
    ev = outcome.evaluation
    marks = {"fired": "FIRED  ", "not-fired": "no     ", "unknown": "UNKNOWN", "skipped": "skipped"}
    lines = [
        f"jurisdiction {ev.jurisdiction} · hook {ev.facts.hook} · evaluated at {ev.facts.now.isoformat()}"
    ]
    for o in ev.outcomes:
        if o.status == "skipped" and not show_all:
            continue
        ind = f" [{o.indicator}]" if o.indicator else ""
        lines.append(f"{marks[o.status]} {o.rule.id}{ind}: {o.reason}")
        if o.result and o.result.evidence and o.status == "fired":
            lines.append(f"          evidence: {', '.join(dict.fromkeys(o.result.evidence))}")
    problems = ev.facts.record.problems
    if problems:
        lines.append("")
        lines.append(
            "Record entries not read in full (an element named was not read, or the entry was left out):"
        )
        lines += [
            f"  {p.resource} ({p.where}): {'' if p.partial else 'left out: '}{p.message}" for p in problems
        ]
    ignored = ev.facts.record.ignored_report()  # the ketamine-cds.ignored-elements report
    if ignored:
        lines.append("")
        lines.append(
            "Ignored elements (invalid or not understood, read by no rule; the resources were kept):"
        )
        lines += [
            f"  {r['resourceType']}.{r['element']}: {r['reason']} (×{r['count']})"
            if r["element"] != "(more)"
            else f"  … {r['count']} more, not listed"
            for r in ignored
        ]
    lines.append("")
    lines.append(render_cards_text(outcome.response["cards"]))
    return "\n".join(lines)


# -- informatician tools ----------------------------------------------------------------------------
@main.command()
@RULES_OPTION
@SITE_OPTION
def lint(rules_dir: Path | None, site_config: Path | None) -> None:
    """Validate rules, value sets, terminology and site configuration; list every problem."""
    from .engine.loader import RuleLoadError, load_ruleset

    settings = Settings.from_env(rules_dir=rules_dir, site_config=site_config)
    try:
        rs = load_ruleset(settings.rules_dir, settings.site_config_path)
    except RuleLoadError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        raise click.ClickException(f"{len(exc.problems)} problem(s)") from exc
    t = rs.terminology
    click.echo(
        f"OK: {len(rs.rules)} rules, {len(rs.panels)} panels, {len(t.valuesets)} value sets, "
        f"{len(t.ingredients)} ingredients, {len(t.products)} products, jurisdiction {rs.jurisdiction}"
    )


@main.command("test-rules")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@RULES_OPTION
@click.option("-k", "select", help="Only cases whose id contains this text.")
@click.option("-v", "--verbose", is_flag=True, help="Print the cards of every case.")
def test_rules(files: tuple[Path, ...], rules_dir: Path | None, select: str | None, verbose: bool) -> None:
    """Run the YAML rule tests (rules/tests/*.yaml) and report each case."""
    from .engine.loader import RuleLoadError, load_ruleset
    from .rule_tests import default_case_files, run_cases

    settings = Settings.from_env(rules_dir=rules_dir)
    try:  # a missing, empty or invalid rule set is a failure, not "0 passed"
        load_ruleset(settings.rules_dir)
    except RuleLoadError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        raise click.ClickException(f"{len(exc.problems)} problem(s) in the rule set") from exc
    paths = list(files) or default_case_files(settings.rules_dir)
    results = run_cases(paths, settings.rules_dir, select=select)
    if not results:
        where = ", ".join(map(str, paths)) or f"{settings.rules_dir / 'tests'}/*.yaml"
        matching = f" matching -k {select!r}" if select else ""
        raise click.ClickException(f"no rule tests found in {where}{matching}")
    failed = 0
    for r in results:
        mark = click.style("PASS", fg="green") if r.ok else click.style("FAIL", fg="red", bold=True)
        click.echo(f"{mark} {r.case_id} ({r.file}:{r.line})")
        for msg in r.failures:
            click.echo(f"     - {msg}")
        if verbose or not r.ok:
            for c in r.cards:
                click.echo(f"     card: [{c['indicator']}] {c['source']['topic']['code']}: {c['summary']}")
        failed += not r.ok
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        sys.exit(1)


@main.command("card-burden")
@RULES_OPTION
@SITE_OPTION
@click.option(
    "--examples",
    "examples_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of example CDS Hooks requests (*.json; default: the bundled examples); the rule-test "
    "cases are always included.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def card_burden(
    rules_dir: Path | None, site_config: Path | None, examples_dir: Path | None, as_json: bool
) -> None:
    """Cards per hook call (median, max, by indicator) and per-rule fire rate over the examples
    and the rule-test cases."""
    from .bundled import examples_dir as bundled_examples
    from .burden import collect, render_text, summarise

    examples_dir = examples_dir or bundled_examples()

    settings = Settings.from_env(rules_dir=rules_dir, site_config=site_config)
    summary = summarise(collect(settings.rules_dir, examples_dir, settings.site_config))
    click.echo(json.dumps(summary, indent=2) if as_json else render_text(summary))


@main.command()
def predicates() -> None:
    """List the predicate vocabulary rules are written in."""
    from .engine.predicates import REGISTRY

    for name, (_fn, doc) in sorted(REGISTRY.items()):
        click.echo(f"{name}\n{textwrap.indent(textwrap.fill(doc, 96), '    ')}\n")


@main.command("feedback-stats")
@DATABASE_OPTION
@click.option("--json", "as_json", is_flag=True)
def feedback_stats(database: str | None, as_json: bool) -> None:
    """Per-rule counts of cards shown, accepted and overridden, with override reasons."""
    from .storage import is_postgres

    settings = Settings.from_env(database=database)
    if not is_postgres(settings.database) and not Path(settings.database).exists():
        raise click.ClickException(f"no feedback database at {settings.database}")
    from .storage import StorageUnavailable

    storage = _storage(settings.database, migrate=None)
    try:
        stats = storage.feedback.rule_stats()
    except StorageUnavailable as exc:
        raise click.ClickException(f"cannot read feedback: {exc}") from exc
    finally:
        storage.close()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    if not stats:
        click.echo("No cards shown yet.")
        return
    click.echo(f"{'rule':40} {'shown':>7} {'accepted':>9} {'overridden':>11} {'override %':>11}")
    for s in stats:
        pct = f"{100 * s['overridden'] / s['shown']:.0f}%" if s["shown"] else "-"
        click.echo(f"{s['rule']:40} {s['shown']:>7} {s['accepted']:>9} {s['overridden']:>11} {pct:>11}")
        for reason, n in sorted(s["reasons"].items(), key=lambda kv: -kv[1]):
            click.echo(f"{'':42}{n:>5} × {reason}")


@main.command()
@DATABASE_OPTION
@click.option("--status", is_flag=True, help="Only show the schema version; change nothing.")
def migrate(database: str | None, status: bool) -> None:
    """Bring the database schema to this release's version. `serve` does it at start unless
    KETAMINE_CDS_AUTO_MIGRATE=false; safe while instances serve and from several hosts at once."""
    from .storage import LATEST, SchemaError, StorageUnavailable, open_database

    settings = Settings.from_env(database=database)
    try:
        db = open_database(settings.database, migrate=None)
        try:
            before = max(db.applied_versions(), default=0)
            for m in [] if status else db.migrate():
                click.echo(f"applied {m.version}: {m.name}")
            now = max(db.applied_versions(), default=0)
        finally:
            db.close()
    except (SchemaError, StorageUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    change = f" (was {before})" if now != before else ""
    behind = f"; {LATEST - now} migration(s) pending: run without --status" if now < LATEST else ""
    click.echo(f"{db.describe()}: schema version {now}{change}, this release {LATEST}{behind}")


def _storage(database: str, *, migrate: bool | None) -> Any:
    from .storage import SchemaError, StorageUnavailable, open_storage

    try:
        return open_storage(database, migrate=migrate)
    except (SchemaError, StorageUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc


# -- integrators: seed, call, fhir-server (cds_service/integrator_cli.py) --------------------------
from .integrator_cli import call, fhir_server, seed  # noqa: E402

main.add_command(seed)
main.add_command(call)
main.add_command(fhir_server)

if __name__ == "__main__":  # pragma: no cover
    main()
