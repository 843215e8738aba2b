"""The bundled rule set, installed as the package data ``cds_service.rules`` (see pyproject.toml).

Not Python: informaticians edit the YAML files here. This file only lets the installed service find
them with importlib.resources (cds_service/bundled.py).
"""
