"""Process tests: start the real diffusiond with the test stages, act on it, check what it did.

Each test gets its own runtime directory and instance name, so that tests never share sockets
or shared-memory segments, and a NOTIFY_SOCKET that the test reads like systemd would.
DIFFUSIOND_BUILD names the build folder to test (tests/run-tests.sh sets it).
"""
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("DIFFUSIOND_BUILD", os.path.join(REPO, "build"))
DIFFUSIOND = os.path.join(BUILD, "diffusiond")
# Sanitizer builds run several times slower: waits scale with it.
SLOW = 3.0 if "asan" in os.path.basename(BUILD.rstrip("/")) else 1.0
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:")


def wait_for(predicate, timeout, what, step=0.02):
    """Polls predicate until it returns something true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout * SLOW:.1f}s waiting for {what}")


def shm_segments(instance):
    prefix = f"diffusiond.{instance}."
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET. Like systemd it reads all the
    time (a thread): a full socket would block the supervisor's sd_notify."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self.messages = []  # (monotonic time, text)
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append((time.monotonic(), data.decode()))

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def lines(self):
        return [line for _, text in self.snapshot() for line in text.split("\n")]

    def has(self, line):
        return line in self.lines()

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


class Service:
    """One diffusiond process with its own config, runtime dir, log and notify socket."""

    def __init__(self, tmp, instance, config_text, env=None):
        self.tmp = tmp
        self.instance = instance
        self.runtime_dir = os.path.join(tmp, "run")
        self.config_path = os.path.join(tmp, "diffusiond.conf")
        self.write_config(config_text)
        self.log_path = os.path.join(tmp, "diffusiond.log")
        self.notify = Notifications(os.path.join(tmp, "notify.sock"))
        self.env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, **(env or {}))
        self.env.pop("JOURNAL_STREAM", None)
        self.proc = None

    def write_config(self, text):
        with open(self.config_path, "w") as f:
            f.write(text)

    def start(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([DIFFUSIOND, "-c", self.config_path], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env)
        return self

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    def status(self):
        try:
            with open(os.path.join(self.runtime_dir, "status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def slot(self, stage, replica=0):
        st = self.status()
        if not st:
            return None
        for s in st["slots"]:
            if s["stage"] == stage and s["replica"] == replica:
                return s
        return None

    def wait_ready(self, timeout=10):
        wait_for(lambda: self.notify.has("READY=1"), timeout, "READY=1")
        # status.json is rewritten every second; wait until it shows every slot ready too
        wait_for(lambda: (st := self.status()) and all(s["ready"] for s in st["slots"]),
                 timeout, "every slot ready in status.json")

    def stage_log(self, stage, replica=0):
        path = os.path.join(self.runtime_dir, f"{stage}.{replica}.log")
        try:
            with open(path) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def events(self, stage, kind, replica=0):
        """Lines "<kind> id=.. attempt=.. seg=.. at=.. ok" of a test stage, parsed."""
        out = []
        for line in self.stage_log(stage, replica):
            words = line.split()
            if not words or words[0] != kind:
                continue
            fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            fields["ok"] = words[-1] == "ok"
            out.append(fields)
        return out

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15):
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("diffusiond did not stop after SIGTERM")

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        if getattr(self, "log", None):
            self.log.close()
        for name in shm_segments(self.instance):  # never leave a failed test's segments
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


def make_config(instance, runtime_dir, stages, model=None, **server):
    """A config for the test stages. stages: list of (name, args, extra keys dict); model: the
    [model] path, for the real model stages."""
    srv = {
        "instance": instance,
        "runtime_dir": runtime_dir,
        "log_level": "info",
        "heartbeat_ms": 100,
        "heartbeat_timeout_ms": 3000,
        "drain_timeout_ms": 10000,
        "stop_timeout_ms": 3000,
        "restart_backoff_ms": 100,
        "restart_backoff_max_ms": 2000,
        "throttle_ms": 500,
    }
    srv.update(server)
    lines = ["[server]"] + [f"{k} = {v}" for k, v in srv.items()] + [""]
    if model:
        lines += ["[model]", f"path = {model}", ""]
    for name, args, extra in stages:
        lines.append(f"[stage.{name}]")
        lines.append(extra.pop("program", "program = tests/diffusiond-teststage"))
        lines.append(f"args = {args}")
        lines += [f"{k} = {v}" for k, v in extra.items()]
        lines.append("")
    return "\n".join(lines)


_instances = itertools.count(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the end of each of its services' logs: on CI, that log
    is all there is to tell which process died and how."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for svc in getattr(item, "diffusiond_services", []):
        try:
            with open(svc.log_path) as f:
                text = f.read()
        except OSError:
            continue
        report.sections.append((f"diffusiond log ({svc.instance}), the last 6000 characters",
                                text[-6000:]))


@pytest.fixture
def service(request):
    """Factory: service(stages, **server_keys) -> a started Service; cleaned up afterwards."""
    made = []
    request.node.diffusiond_services = made  # for the failure report (above)

    def start(stages, start=True, env=None, model=None, **server):
        if not os.access(DIFFUSIOND, os.X_OK):
            pytest.fail(f"{DIFFUSIOND} is not built")
        tmp = tempfile.mkdtemp(prefix="diffusiond-test-")
        # Unique on the machine: tests never share a segment name, even with a straggler
        # stage of an earlier test still exiting.
        instance = f"t{os.getpid()}x{next(_instances)}"
        runtime_dir = os.path.join(tmp, "run")
        svc = Service(tmp, instance, make_config(instance, runtime_dir, stages, model, **server),
                      env)
        svc.stages = stages
        made.append(svc)
        return svc.start() if start else svc

    yield start
    reports = []
    for svc in made:
        svc.cleanup()
        # Stages log to the supervisor's stderr: a sanitizer build's reports land there.
        text = svc.log_text() if os.path.exists(svc.log_path) else ""
        reports += [line for line in text.splitlines() if SANITIZER_REPORT.search(line)]
    if reports:
        pytest.fail("sanitizer reports in the service's log:\n" + "\n".join(reports[:20]))


def pipeline(source_args, relay_args="--role relay", sink_args="--role sink", pool="256M",
             relay_extra=None):
    return [
        ("source", f"--role source --route relay,sink {source_args}", {"pool_size": pool}),
        ("relay", relay_args, dict({"pool_size": 0}, **(relay_extra or {}))),
        ("sink", sink_args, {"pool_size": 0}),
    ]
