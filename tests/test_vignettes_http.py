"""The worked vignettes through the HTTP service: each example request, posted as an EHR would,
gets exactly the cards its rule test expects (under the vignette's jurisdiction)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cds_service.app import create_app
from cds_service.compact import load_cases

from .conftest import EXAMPLES, RULES, assert_conformant, make_settings

CASES = [c for c in load_cases(RULES / "tests" / "vignettes.yaml") if "cards" in (c.get("expect") or {})]


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    """One app per jurisdiction the vignettes use (the site file sets it, as at a real site)."""
    made = {}
    for jurisdiction in sorted({(c.get("site") or {}).get("jurisdiction", "US") for c in CASES}):
        tmp = tmp_path_factory.mktemp(f"site-{jurisdiction}")
        site = yaml.safe_load((RULES / "site.yaml").read_text())
        site["jurisdiction"] = jurisdiction
        (tmp / "site.yaml").write_text(yaml.safe_dump(site))
        app = create_app(make_settings(tmp, site_config=tmp / "site.yaml"))
        made[jurisdiction] = app.test_client()
    yield made
    for client in made.values():
        client.application.extensions["ketamine_cds"].store.close()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vignette_over_http(clients, case):
    path = Path(EXAMPLES) / f"{case['id']}.json"
    body = json.loads(path.read_text())
    client = clients[(case.get("site") or {}).get("jurisdiction", "US")]
    url = f"/cds-services/{body['hook']}"
    resp = client.post(url, data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert_conformant(out)
    got = [(c["source"]["topic"]["code"], c["indicator"]) for c in out["cards"]]
    want = [(c["topic"], c["indicator"]) for c in case["expect"]["cards"]]
    assert got == want
