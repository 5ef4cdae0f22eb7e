"""``python -m workbench.diagnostics.detectors``: print the detector catalogue (``docs/detectors.md``)."""

from __future__ import annotations

import sys

from .registry import catalogue_markdown


def main() -> int:
    sys.stdout.write(catalogue_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
