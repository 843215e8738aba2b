"""Write fhir_examples/<case id>.json from the compact cases in rules/tests/vignettes.yaml.

    python tools/build_examples.py            # (re)write every example
    python tools/build_examples.py --check    # exit 1 if any example is missing or out of date

Output is deterministic: two-space indent, sorted keys, UTF-8, a trailing newline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cds_service.compact import build_request, load_cases  # noqa: E402

DEFAULT_CASES = ROOT / "rules" / "tests" / "vignettes.yaml"
DEFAULT_OUT = ROOT / "fhir_examples"


def render(request: dict[str, Any]) -> str:
    """The file text for one request."""
    return json.dumps(request, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files(cases_path: Path) -> dict[str, str]:
    """File name → text for every case."""
    return {f"{case['id']}.json": render(build_request(case)) for case in load_cases(cases_path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report out-of-date files, write nothing")
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES, help="compact cases (YAML)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)

    files = expected_files(args.cases)
    stale = []
    for name, text in sorted(files.items()):
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in files)
    for name in extra:
        print(f"note: {args.out / name} is not built from {args.cases.name}", file=sys.stderr)

    if args.check:
        for name in stale:
            print(f"out of date: {args.out / name}", file=sys.stderr)
        if stale:
            print("run: python tools/build_examples.py", file=sys.stderr)
            return 1
        print(f"{len(files)} examples up to date")
        return 0
    print(f"{len(files)} examples, {len(stale)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
