"""The service with its real model stages on the small random model the repository carries
(models/tiny-qwen-image): its images equal the one-process CLI's byte for byte, a request's
image is the same alone and among concurrent requests, every model stage can be killed with
requests in flight (each request still gets its correct image, or a 503), SIGTERM finishes
the requests in flight before it exits 0, and a model stage stops a job whose client left in
the middle of its compute."""
import base64
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import SLOW, proc, wait_for  # noqa: F401
from test_api import image_size, parse_metrics

REPO = proc.REPO
BUILD = proc.BUILD
MODEL = os.path.join(REPO, "models", "tiny-qwen-image")
GENERATE = os.path.join(BUILD, "diffusiond-generate")
MODEL_STAGES = ["text", "denoise", "vae", "encode"]


def real_stages():
    stages = [("ingress", "", {"program": "program = diffusiond-ingress", "pool_size": 0})]
    for name in MODEL_STAGES:
        stages.append((name, "", {"program": f"program = diffusiond-{name}", "threads": 1,
                                  "pool_size": "16M"}))
    return stages


@pytest.fixture
def real(api):
    def start(**server):
        return api(stages=real_stages(), model=MODEL, **server)
    return start


def cli_png(tmp_path, prompt, seed, size="128x96", steps=6, negative=None, cfg=None):
    """diffusiond-generate's PNG for the same request."""
    w, h = size.split("x")
    out = tmp_path / f"cli-{seed}-{abs(hash((prompt, size, steps, negative, cfg)))}.png"
    args = [GENERATE, "--model", MODEL, "--prompt", prompt, "--width", w, "--height", h,
            "--steps", str(steps), "--seed", str(seed), "-o", str(out), "--quiet",
            "--threads", "1"]
    if negative is not None:
        args += ["--negative-prompt", negative]
    if cfg is not None:
        args += ["--true-cfg-scale", str(cfg)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120 * SLOW)
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def assert_clean_stop(a):
    """SIGTERM, then: exit 0, every stage exited 0 by itself (none crashed, or was killed at the
    stop deadline, on the way out: either would skip its own clean-up, which the supervisor's
    sweep then hides), and nothing left in /dev/shm. A failure shows the log, where the
    supervisor says where a stage it had to kill was waiting."""
    assert a.svc.stop() == 0
    log = a.svc.log_text()
    stop = log[log.rindex("stopping: draining"):]
    assert not re.search(r"killed by signal|killing them|exited with [1-9]", stop), log[-4000:]
    assert proc.shm_segments(a.svc.instance) == [], log[-4000:]


def image_of(body, i=0):
    return base64.b64decode(body["data"][i]["b64_json"])


def test_service_image_equals_cli(real, tmp_path):
    a = real()
    fields = dict(prompt="a lighthouse at dusk", size="128x96", num_inference_steps=6, seed=41,
                  negative_prompt="blurry", true_cfg_scale=4, n=2)
    status, _, body = a.generate(timeout=60, **fields)
    assert status == 200, body
    assert len(body["data"]) == 2
    # n images use seed, seed+1
    for i in range(2):
        want = cli_png(tmp_path, "a lighthouse at dusk", 41 + i, negative="blurry", cfg=4)
        assert image_of(body, i) == want, f"image {i} differs from the CLI's"
    # without a negative prompt (no CFG) too, and the other formats decode to the right size
    status, _, body = a.generate(timeout=60, prompt="a cat", size="64x48", seed=3,
                                 num_inference_steps=6)
    assert status == 200 and image_of(body) == cli_png(tmp_path, "a cat", 3, size="64x48")
    for fmt in ("jpeg", "webp"):
        status, _, body = a.generate(timeout=60, prompt="a cat", size="64x48", seed=3,
                                     num_inference_steps=2, output_format=fmt,
                                     output_compression=80)
        assert status == 200 and image_size(image_of(body)) == (fmt, 64, 48)
    # the model stages' compute time (their worker threads) reaches /metrics via the
    # supervisor's heartbeats
    def busy(stage):
        m = parse_metrics(a.request("GET", "/metrics")[2].decode())
        return m.get(("diffusiond_stage_busy_seconds_total", (("stage", stage), ("replica", "0"))), 0)
    for stage in MODEL_STAGES:
        wait_for(lambda: busy(stage) > 0, 10, f"{stage}'s busy time in /metrics")


def generate_many(a, requests, timeout=120):
    """Sends the requests at once; returns [(status, body)] in order."""
    out = [None] * len(requests)

    def one(i):
        try:
            status, _, body = a.generate(timeout=timeout, **requests[i])
            out[i] = (status, body)
        except Exception as e:  # noqa: BLE001 - a hang or a reset is a test failure below
            out[i] = (0, repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * SLOW)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return out


