"""Test support: a real FHIR R4 server (Node, Medplum engine) and a fault-injecting fake one.

- `fhir_server`: start `fhir_server/server.mjs` on a free port (`start_fhir_server`) and load
  resources into it (`put_resources`).
- `fault_fhir`: `FaultFhirServer`, an in-process fake whose answers are scripted per path, and
  `refused_url()`, a URL where nothing listens.
- `fixtures`: pytest fixtures built on both, for `tests/conftest.py` to import.
"""
