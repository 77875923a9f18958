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
    def __init__(self, binary: str, profile: str):
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
             "--window-size=1280,900", "about:blank"],
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


def open_page(page: Path, screenshot: Path, *, timeout: float = 40.0) -> dict[str, Any]:
    """Load ``page``, wait until its plotly figures are drawn, screenshot it.

    Returns: figures (plotly divs), rendered (divs with a drawn SVG and at least one trace),
    errors (console errors, exceptions, error log entries), dialogs (alert/confirm texts),
    requests (URLs the page asked for), title, and the screenshot path.
    """
    binary = chromium()
    assert binary, "no chromium"
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(binary, profile)
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
            call("Page.navigate", {"url": page.resolve().as_uri()}, session=s)
            probe = ("(() => { const d = [...document.querySelectorAll('.plotly-graph-div')];"
                     " return {figures: d.length, rendered: d.filter(x => x.querySelector('.main-svg') &&"
                     " x.querySelectorAll('.trace').length > 0).length, title: document.title}; })()")
            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                state = call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=s)["result"]["value"]
                loaded = any(e.get("method") == "Page.loadEventFired" for e in events)
                if loaded and state["figures"] and state["rendered"] == state["figures"]:
                    break
                time.sleep(0.3)
            time.sleep(0.5)  # late console errors from plotly's async drawing
            call("Runtime.evaluate", {"expression": "1"}, session=s)
            size = call("Page.getLayoutMetrics", session=s)["cssContentSize"]
            shot = call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
                "x": 0, "y": 0, "width": min(size["width"], 1400), "height": min(size["height"], 12000), "scale": 0.6}},
                session=s)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
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
