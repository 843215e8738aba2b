"""The Dockerfile and .dockerignore, checked without a Docker engine (none where this was written):
every COPY source exists and is not ignored, the build context leaves out what the tests and
tools leave behind, the runtime stage runs as non-root with OCI labels and nothing from the build,
and the README's `docker run` names a file a fresh clone can have.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PATTERNS = [
    line.strip()
    for line in (ROOT / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def ignored(rel: str) -> bool:
    """Whether .dockerignore leaves ``rel`` (or a folder above it) out of the build context."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in PATTERNS:
        assert not pattern.startswith("!"), "exceptions are not handled by this check"
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/"):
                tails = ["/".join(prefix.split("/")[i:]) for i in range(len(prefix.split("/")))]
                if any(fnmatch.fnmatchcase(t, pattern[3:]) for t in tails):
                    return True
    return False


def stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]


def copy_sources(stage: str) -> list[str]:
    out = []
    for line in re.findall(r"^COPY (.+)$", stage, re.M):
        words = shlex.split(line)
        if any(w.startswith("--from") for w in words):
            continue
        out += [w for w in words[:-1] if not w.startswith("--")]
    return out


def test_copy_sources_exist_and_are_in_the_context() -> None:
    sources = copy_sources(stages()[0])
    assert {"pyproject.toml", "README.md", "LICENSE", "cds_service", "rules"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not ignored(src), f"{src} is COPYed but .dockerignore leaves it out"


def test_context_leaves_out_build_and_test_leftovers() -> None:
    leftovers = [
        ".venv/bin/python",
        "fhir_server/node_modules/@medplum/core/package.json",
        "var/feedback.sqlite3",
        ".git/HEAD",
        "tests/test_api.py",
        "cds_service/__pycache__/api.cpython-311.pyc",
        "build/lib/x.py",
        "dist/x.whl",
        "ketamine_cds.egg-info/PKG-INFO",
        ".pytest_cache/v",
        "rules/feedback.sqlite3",
    ]
    for path in leftovers:
        assert ignored(path), path
    for path in ("cds_service/api.py", "rules/valuesets/tca.yaml", "fhir_server/package-lock.json"):
        assert not ignored(path), path


def test_context_size_of_this_checkout() -> None:
    """What `docker build .` would send from this very checkout (node_modules, .venv, caches and all
    present): a few MB, not hundreds."""
    total = 0
    for folder, dirs, files in os.walk(ROOT):
        rel_dir = os.path.relpath(folder, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = [d for d in dirs if not ignored(rel_dir + d)]
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files if not ignored(rel_dir + f))
    assert total < 10_000_000, f"build context {total / 1e6:.1f} MB"


def test_runtime_stage() -> None:
    build, runtime = stages()
    assert runtime.startswith("python:3.11-slim")
    assert not copy_sources(runtime), "the runtime stage copies only from the build stage"
    assert re.search(r"^COPY --from=build /opt/ketamine-cds /opt/ketamine-cds$", runtime, re.M)
    user = re.findall(r"^USER (\S+)$", runtime, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in runtime, label
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in runtime
    assert "KETAMINE_CDS_WORKER_TMP_DIR=/dev/shm" in runtime  # --read-only: /tmp is not writable
    assert "KETAMINE_CDS_DATABASE=/data/" in runtime and 'VOLUME ["/data"]' in runtime
    assert "pip uninstall -y pip setuptools" in build
    assert "KETAMINE_CDS_RULES_DIR" not in runtime.split("ENV", 1)[1].split("RUN", 1)[0]  # bundled rules


def test_readme_docker_run_works_on_a_fresh_clone() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Docker", 1)[1].split("\n## ", 1)[0]
    assert "cp config/trusted-issuers.example.yaml config/trusted-issuers.yaml" in section
    assert (ROOT / "config" / "trusted-issuers.example.yaml").is_file()
    run = next(line for line in section.splitlines() if line.startswith("docker run"))
    assert "--read-only" in run
    assert "/config/trusted-issuers.yaml" in section


def test_no_placeholder_project_urls() -> None:
    """The project's web and source locations are not known to the repository: the package metadata
    and the image labels name none (they named a made-up GitHub organisation and Pages site)."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "urls" not in meta, meta.get("urls")
    dockerfile = (ROOT / "Dockerfile").read_text()
    for placeholder in ("github.com/ketamine-cds", "ketamine-cds.github.io"):
        assert placeholder not in dockerfile, placeholder
    for label in ("url", "source", "documentation"):
        assert f"org.opencontainers.image.{label}=" not in dockerfile, label
