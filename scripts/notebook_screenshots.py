"""Open every notebook in JupyterLab in headless Chromium and save screenshots (run by
scripts/notebook_screenshots.sh, which starts the server; see there).

Usage: python scripts/notebook_screenshots.py LAB_URL TOKEN OUT_DIR NOTEBOOK.py...

For each notebook: navigate to /lab/tree/<name> (the route a double click takes: the file opens in its
default viewer), wait for the kernel, save <stem>_opened.png; run all cells through JupyterLab's own
command, scroll to the first cell that shows a widget or a figure, save <stem>_output.png. Prints one
line per notebook: viewer, cells, run time, errors. Talks to Chromium over the DevTools protocol on
localhost (websocket-client comes with jupyter_server).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

WIDTH, HEIGHT = 1280, 1000

FIND = "const w = app && Array.from(app.shell.widgets('main')).find(x => x.title.label === NAME);"

WAIT_READY = """(async () => {
  for (let i = 0; i < 1200; i++) {
    const app = window.jupyterapp;
    FIND
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    if (w && w.node.classList.contains('jp-NotebookPanel') && k && k.status === 'idle') {
      return JSON.stringify({viewer: 'notebook', label: w.title.label, cells: w.content.widgets.length});
    }
    if (w && i > 300 && !w.node.classList.contains('jp-NotebookPanel')) {
      return JSON.stringify({viewer: w.node.className, label: w.title.label});
    }
    await new Promise(r => setTimeout(r, 100));
  }
  const app2 = window.jupyterapp;
  const all = app2 ? Array.from(app2.shell.widgets('main')).map(x => [x.title.label, x.node.className,
    x.sessionContext && x.sessionContext.session && x.sessionContext.session.kernel && x.sessionContext.session.kernel.status]) : null;
  return JSON.stringify({viewer: 'timeout', app: typeof app2, main: all});
})()"""

RUN_ALL = """(async () => {
  const app = window.jupyterapp, t0 = performance.now();
  FIND
  app.shell.activateById(w.id);
  await app.commands.execute('notebook:run-all-cells');
  const k = w.sessionContext.session.kernel;
  while (k.status !== 'idle') { await new Promise(r => setTimeout(r, 200)); }
  await new Promise(r => setTimeout(r, 1500));  // let widget views and images render
  let errors = 0, firstWidget = -1, firstImage = -1;
  w.content.widgets.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    for (let j = 0; j < cell.model.outputs.length; j++) {
      const o = cell.model.outputs.get(j), d = o.data || {};
      if (o.type === 'error') errors += 1;
      if (d['application/vnd.jupyter.widget-view+json'] && firstWidget < 0) firstWidget = i;
      if (d['image/png'] && firstImage < 0) firstImage = i;
    }
  });
  const target = firstWidget >= 0 ? firstWidget : firstImage;
  const sliders = document.querySelectorAll('.widget-slider').length;
  if (target >= 0) { await w.content.scrollToCell(w.content.widgets[target], 'start'); }
  await new Promise(r => setTimeout(r, 800));
  return JSON.stringify({seconds: (performance.now() - t0) / 1000, errors, target, sliders});
})()"""


class Page:
    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=900, suppress_origin=True)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(json.dumps(res["exceptionDetails"])[:800])
        return json.loads(res["result"]["value"])

    def shot(self, path: Path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(lab: str, token: str, out: Path, notebooks: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH (Debian: apt-get install chromium)")
    port, profile = _free_port(), tempfile.mkdtemp(prefix="nb-shots-")
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                             "--remote-allow-origins=*", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                pages = [t for t in targets if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        page = Page(pages[0]["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        for nb in notebooks:
            stem = Path(nb).stem
            t0 = time.monotonic()
            page.call("Page.navigate", url=f"{lab}/lab/tree/{Path(nb).name}?reset&token={token}")
            for _ in range(200):  # the new document, not the previous one
                try:
                    if Path(nb).name in str(page.js("JSON.stringify(document.readyState === 'complete' && location.href)")):
                        break
                except RuntimeError:
                    pass
                time.sleep(0.1)
            find = FIND.replace("NAME", json.dumps(Path(nb).name))
            ready = page.js(WAIT_READY.replace("FIND", find))
            opened_s = time.monotonic() - t0
            page.shot(out / f"{stem}_opened.png")
            ran = page.js(RUN_ALL.replace("FIND", find)) if ready.get("viewer") == "notebook" else {}
            page.shot(out / f"{stem}_output.png")
            print(f"{stem}: opened as {ready} in {opened_s:.1f} s; run all: {ran}", flush=True)
            page.js("(async () => { const app = window.jupyterapp; " + find +
                    " if (w && w.sessionContext) await w.sessionContext.shutdown(); return '1'; })()")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
