#!/usr/bin/env bash
# Install the project with its notebooks extra (jupyterlab, jupytext, ipywidgets) into .venv and
# start JupyterLab on notebooks/. The percent-format .py files there ARE the notebooks: the project's
# Jupyter configuration (notebooks/.jupyter, added to JUPYTER_CONFIG_PATH for this process only; the
# user's own ~/.jupyter is left untouched) enables jupytext's contents manager and
# makes "Jupytext Notebook" the default viewer of .py files, so a double click opens them as notebooks.
# Extra arguments go to `jupyter lab` (e.g. --no-browser --port 8899).
WORKBENCH_EXTRA=notebooks source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
export JUPYTER_CONFIG_PATH="$PWD/notebooks/.jupyter${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
root=(); [ "$(id -u)" = 0 ] && root=(--allow-root)  # containers often run as root; Jupyter refuses that unasked
exec "$VENV/bin/jupyter" lab --ServerApp.root_dir="$PWD/notebooks" "${root[@]}" "$@"
