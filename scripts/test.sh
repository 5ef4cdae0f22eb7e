#!/usr/bin/env bash
# Install the project with its dev extra into .venv and run the whole test suite.
WORKBENCH_EXTRA=dev source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec "$VENV/bin/python" -m pytest "$@"
