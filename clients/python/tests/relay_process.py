"""The real `relay serve` as a child process on a free loopback port, and credentials for its clients
(shared by the Python client's tests and the browser client's)."""
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

JWT_SECRET = "test-jwt-secret-test-jwt-secret-00"
MASTER_KEY = "test-master-key-test-master-key-00"
ROOT = Path(__file__).resolve().parents[3]
BINARY = os.environ.get("RELAY_BINARY", str(ROOT / ".build" / "debug" / "relay"))


def app_token(user: str = "alice", devices=("robot-1",), lifetime: int = 600) -> str:
    def encode(value: dict) -> str:
        text = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(text).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + lifetime}
    if devices is not None:
        claims["devices"] = list(devices)
    signing = encode({"alg": "HS256", "typ": "JWT"}) + "." + encode(claims)
    signature = hmac.new(JWT_SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def device_secret(device_id: str) -> str:
    """What a relay without a registry entry derives for `device_id` from its master key."""
    return hmac.new(MASTER_KEY.encode(), device_id.encode(), hashlib.sha256).hexdigest()


class Relay:
    """`relay serve` as a child process on a free loopback port, with a store of its own."""

    def __init__(self, **environment):
        self.directory = tempfile.TemporaryDirectory()
        env = {
            "PATH": "/usr/bin:/bin", "RELAY_PORT": "0", "RELAY_JWT_SECRET": JWT_SECRET, "RELAY_DEVICE_MASTER_KEY": MASTER_KEY,
            "RELAY_DB": os.path.join(self.directory.name, "relay.sqlite"),
        }
        env.update(environment)
        self.environment = env
        self.process = subprocess.Popen([BINARY, "serve"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=self.directory.name)
        seen = ""
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.process.stderr.readline().decode(errors="replace")
            if not line:
                break
            seen += line
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError("the relay did not start: " + seen)
        if not hasattr(self, "port"):
            raise RuntimeError("the relay did not start: " + seen)
        # Keep draining its log so it never blocks on a full pipe.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def device_command(self, *arguments) -> str:
        """`relay device ...` on this relay's store; its standard output."""
        return subprocess.run(
            [BINARY, "device", *arguments], env={**self.environment}, cwd=self.directory.name,
            capture_output=True, text=True, check=True,
        ).stdout

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.directory.cleanup()
