#!/usr/bin/env bash
# Install the project into .venv and run the main job (extra arguments go to it).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec "$VENV/bin/python" -m workbench.experiments main "$@"
