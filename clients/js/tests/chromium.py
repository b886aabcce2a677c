"""Headless Chromium driven through the DevTools protocol: open a page, evaluate JavaScript in
it (awaiting promises), block URLs (to make WebSockets or event streams fail), take screenshots."""
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import urllib.request

import websockets


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PageError(Exception):
    """The page's JavaScript threw."""


class Chromium:
    def __init__(self):
        self.binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not self.binary:
            raise RuntimeError("chromium is not installed (scripts/setup-debian installs it)")
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.port = free_port()
        self.process = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={self.profile.name}", f"--remote-debugging-port={self.port}",
             "--autoplay-policy=no-user-gesture-required",
             # Host candidates as addresses, not mDNS names (peers on loopback find each other).
             "--disable-features=WebRtcHideLocalIpsWithMdns", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.socket = None
        self._ids = iter(range(1, 1 << 30))
        self.console = []

    async def open(self):
        """Connects to the first page's DevTools socket (Chromium may take a while to come up)."""
        for _ in range(600):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json"))
                page = next(target for target in targets if target["type"] == "page")
                break
            except (OSError, StopIteration, ValueError):
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError("Chromium's DevTools endpoint did not come up in 60 s")
        self.socket = await websockets.connect(page["webSocketDebuggerUrl"], max_size=1 << 26)
        await self.call("Runtime.enable")
        await self.call("Network.enable")

    async def call(self, method: str, **params):
        request = next(self._ids)
        await self.socket.send(json.dumps({"id": request, "method": method, "params": params}))
        while True:
            answer = json.loads(await self.socket.recv())
            if answer.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in answer["params"]["args"]))
            if answer.get("id") == request:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    async def navigate(self, url: str):
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        for _ in range(200):
            if await self.evaluate("document.readyState") == "complete":
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{url} did not load")

    async def evaluate(self, expression: str):
        """The value of `expression` (a promise is awaited); raises PageError if it throws."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def block(self, *patterns: str):
        """Makes requests to URLs matching `patterns` fail (`*` wildcards), WebSockets included."""
        await self.call("Network.setBlockedURLs", urls=list(patterns))

    async def close(self):
        if self.socket is not None:
            await self.socket.close()
        self.process.kill()
        self.process.wait()
        self.profile.cleanup()
