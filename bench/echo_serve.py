"""The echo floor: a plain Flask endpoint served exactly as ``ketamine-cds serve`` serves the service.

``POST /cds-services/<id>`` parses the JSON body (orjson, as the service does) and answers
``{"cards": []}`` with ``jsonify``; ``GET /healthz`` answers ok. Nothing else: no schema check, no
record, no rules. It is started through the real ``serve`` command with ``create_app`` swapped for
the echo app, so the gunicorn settings (worker class, workers, threads, timeouts, preload) are
whatever the service ships, by construction. ``bench/bench.py --parts floor`` loads it side by side
with the service and prints the ratio. Run from the repository root:

    .venv/bin/python bench/echo_serve.py --dev --workers 2 --port 8099 --database /tmp/echo.sqlite3
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def echo_app(_settings: Any = None) -> Any:
    import orjson
    from flask import Flask, jsonify, request

    app = Flask("ketamine-cds-echo")

    @app.post("/cds-services/<service_id>")
    def call(service_id: str) -> Any:
        orjson.loads(request.get_data())
        return jsonify({"cards": []})

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return app


def main(argv: list[str]) -> None:
    import cds_service.app as app_module
    from cds_service.cli import main as cli

    app_module.create_app = echo_app  # serve imports create_app from cds_service.app when it runs
    cli(["serve", *argv], prog_name="ketamine-cds")


if __name__ == "__main__":
    main(sys.argv[1:])