def test_image_same_alone_and_among_concurrent_requests(real):
    a = real()
    alone_req = dict(prompt="a red bicycle", size="128x96", num_inference_steps=6, seed=5,
                     negative_prompt="", true_cfg_scale=3)
    status, _, body = a.generate(timeout=60, **alone_req)
    assert status == 200
    alone = image_of(body)
    others = [dict(prompt=f"prompt number {i}", size=s, num_inference_steps=4, seed=100 + i)
              for i, s in enumerate(["64x64", "128x96", "96x128", "64x32", "128x128", "32x32",
                                     "64x48"])]
    results = generate_many(a, others[:3] + [alone_req] + others[3:])
    assert [s for s, _ in results] == [200] * 8, results
    assert image_of(results[3][1]) == alone


@pytest.mark.slow
@pytest.mark.parametrize("stage", MODEL_STAGES)
def test_kill_each_model_stage_with_requests_in_flight(real, tmp_path, stage):
    """kill -9 of a model stage while 8 requests are in flight: each ends with its correct
    image (the lost jobs are retried) or a 503, none hangs, the stage comes back, and nothing
    is left in /dev/shm after stop."""
    a = real()
    reqs = [dict(prompt=f"kill test {i}", size="256x256", num_inference_steps=20, seed=200 + i)
            for i in range(8)]
    out = [None]
    t = threading.Thread(target=lambda: out.__setitem__(0, generate_many(a, reqs)))
    t.start()
    before = a.svc.slot(stage)
    time.sleep(0.4)  # the 8 requests are queued along the pipeline by now
    os.kill(before["pid"], signal.SIGKILL)
    t.join(180 * SLOW)
    assert not t.is_alive(), "requests hung after the kill"
    results = out[0]
    ok = 0
    for (status, body), req in zip(results, reqs):
        # one kill: every lost job is retried once, and a retry cannot be lost again by it
        assert status == 200, (status, body)
        ok += 1
        assert image_of(body) == cli_png(tmp_path, req["prompt"], req["seed"], size="256x256",
                                         steps=20), f"wrong image for seed {req['seed']}"
    retried = parse_metrics(a.request("GET", "/metrics")[2].decode()).get(
        ("diffusiond_jobs_total", (("event", "retried"),)), 0)
    print(f"{stage}: {ok}/8 images, {retried} jobs retried")
    assert retried >= 1, "the kill hit no job in flight: the test proved nothing"
    wait_for(lambda: (s := a.svc.slot(stage)) and s.get("ready") and s["gen"] > before["gen"],
             20, f"{stage} restarted")
    # the service still serves
    status, _, body = a.generate(timeout=60, prompt="after", size="32x32", num_inference_steps=2)
    assert status == 200
    assert_clean_stop(a)


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight(real):
    a = real(drain_timeout_ms=60000)
    reqs = [dict(prompt=f"drain {i}", size="128x128", num_inference_steps=10, seed=i)
            for i in range(8)]
    out = [None]
    t = threading.Thread(target=lambda: out.__setitem__(0, generate_many(a, reqs)))
    t.start()
    time.sleep(0.3)
    a.svc.signal(signal.SIGTERM)
    t.join(120 * SLOW)
    assert not t.is_alive()
    assert [s for s, _ in out[0]] == [200] * 8, out[0]
    assert_clean_stop(a)


def test_one_step_with_shift_terminal_is_the_clients_error(real):
    """Qwen-Image's scheduler config (shift_terminal) has no schedule for one step (the
    reference divides 0 by 0): a 400 naming it, not a 500."""
    a = real()
    status, _, body = a.generate(timeout=60, prompt="x", size="32x32", num_inference_steps=1)
    assert status == 400 and "no usable schedule for 1 step" in body["error"]["message"], body


@pytest.mark.slow
def test_reload_with_requests_in_flight_loses_none(real):
    """SIGHUP with a changed [server] replaces every stage (RETIRING): the requests in flight
    still get their images; a retired process's exit is not taken for a lost job."""
    a = real()
    reqs = [dict(prompt=f"reload {i}", size="128x128", num_inference_steps=10, seed=300 + i)
            for i in range(8)]
    out = [None]
    t = threading.Thread(target=lambda: out.__setitem__(0, generate_many(a, reqs)))
    t.start()
    time.sleep(0.3)
    with open(a.svc.config_path) as f:
        text = f.read()
    a.svc.write_config(text.replace("heartbeat_ms = 100", "heartbeat_ms = 120"))
    a.svc.signal(signal.SIGHUP)
    t.join(120 * SLOW)
    assert not t.is_alive()
    assert [s for s, _ in out[0]] == [200] * 8, out[0]
    # the ingress is replaced too: between the old one's exit and the new one's listen,
    # connections are refused for a moment

    def ready():
        try:
            return a.request("GET", "/ready", timeout=2)[0] == 200
        except OSError:
            return False
    wait_for(ready, 30, "ready after the reload")


