"""Drives the Fairway operator console in headless Chromium over the
DevTools protocol, as a person would: reads the figures shown, retries one
dead letter from its row, opens another's page and deletes it there, pauses
and resumes the queue, redrives the rest, reads the workers page and a
leased job's page, and deletes every dead letter of a second queue through
its confirmation page. Saves screenshots along the way and prints one JSON
object for the Rust test (tests/dashboard.rs) to check against the broker.

usage: dashboard_check.py BASE_URL QUEUE OTHER_QUEUE SCREENSHOT_DIR
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
  const f = (root, name) => { const e = root && root.querySelector(`[data-field=${name}]`); return e ? e.textContent.trim() : null; };
  const summary = document.getElementById('summary');
  const totals = document.getElementById('totals');
  return {
    ready: f(summary, 'ready'), leased: f(summary, 'leased'), dead: f(summary, 'dead'),
    scheduled: f(summary, 'scheduled'), status: f(summary, 'status'),
    enqueued_total: f(totals, 'enqueued_total'), dead_lettered_total: f(totals, 'dead_lettered_total'),
    acked_total: f(totals, 'acked_total'),
    alerts: [...document.querySelectorAll('[data-alert]')].map(e => e.dataset.alert),
    alert_messages: [...document.querySelectorAll('[data-alert] [data-field=message]')].map(e => e.textContent),
    groups: [...document.querySelectorAll('#groups tr[data-tenant]')].map(r => ({
      tenant: r.dataset.tenant, environment: r.dataset.environment,
      ready: f(r, 'ready'), leased: f(r, 'leased'), weight: f(r, 'weight'), cap: f(r, 'cap'), rate: f(r, 'rate') })),
    dead_jobs: [...document.querySelectorAll('#dead tr[data-job]')].map(r => ({
      id: r.dataset.job, error: r.querySelector('td.text').textContent })),
    scheduled_jobs: [...document.querySelectorAll('#scheduled tr[data-job]')].map(r => ({
      id: r.dataset.job, kind: f(r, 'kind'), next_run: f(r, 'next_run'), error: r.querySelector('td.text').textContent })),
    latency: [...document.querySelectorAll('#latency tr[data-latency]')].map(r => r.textContent),
    chart_y: [...document.querySelectorAll('#history [data-tick=y]')].map(e => e.textContent),
    chart_x: [...document.querySelectorAll('#history [data-tick=x]')].map(e => e.textContent),
    processed_hour: f(document, 'processed_hour'), failed_hour: f(document, 'failed_hour'),
    spark_scale: f(summary && summary.nextElementSibling, 'spark_scale'),
    flash: f(document, 'flash'),
    has_redrive_button: !!document.getElementById('redrive'),
    has_pause_button: !!document.getElementById('pause'),
    has_resume_button: !!document.getElementById('resume'),
  };
})()"""

READ_OVERVIEW = """(() => {
  const row = document.querySelector(`#queues tr[data-queue="${QUEUE}"]`);
  if (!row) return null;
  const f = name => row.querySelector(`[data-field=${name}]`).textContent.trim();
  return { ready: f('ready'), leased: f('leased'), dead: f('dead'), status: f('status'),
           link: row.querySelector('a').getAttribute('href') };
})()"""

READ_JOB = """(() => {
  const f = name => { const e = document.querySelector(`#job [data-field=${name}], [data-field=${name}]`); return e ? e.textContent.trim() : null; };
  return { state: f('state'), tenant: f('tenant'), attempts: f('attempts'), last_error: f('last_error'),
           lease_holder: f('lease_holder'), lease_expires_at: f('lease_expires_at'), trace_id: f('trace_id'),
           payload: f('payload'), payload_kind: f('payload_kind'), flash: f('flash'),
           headers: [...document.querySelectorAll('#headers tr[data-header]')].map(r => [r.dataset.header, r.children[1].textContent]),
           has_retry: !!document.getElementById('retry'), has_delete: !!document.getElementById('delete') };
})()"""

READ_WORKERS = """(() => {
  const f = (r, name) => r.querySelector(`[data-field=${name}]`).textContent.trim();
  return {
    workers: [...document.querySelectorAll('#workers tr[data-worker]')].map(r => ({
      id: r.dataset.worker, version: f(r, 'version'), queues: f(r, 'queues'), in_flight: f(r, 'in_flight'),
      connected: f(r, 'connected'), state: f(r, 'state') })),
    running: [...document.querySelectorAll('#running tr[data-job]')].map(r => r.dataset.job),
  };
})()"""


def click(page, element_js):
    """Clicks an element as a person would and waits for the page it leads to."""
    page.events.clear()
    page.eval(f"{element_js}.click()")
    page.wait_event("Page.loadEventFired")


def shoot(page, path):
    with open(path, "wb") as f:
        f.write(base64.b64decode(page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]))


def main():
    base, queue, trash, shots = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    os.makedirs(shots, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="fairway-chromium-")
    proc, port = start_chromium(profile)
    try:
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        out = {}
        page.open(base + "/")
        out["overview"] = page.eval(READ_OVERVIEW.replace("${QUEUE}", queue))
        shoot(page, os.path.join(shots, "dashboard-overview.png"))
        page.open(base + out["overview"]["link"])
        out["queue"] = page.eval(READ_QUEUE)
        shoot(page, os.path.join(shots, "dashboard.png"))

        # Retry the first dead letter from its row.
        first = out["queue"]["dead_jobs"][0]["id"]
        click(page, f"document.querySelector('#dead tr[data-job=\"{first}\"] form[action$=\"/retry\"] button')")
        out["after_retry"] = page.eval(READ_QUEUE)
        # The second one's own page, then delete it from there.
        second = out["queue"]["dead_jobs"][1]["id"]
        click(page, f"document.querySelector('#dead tr[data-job=\"{second}\"] a')")
        out["dead_job"] = page.eval(READ_JOB)
        shoot(page, os.path.join(shots, "console-job.png"))
        click(page, "document.getElementById('delete')")
        out["after_delete"] = page.eval(READ_QUEUE)
        # Pause, then resume.
        click(page, "document.getElementById('pause')")
        out["paused"] = page.eval(READ_QUEUE)
        click(page, "document.getElementById('resume')")
        out["resumed"] = page.eval(READ_QUEUE)
        # Redrive what is left.
        click(page, "document.getElementById('redrive')")
        out["after_redrive"] = page.eval(READ_QUEUE)
        # A leased job's page names its holder.
        page.open(base + "/workers")
        out["workers"] = page.eval(READ_WORKERS)
        shoot(page, os.path.join(shots, "console-workers.png"))
        held = out["workers"]["running"][0] if out["workers"]["running"] else None
        if held:
            click(page, f"document.querySelector('#running tr[data-job=\"{held}\"] a')")
            out["leased_job"] = page.eval(READ_JOB)
        # Delete all the dead letters of the other queue, through its confirmation page.
        page.open(base + f"/queues/{trash}")
        click(page, "document.getElementById('delete-all')")
        out["confirm_page"] = page.eval("document.querySelector('[data-field=dead]').textContent")
        click(page, "document.getElementById('confirm-delete')")
        out["after_delete_all"] = page.eval(READ_QUEUE)
        print(json.dumps(out))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
