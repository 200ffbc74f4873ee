"""API tests: the real diffusiond with its ingress stage, driven over HTTP.

The model stages are stood in for by tests/diffusiond-teststage --role gen (one per step of
pipeline/gen_job.h: text, denoise, vae, encode), which checks each job's params and makes a
real PNG/JPEG/WebP of the asked size; the ingress is the real one. The service fixture and
helpers come from tests/process/conftest.py.
"""
import http.client
import importlib.util
import json
import os
import socket
import time

import pytest

_spec = importlib.util.spec_from_file_location(
    "process_conftest", os.path.join(os.path.dirname(__file__), "..", "process", "conftest.py"))
proc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proc)
service = proc.service  # the fixture, re-exported
pytest_runtest_makereport = proc.pytest_runtest_makereport  # failures show the service's log
wait_for = proc.wait_for
SLOW = proc.SLOW


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running API tests")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gen_stages(delay_ms=0, ingress_args="", encode_pool="64M", with_models=True):
    stages = [("ingress", ingress_args, {"program": "program = diffusiond-ingress",
                                           "pool_size": 0})]
    if with_models:
        stages += [
            ("text", "--role gen --step text", {"pool_size": 0}),
            ("denoise", f"--role gen --step denoise --delay-ms {delay_ms}", {"pool_size": 0}),
            ("vae", "--role gen --step vae", {"pool_size": 0}),
            ("encode", "--role gen --step encode", {"pool_size": encode_pool}),
        ]
    return stages


class Api:
    def __init__(self, svc, port):
        self.svc = svc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLOW)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = dict({"Content-Type": "application/json"}, **(headers or {}))
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), data

    def json(self, method, path, body=None, headers=None, timeout=30):
        status, hdrs, data = self.request(method, path, body, headers, timeout)
        return status, hdrs, json.loads(data) if data else None

    def generate(self, timeout=30, headers=None, **fields):
        body = dict({"prompt": "a cat", "size": "64x32", "num_inference_steps": 2}, **fields)
        return self.json("POST", "/v1/images/generations", body, headers, timeout)

    def raw(self, data, timeout=10, read=True):
        """Sends bytes on a fresh connection; returns the status line's code (0: none)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout * SLOW) as s:
            s.sendall(data)
            if not read:
                return 0
            buf = b""
            try:
                while b"\r\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            except (socket.timeout, ConnectionResetError):
                pass
        parts = buf.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    def alive(self):
        status, _, body = self.json("GET", "/health")
        return status == 200 and body == {"status": "ok"}


@pytest.fixture
def api(service):
    """Factory: api(stages=gen_stages(), **server_keys) -> Api, its server listening."""

    def start(stages=None, wait_ready=True, auth_headers=None, **server):
        port = free_port()
        server.setdefault("listen", f"127.0.0.1:{port}")
        # the stand-in denoise sleeps in its job callback: no heartbeats meanwhile
        server.setdefault("heartbeat_timeout_ms", 20000)
        svc = service(stages if stages is not None else gen_stages(), **server)
        a = Api(svc, port)

        def up():
            try:
                return a.request("GET", "/health", timeout=1)[0] == 200
            except OSError:
                return False
        wait_for(up, 15, "the HTTP server")
        if wait_ready:
            wait_for(lambda: a.request("GET", "/ready", headers=auth_headers)[0] == 200, 15,
                     "/ready")
        return a

    return start