@pytest.mark.slow
def test_kill_ingress_with_requests_in_flight(real):
    """kill -9 of the ingress: its clients' connections die with it (no process can answer
    them), but none hangs, the ingress comes back and serves, the stages drop the orphaned jobs
    (their origin was replaced: the cancel table says so), and nothing is left in /dev/shm."""
    a = real()
    reqs = [dict(prompt=f"orphan {i}", size="256x256", num_inference_steps=20, seed=400 + i)
            for i in range(8)]
    out = [None]
    t = threading.Thread(target=lambda: out.__setitem__(0, generate_many(a, reqs, timeout=60)))
    t.start()
    before = a.svc.slot("ingress")
    time.sleep(0.4)
    os.kill(before["pid"], signal.SIGKILL)
    t.join(120 * SLOW)
    assert not t.is_alive(), "a client hung after the ingress died"
    for status, body in out[0]:
        assert status in (0, 200, 503), (status, body)  # 0: the connection died with it
    print("statuses after the ingress kill:", [s for s, _ in out[0]])
    wait_for(lambda: (s := a.svc.slot("ingress")) and s.get("ready") and s["gen"] > before["gen"],
             20, "ingress restarted")

    def served():
        try:
            return a.generate(timeout=60, prompt="after", size="32x32",
                              num_inference_steps=2)[0] == 200
        except OSError:
            return False
    wait_for(served, 30, "a request served by the new ingress")
    assert_clean_stop(a)


def test_client_gone_stops_the_vae_between_blocks(real):
    """A client that disconnects while the VAE decodes its image (1024x1024: seconds on this
    model) is not decoded to the end: the VAE stops between its blocks (the model stages'
    context asks the cancel table) and drops the job, which never reaches encode."""
    a = real(log_level="debug")
    body = json.dumps(dict(prompt="gone", size="1024x1024", num_inference_steps=2,
                           seed=11)).encode()
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: "
              b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    started = re.compile(r"vae: job (\d+) computing$", re.M)
    wait_for(lambda: started.search(a.svc.log_text()), 60, "the VAE to start the job")
    job = started.search(a.svc.log_text()).group(1)
    s.close()
    dropped = re.compile(rf"vae: job {job} dropped: vae: cancelled$", re.M)
    wait_for(lambda: dropped.search(a.svc.log_text()), 30, "the VAE to drop the job")
    assert not re.search(rf"encode: job {job} computing", a.svc.log_text())
    assert a.generate(prompt="after", size="32x32", num_inference_steps=2, timeout=60)[0] == 200
    samples = parse_metrics(a.request("GET", "/metrics")[2].decode())
    assert samples[("diffusiond_jobs_total", (("event", "cancelled"),))] == 1


def test_batch_keys_change_nothing_and_say_so(api):
    """batch_size and batch_wait_ms are reserved: a model stage given them warns that it still
    computes one job at a time, and serves."""
    stages = real_stages()
    for name, _, extra in stages:
        if name == "denoise":
            extra.update(batch_size=4, batch_wait_ms=20)
    a = api(stages=stages, model=MODEL)
    assert "batch_size = 4, batch_wait_ms = 20 change nothing" in a.svc.log_text()
    assert a.generate(prompt="one at a time", size="32x32", num_inference_steps=2,
                      timeout=60)[0] == 200


def test_a_stage_holds_two_jobs_at_most(real):
    """A model stage takes a job while it computes one and holds one more at most: the rest
    wait in ZeroMQ, where the other replicas and the senders' backpressure can see them."""
    a = real(log_level="debug")
    status, _, body = a.generate(prompt="eight", size="64x64", num_inference_steps=4, n=8,
                                 timeout=120)
    assert status == 200 and len(body["data"]) == 8
    held = [int(m) for m in re.findall(r"job \d+ taken, (\d+) held$", a.svc.log_text(), re.M)]
    assert len(held) == 4 * 8  # every image through each of the four model stages
    assert max(held) <= 2, held


def test_a_pool_too_small_for_the_limits_is_a_config_error(api):
    """A model stage whose pool cannot take the outputs of the largest job the request limits
    allow refuses to start, naming pool_size (rather than computing such a job and failing
    it): the service stays up and says it is not ready."""
    stages = real_stages()
    for name, _, extra in stages:
        if name == "vae":
            extra["pool_size"] = "8M"  # a 2048x2048 image is 12 MiB of 8-bit RGB
    a = api(stages=stages, model=MODEL, wait_ready=False)
    wait_for(lambda: "raise the vae stage's pool_size" in a.svc.log_text(), 30,
             "the vae stage to refuse its pool")
    status, _, body = a.json("GET", "/ready")
    assert status == 503, body
    assert a.request("GET", "/health")[0] == 200
