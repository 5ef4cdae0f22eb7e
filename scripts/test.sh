#!/usr/bin/env bash
# Install the project with its dev extra into .venv and run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" dev
exec "$VENV/bin/python" -m pytest "$@"
