"""A page rendered in headless Chromium, for tests that must see what a reader's browser
shows: which images failed to load or decode, what the console said, the text, a
screenshot.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in a NUL byte, the browser reading fd 3 and writing fd 4), so no
package beyond the standard library is needed, and every console message is seen, the
browser's own included (a refused load, a Content-Security-Policy violation), not only
what a script logs.

    rendering = render("report.html", screenshot="shot.png")
    assert not rendering.errors and not rendering.broken_images
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# What runs headless here without a display, a sandbox (root in a container), a GPU or the
# network, and talks to no Google service on the way.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-pipe"]

# Runs in the page once it has loaded: every <img> (loaded and decoded: `complete` with a
# width) and every CSS background image (decoded again here, since CSS does not say
# whether one failed), the page's text and how many scripts it holds.
CHECK_PAGE = r"""(async () => {
  const decodes = (src) => new Promise((done) => {
    const image = new Image();
    image.onload = () => done(image.naturalWidth > 0);
    image.onerror = () => done(false);
    image.src = src;
  });
  const images = [...document.images].map((img) => ({
    kind: "img", src: img.src, ok: img.complete && img.naturalWidth > 0}));
  const backgrounds = new Set();
  for (const element of document.querySelectorAll("*")) {
    const value = getComputedStyle(element).backgroundImage;
    for (const match of value.matchAll(/url\("(.*?)"\)/g)) backgrounds.add(match[1]);
  }
  for (const src of backgrounds) images.push({kind: "background", src, ok: await decodes(src)});
  return {images, text: document.body ? document.body.innerText : "",
          scripts: document.scripts.length,
          height: document.documentElement.scrollHeight};
})()"""


@dataclasses.dataclass
class Rendering:
    images: list        # {"kind": "img" | "background", "src", "ok"} per image the page shows
    errors: list        # console errors, uncaught exceptions, dialogs (alert) and failed loads
    text: str           # document.body.innerText
    scripts: int        # how many <script> elements the page holds
    height: int         # the page's height in CSS pixels
    screenshot: bytes | None  # PNG of the viewport, when asked for

    @property
    def broken_images(self) -> list:
        return [image for image in self.images if not image["ok"]]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) on PATH, or None."""
    return next((path for path in map(shutil.which, NAMES) if path), None)


def render(path: str, screenshot: str | None = None, width: int = 1200, height: int = 3000,
           timeout: float = 30.0) -> Rendering:
    """Loads the HTML file `path` in a fresh headless Chromium and checks it (`CHECK_PAGE`);
    with `screenshot`, writes a PNG of the `width` x `height` viewport there too."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"No browser on PATH (looked for {', '.join(NAMES)}).")
    with tempfile.TemporaryDirectory(prefix="tfmeta-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        with DevTools(chromium, profile, width, height, timeout) as browser:
            return browser.render(path, screenshot, width, height)


class DevTools:
    """A headless Chromium and its DevTools pipe: `call` sends a command and returns its
    result; the events that arrive meanwhile are kept, the errors among them in `errors`."""

    def __init__(self, chromium: str, profile: str, width: int, height: int, timeout: float):
        self.deadline = time.monotonic() + timeout
        self.log = open(os.path.join(profile, "stderr.txt"), "w+")
        browser_reads, self._commands = os.pipe()
        self._replies, browser_writes = os.pipe()
        browser_reads, browser_writes = _above_4(browser_reads), _above_4(browser_writes)
        # bash hands the pipe ends to Chromium as the fds 3 and 4 it expects (a preexec_fn
        # would run Python in a child forked from TensorFlow's threads, which can hang; dash
        # redirects only fds 0-9).
        command = ["bash", "-c", f'exec "$@" 3<&{browser_reads} 4>&{browser_writes}', "bash",
                   chromium, *FLAGS, f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            pass_fds=(browser_reads, browser_writes))
        os.close(browser_reads)
        os.close(browser_writes)
        self.next_id, self.buffer, self.events, self.errors = 0, b"", [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self.process.poll() is None:
                self.call("Browser.close")
                self.process.wait(timeout=10)
        except (OSError, RuntimeError, subprocess.TimeoutExpired):  # (TimeoutError is an OSError)
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)
            self.log.close()

    def render(self, path: str, screenshot: str | None, width: int, height: int) -> Rendering:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=self.session)
        self.call("Emulation.setDeviceMetricsOverride", session=self.session, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session=self.session,
                  url="file://" + os.path.abspath(path))
        self.wait_for("Page.loadEventFired")
        page = self.call("Runtime.evaluate", session=self.session, expression=CHECK_PAGE,
                         awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in page:
            raise RuntimeError(f"The page check failed: {page['exceptionDetails']}")
        page = page["result"]["value"]
        png = None
        if screenshot:
            png = base64.b64decode(self.call("Page.captureScreenshot", session=self.session,
                                             format="png")["data"])
            with open(screenshot, "wb") as f:
                f.write(png)
        return Rendering(page["images"], list(self.errors), page["text"], page["scripts"],
                         page["height"], png)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Sends `method` and returns its result (a RuntimeError with the browser's error)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, event: str) -> dict:
        while True:
            message = self._receive()
            if message.get("method") == event:
                return message["params"]

    def _receive(self) -> dict:
        """The next message from the browser; an event is kept (`_keep`) on the way."""
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer in time; its log:\n{self._log()}")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited; its log:\n{self._log()}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self._keep(message)
        return message

    def _keep(self, event: dict) -> None:
        method, params = event["method"], event.get("params", {})
        self.events.append(event)
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + details.get("exception", {}).get(
                "description", details.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{params['entry']['source']}: {params['entry']['text']}")
        elif method == "Page.javascriptDialogOpening":
            self.errors.append(f"dialog: {params['type']} {params['message']!r}")
            # (answered, or the page waits on it forever)
            message = {"id": 0, "method": "Page.handleJavaScriptDialog",
                       "params": {"accept": True}, "sessionId": event.get("sessionId")}
            os.write(self._commands, json.dumps(message).encode() + b"\0")

    def _log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]


def _above_4(fd: int) -> int:
    """`fd` moved to a number above 4, so that handing it to Chromium as 3 or 4 (`exec
    3<&N 4>&M`) overwrites no other end on the way."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved
