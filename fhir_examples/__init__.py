"""Worked CDS Hooks requests, installed as the package data ``cds_service.fhir_examples``.

Not Python: JSON files written by tools/build_examples.py. This file only lets the installed service
find them with importlib.resources (cds_service/bundled.py).
"""
