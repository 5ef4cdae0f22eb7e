#!/usr/bin/env bash
# A look in a real browser: start JupyterLab on notebooks/ exactly as scripts/notebooks.sh configures it
# (plus a fresh, temporary Jupyter user directory, so neither your settings nor your workspaces are read
# or written), open every notebook in headless Chromium by its /lab/tree URL (what a double click does),
# run all cells in SMOKE mode (FULL=1 for full mode) and write <notebook>_opened.png and
# <notebook>_output.png into $OUT (default: figures/notebook_screenshots). Needs Debian's chromium
# (apt-get install chromium). Not part of the test suite: it costs a browser (~0.5 GB installed).
WORKBENCH_EXTRA=notebooks source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
OUT=${OUT:-figures/notebook_screenshots}
tmp=$(mktemp -d)
trap 'kill "$lab_pid" 2>/dev/null; wait "$lab_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
export JUPYTER_CONFIG_PATH="$PWD/notebooks/.jupyter" JUPYTER_CONFIG_DIR="$tmp/config" \
       JUPYTER_DATA_DIR="$tmp/data" JUPYTER_RUNTIME_DIR="$tmp/runtime" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$tmp/config/labconfig"  # no "news?" prompt over the screenshots
echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}' >"$tmp/config/labconfig/default_setting_overrides.json"
[ "${FULL:-0}" = 1 ] || export SMOKE=1
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
"$VENV/bin/jupyter" lab --no-browser --allow-root --ip=127.0.0.1 --port="$port" --ServerApp.port_retries=0 \
  --IdentityProvider.token="$token" --ServerApp.root_dir="$PWD/notebooks" --LabApp.expose_app_in_browser=True \
  --LabApp.news_url= --ServerApp.shutdown_no_activity_timeout=900 >"$tmp/lab.log" 2>&1 &
lab_pid=$!
for _ in $(seq 300); do
  curl -fs -o /dev/null -H "Authorization: token $token" "http://127.0.0.1:$port/api/status" && break
  kill -0 "$lab_pid" 2>/dev/null || { cat "$tmp/lab.log"; exit 1; }
  sleep 0.2
done
"$VENV/bin/python" scripts/notebook_screenshots.py "http://127.0.0.1:$port" "$token" "$OUT" ${NOTEBOOKS:-notebooks/*.py}
ls -l "$OUT"
