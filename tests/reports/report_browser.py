"""Open a page in a real headless Chromium through the DevTools protocol over a pipe (stdlib only).

``--remote-debugging-pipe`` makes Chromium read protocol commands from fd 3 and write replies
and events to fd 4, NUL-terminated JSON; no websocket client and no downloaded browser needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def chromium() -> str | None:
    return os.environ.get("BROWSER_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


class _Pipe:
    def __init__(self, binary: str, profile: str, width: int = 1300):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def child() -> None:  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={width},900", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self.messages.put(json.loads(msg))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._id

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


#: What the page shows of itself, read from the DOM of the drawn page.
_PROBE = """(() => {
  const d = [...document.querySelectorAll('.plotly-graph-div')];
  const v = document.getElementById('verdict');
  const r = v ? v.getBoundingClientRect() : null;
  const wide = [...document.querySelectorAll('table')].filter(t => t.closest('.tbl') && !t.closest('details:not([open])') &&
      t.getBoundingClientRect().width > t.closest('.tbl').getBoundingClientRect().width + 1).map(
      t => (t.caption ? t.caption.innerText + ': ' : '') + [...t.querySelectorAll('th')].slice(0, 4).map(
      h => h.innerText).join(' | '));
  return {figures: d.length, title: document.title,
          rendered: d.filter(x => x.querySelector('.main-svg') && x.querySelectorAll('.trace').length > 0).length,
          verdict_text: v ? v.innerText : null,
          verdict_visible: !!(r && r.width > 0 && r.height > 0 && getComputedStyle(v).visibility === 'visible'),
          verdict_top: r ? r.top + window.scrollY : null,
          favour_cells: [...document.querySelectorAll('#verdict td[class^=fav-]')].map(
              c => [c.className.split(' ')[0], c.innerText, getComputedStyle(c).backgroundColor]),
          collapsed: [...document.querySelectorAll('details.collapsed > summary')].map(s => s.innerText),
          overflowing_tables: wide,
          page_width: document.documentElement ? document.documentElement.scrollWidth : 0};
})()"""


def open_page(page: Path, screenshot: Path, *, timeout: float = 40.0, width: int = 1300, scale: float = 0.6,
              slices: Path | None = None, slice_height: int = 1400) -> dict[str, Any]:
    """Load ``page`` in a ``width``-pixel window, wait until its plotly figures are drawn, screenshot it.

    Returns: figures (plotly divs), rendered (divs with a drawn SVG and at least one trace),
    verdict_text / verdict_visible / verdict_top (the verdict box as the page draws it),
    favour_cells (class, text and background of its "in favour of" cells), collapsed (the
    one-line sections), overflowing_tables (caption and first headers of each table wider than
    its scrolling box),
    errors (console errors, exceptions, error log entries), dialogs (alert/confirm texts),
    requests (URLs the page asked for), title, and the screenshot path (the whole page at
    ``scale``). With ``slices``, the page is also saved there at full size in pieces of
    ``slice_height`` pixels (``slice_00.png``, ...), for a person to read.
    """
    binary = chromium()
    assert binary, "no chromium"
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(binary, profile, width)
        pending: dict[int, Any] = {}
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout

        def call(method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
            i = pipe.send(method, params, session)
            while i not in pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chromium did not answer {method}")
                try:
                    m = pipe.messages.get(timeout=0.5)
                except queue.Empty:
                    continue
                if "id" in m:
                    pending[m["id"]] = m
                else:
                    events.append(m)
                    if m.get("method") == "Page.javascriptDialogOpening":
                        pipe.send("Page.handleJavaScriptDialog", {"accept": True}, m.get("sessionId"))
            reply = pending.pop(i)
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply.get("result", {})

        try:
            target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
            s = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                call(f"{domain}.enable", session=s)
            call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                        "mobile": False}, session=s)
            call("Page.navigate", {"url": page.resolve().as_uri()}, session=s)
            def probe() -> dict[str, Any]:
                r = call("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=s)
                if "exceptionDetails" in r:
                    raise RuntimeError(f"probe: {r['exceptionDetails'].get('exception', {}).get('description')}")
                return r["result"]["value"]

            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                state = probe()
                loaded = any(e.get("method") == "Page.loadEventFired" for e in events)
                if loaded and state["figures"] and state["rendered"] == state["figures"]:
                    break
                time.sleep(0.3)
            time.sleep(0.5)  # late console errors from plotly's async drawing
            state = probe()
            size = call("Page.getLayoutMetrics", session=s)["cssContentSize"]
            shot = call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
                "x": 0, "y": 0, "width": min(size["width"], 1400), "height": min(size["height"], 12000), "scale": scale}},
                session=s)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            if slices is not None:
                slices.mkdir(parents=True, exist_ok=True)
                for k, top in enumerate(range(0, int(min(size["height"], 40000)), slice_height)):
                    part = call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
                        "x": 0, "y": top, "width": min(size["width"], width),
                        "height": min(slice_height, size["height"] - top), "scale": 1}}, session=s)
                    (slices / f"slice_{k:02d}.png").write_bytes(base64.b64decode(part["data"]))
        finally:
            pipe.close()
    errors = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", ""))
    return {**state, "errors": errors,
            "dialogs": [e["params"].get("message") for e in events if e.get("method") == "Page.javascriptDialogOpening"],
            "requests": [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"],
            "screenshot": screenshot}
