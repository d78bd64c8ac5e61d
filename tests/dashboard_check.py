"""Drives the Fairway dashboard in headless Chromium over the DevTools
protocol: reads the figures shown, clicks "redrive", reads again and saves a
screenshot. Prints one JSON object for the Rust test (tests/dashboard.rs) to
check against the broker's own numbers.

usage: dashboard_check.py BASE_URL QUEUE SCREENSHOT_PNG
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # websocket-client


class Page:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == name:
                    del self.events[: i + 1]
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(name)

    def open(self, url):
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def eval(self, js):
        r = self.call("Runtime.evaluate", expression=js, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{js}: {r['exceptionDetails']}")
        return r["result"].get("value")


def start_chromium(profile):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        sys.exit("chromium not found: run scripts/setup (installs Debian's chromium)")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(port_file):
            with open(port_file) as f:
                first = f.readline().strip()
            if first:
                return proc, int(first)
        time.sleep(0.05)
    proc.kill()
    sys.exit("chromium did not open its DevTools port")


# Figures of the queue page, read by their data-field attributes.
READ_QUEUE = """(() => {
  const f = (root, name) => { const e = root.querySelector(`[data-field=${name}]`); return e ? e.textContent.trim() : null; };
  const summary = document.getElementById('summary');
  const totals = document.getElementById('totals');
  return {
    ready: f(summary, 'ready'), leased: f(summary, 'leased'), dead: f(summary, 'dead'),
    enqueued_total: f(totals, 'enqueued_total'), dead_lettered_total: f(totals, 'dead_lettered_total'),
    alerts: [...document.querySelectorAll('[data-alert]')].map(e => e.dataset.alert),
    groups: [...document.querySelectorAll('#groups tr[data-tenant]')].map(r => ({
      tenant: r.dataset.tenant, environment: r.dataset.environment,
      ready: f(r, 'ready'), leased: f(r, 'leased') })),
    dead_jobs: [...document.querySelectorAll('#dead tr[data-job]')].map(r => ({
      id: r.dataset.job, error: r.querySelector('td.text').textContent })),
    flash: f(document, 'redriven'),
    has_redrive_button: !!document.getElementById('redrive'),
  };
})()"""

READ_OVERVIEW = """(() => {
  const row = document.querySelector(`#queues tr[data-queue="${QUEUE}"]`);
  if (!row) return null;
  const f = name => row.querySelector(`[data-field=${name}]`).textContent.trim();
  return { ready: f('ready'), leased: f('leased'), dead: f('dead'), status: f('status'),
           link: row.querySelector('a').getAttribute('href') };
})()"""


def main():
    base, queue, shot = sys.argv[1], sys.argv[2], sys.argv[3]
    profile = tempfile.mkdtemp(prefix="fairway-chromium-")
    proc, port = start_chromium(profile)
    try:
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        out = {}
        page.open(base + "/")
        out["overview"] = page.eval(READ_OVERVIEW.replace("${QUEUE}", queue))
        page.open(base + out["overview"]["link"])
        out["queue"] = page.eval(READ_QUEUE)
        shot_before = page.call("Page.captureScreenshot", format="png")["data"]
        # Click the button as a person would; the form posts and the page
        # reloads with the result.
        page.events.clear()
        page.eval("document.getElementById('redrive').click()")
        page.wait_event("Page.loadEventFired")
        out["after_redrive"] = page.eval(READ_QUEUE)
        with open(shot, "wb") as f:
            f.write(base64.b64decode(shot_before))
        with open(shot.replace(".png", "-after-redrive.png"), "wb") as f:
            f.write(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
        print(json.dumps(out))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
