"""The book's web site, read as a reader reads it: scripts/build_book.py builds it from the committed chapters
into a temporary folder, and headless Chromium opens every page from file:// with the network switched off.

Every page must load without a console error or a request to the network, show every formula typeset (no
raw $ or \\( left in the visible text) and every image, and have no internal link or anchor that leads
nowhere; the sidebar must hold every chapter under its part, in order, with previous/next links that follow
it; the search page must find the DPO chapter for "implicit reward". Two screenshots (the index and the DPO
chapter) are saved to a folder the test prints, for a person to look at.

The browser is Debian's `chromium` (apt-get install -y chromium; .ci/run installs it), driven over the
Chrome DevTools Protocol through a pipe (--remote-debugging-pipe): the standard library is the client, and
the browser opens no port. Set CHROMIUM=/path/to/chrome to use another build.
"""

from __future__ import annotations

import base64
import fcntl
import importlib.util
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
build_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_book)

# sphinx-book-theme 1.4 and myst-parser 5.2 still use Sphinx APIs that Sphinx 11 will remove: their warnings,
# not ours, and nothing this project can change
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::sphinx.deprecation.RemovedInSphinx11Warning")]

INSTALL_HELP = ("this test reads the book's site in headless Chromium, and none was found: install Debian's "
                "(`apt-get install -y chromium`, as root; .ci/run does this), or set CHROMIUM to a Chrome or "
                "Chromium executable")
# The sidebar's parts, as the README's chapter table groups the chapters (by their number).
PARTS = {"The idea": range(0, 2), "Part I: imitation and reinforcement learning": range(2, 8),
         "Part II: reward models, direct alignment, unpaired feedback": range(8, 17),
         "Part III: comparison": range(17, 19), "Appendix: solutions to the exercises": range(19, 30)}
PAGE_TIMEOUT = 30.0

# What a page shows once loaded and typeset. Text inside code, and MathJax's own output, is not prose.
INSPECT_PAGE = r"""(() => {
  const notProse = "pre, code, script, style, textarea, .MathJax, .MathJax_Display, .MathJax_Preview, "
                 + ".MJX_Assistive_MathML, .MathJax_Error";
  const rawMath = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const element = node.parentElement;
    if (!element || element.closest(notProse) || !element.getClientRects().length) continue;
    const match = node.data.match(/\$|\\\(|\\\)|\\\[|\\\]/);
    if (match) rawMath.push(node.data.trim().slice(0, 100));
  }
  const mathSources = [...document.querySelectorAll(".math.notranslate")];  // Sphinx's; MathJax's own are not
  return {
    rawMath,
    mathSources: mathSources.length,
    untypeset: mathSources.filter(e => !e.querySelector(".MathJax, .MathJax_Display"))
                          .map(e => e.textContent.slice(0, 100)),
    typeset: document.querySelectorAll(".MathJax, .MathJax_Display").length,
    texErrors: [...document.querySelectorAll(".MathJax_Error, .noError, .MathJax[data-mathml*='mathcolor=\"red\"']")]
                 .map(e => (e.getAttribute("data-mathml") || e.textContent).slice(0, 200)),
    images: [...document.images].map(i => ({src: i.src.slice(0, 120), loaded: i.complete && i.naturalWidth > 0})),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    ids: [...document.querySelectorAll("[id]")].map(e => e.id)
           .concat([...document.querySelectorAll("a[name]")].map(a => a.name)),
    sidebar: [...document.querySelectorAll(".bd-sidebar-primary .bd-toc-item p.caption, "
                                           + ".bd-sidebar-primary .bd-toc-item li.toctree-l1 > a")]
               .map(e => e.matches("p.caption") ? {part: e.textContent.trim()}
                                                : {page: e.getAttribute("href"), title: e.textContent.trim()}),
    previous: document.querySelector(".prev-next-area a.left-prev")?.getAttribute("href") ?? null,
    next: document.querySelector(".prev-next-area a.right-next")?.getAttribute("href") ?? null,
  };
})()"""
# MathJax 2 typesets after the load event: wait for its queue to empty (a page without MathJax has nothing to wait for)
MATHJAX_DONE = """new Promise(done => {
  if (!window.MathJax || !MathJax.Hub || !MathJax.Hub.Queue) return done("no MathJax");
  MathJax.Hub.Queue(() => done("typeset"));
})"""


