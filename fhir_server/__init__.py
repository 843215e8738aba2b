"""The FHIR test server (Node), installed as the package data ``cds_service.fhir_server``.

Not Python: package.json, package-lock.json and server.mjs. This file only lets the installed
``ketamine-cds fhir-server`` find them with importlib.resources (cds_service/bundled.py).
"""