def chromium_executable() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    pytest.fail(INSTALL_HELP)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe: JSON messages ended by a NUL byte, the
    browser reading commands on its file descriptor 3 and writing replies and events on 4. The network is off
    twice over: host names resolve to nothing and no proxy is used, and DevTools emulates an offline network."""

    def __init__(self, executable: str, profile: Path):
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # the browser's ends, moved to descriptors above 9, so that the redirections below cannot clobber them
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
        os.close(commands_read)
        os.close(replies_write)
        commands_read, replies_write = high
        flags = ["--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
                 "--no-default-browser-check", "--disable-gpu", "--disable-extensions", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                 "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars",
                 "--window-size=1280,900", "--mute-audio", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to start its sandbox as root
        # the shell puts the two pipe ends on descriptors 3 and 4, where --remote-debugging-pipe expects them
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write}', executable, *flags],
            pass_fds=(commands_read, replies_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        os.close(commands_read)
        os.close(replies_write)
        self._messages: queue.Queue = queue.Queue()
        self._events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=self.session)
        self.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1}, session=self.session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=self.session)

    def _read(self):
        buffer = b""
        with os.fdopen(self._replies, "rb") as replies:
            while chunk := replies.read1(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)  # the browser closed the pipe

    def _next_message(self, deadline: float) -> dict:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("Chromium did not answer in time") from None
        if message is None:
            raise RuntimeError(f"Chromium exited: {self.process.stderr.read().decode(errors='replace')[-2000:]}")
        return message

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = PAGE_TIMEOUT) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def evaluate(self, expression: str, timeout: float = PAGE_TIMEOUT):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True,
                                                "timeout": timeout * 1000}, session=self.session, timeout=timeout + 5)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, timeout: float = PAGE_TIMEOUT) -> list[dict]:
        """Load `url`, wait for its load event and for MathJax; return the events the page caused."""
        self._events.clear()
        self.send("Page.navigate", {"url": url}, session=self.session)
        deadline = time.monotonic() + timeout
        try:
            while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
                self._events.append(self._next_message(deadline))
        except TimeoutError:
            raise TimeoutError(f"{url} did not finish loading in {timeout:.0f} s") from None
        self.evaluate(MATHJAX_DONE, timeout)
        self.send("Runtime.evaluate", {"expression": "0"}, session=self.session)  # collects pending events
        return list(self._events)

    def screenshot(self, path: Path):
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self):
        os.close(self._commands)  # the browser exits when its command pipe closes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def problems_in(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads, and any request that is not for a local file."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append("console error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                      for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(f"uncaught exception: {details.get('exception', {}).get('description', details['text'])}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"error: {params['entry']['text']} ({params['entry'].get('url', '')})")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:", "about:", "blob:")):
                found.append(f"network request: {url}")
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book_html")
    build_book.build(out, tmp_path_factory.mktemp("book_work"))
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Chromium(chromium_executable(), tmp_path_factory.mktemp("chromium_profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def pages(site, browser) -> dict[str, tuple[dict, list[str]]]:
    """Every page of the site, opened once: what it shows, and what went wrong while it loaded."""
    found = {}
    for page in sorted(site.glob("*.html")):
        events = browser.open(page.as_uri())
        found[page.name] = browser.evaluate(INSPECT_PAGE), problems_in(events)
    return found


def chapters() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_page_loads_offline_with_math_figures_and_links(site, pages):
    assert {"index.html", "notation.html", "bibliography.html", "search.html", "09_dpo.html"} <= set(pages)
    ids = {name: set(shown["ids"]) for name, (shown, _) in pages.items()}
    failures = []
    for name, (shown, problems) in pages.items():
        failures += [f"{name}: {problem}" for problem in problems]
        failures += [f"{name}: formula not typeset: {source!r}" for source in shown["untypeset"]]
        failures += [f"{name}: raw math in the visible text: {text!r}" for text in shown["rawMath"]]
        failures += [f"{name}: TeX error: {error!r}" for error in shown["texErrors"]]
        failures += [f"{name}: image did not load: {image['src']}" for image in shown["images"] if not image["loaded"]]
        for link in shown["links"]:
            url = urlsplit(link)
            if url.scheme != "file":
                continue  # outside the site (a paper's page): not followed, and nothing loads it
            target = Path(unquote(url.path))
            if not target.is_file() or site not in target.parents:
                failures.append(f"{name}: link to a missing file: {link}")
            elif url.fragment and target.name in ids and unquote(url.fragment) not in ids[target.name]:
                failures.append(f"{name}: link to a missing anchor: {link}")
    assert not failures, "\n".join(failures)
    # the checks above had something to check: math typeset on every chapter and figures where a chapter has them
    for path in chapters():
        shown, _ = pages[f"{path.stem}.html"]
        assert shown["typeset"] >= shown["mathSources"] > 0, f"{path.stem}: no typeset math"
        figures = sum("image/png" in output.get("data", {}) for cell in nbformat.read(path, as_version=4).cells
                      for output in cell.get("outputs", []))
        assert sum(image["loaded"] for image in shown["images"]) >= figures, f"{path.stem}: figures missing"
    assert pages["notation.html"][0]["typeset"] > 20 and pages["index.html"][0]["typeset"] > 0


def test_sidebar_holds_every_chapter_in_its_part_with_previous_and_next(pages):
    sidebar = pages["index.html"][0]["sidebar"]
    parts, part = {}, None
    for entry in sidebar:  # the home page's own entry comes before the first part
        if "part" in entry:
            part = entry["part"]
        elif part is not None:
            parts.setdefault(part, []).append(entry["page"])
    for caption, numbers in PARTS.items():
        expected = [f"{p.stem}.html" for p in chapters() if int(p.name[:2]) in numbers]
        assert parts.get(caption) == expected, f"{caption}: sidebar has {parts.get(caption)}, chapters {expected}"
    assert parts.get("Reference") == ["notation.html", "bibliography.html"]
    titles = {entry["page"]: entry["title"] for entry in sidebar if "page" in entry}
    for path in chapters():  # "9. Direct Preference Optimisation": the chapter's own numbered heading
        assert re.fullmatch(rf"{int(path.name[:2])}\. \S.*", titles[f"{path.stem}.html"]), titles[f"{path.stem}.html"]
    order = ["index.html"] + [page for entries in parts.values() for page in entries]
    for before, after in zip(order, order[1:]):
        assert pages[before][0]["next"] == after, f"{before}: next is {pages[before][0]['next']}, not {after}"
        assert pages[after][0]["previous"] == before, f"{after}: previous is {pages[after][0]['previous']}"


def test_search_finds_the_dpo_chapter(site, browser):
    problems = problems_in(browser.open((site / "search.html").as_uri() + "?q=implicit+reward"))
    hits = browser.evaluate("""new Promise((done, fail) => {
      const start = Date.now();
      (function poll() {
        const hits = [...document.querySelectorAll("#search-results ul.search li a")];
        const status = document.querySelector("#search-results .search-summary, #search-results p");
        if (hits.length || (status && /found|did not match/i.test(status.textContent))) {
          return done(hits.map(a => a.getAttribute("href")));
        }
        if (Date.now() - start > 20000) return fail(new Error("no search results after 20 s"));
        setTimeout(poll, 100);
      })();
    })""")
    assert not problems, problems
    assert any(hit.split("#")[0].split("?")[0] == "09_dpo.html" for hit in hits), hits


def test_screenshots_of_the_index_and_the_dpo_chapter(site, browser, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("book_screenshots")
    for page in ("index", "09_dpo"):
        browser.open((site / f"{page}.html").as_uri())
        browser.screenshot(folder / f"{page}.png")
        assert (folder / f"{page}.png").stat().st_size > 10_000, f"{page}: an empty screenshot"
    with capsys.disabled():
        print(f"\nscreenshots of the book's site: {folder}")
