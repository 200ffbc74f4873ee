"""Generation through the real ingress with stand-in model stages: OpenAI's client library,
retries after a stage is killed, and the stages' view of the jobs."""
import base64
import os
import signal
import threading
import time

import pytest

from conftest import gen_stages, wait_for, SLOW
from test_api import image_size, parse_metrics


def test_openai_client_round_trip(api):
    openai = pytest.importorskip("openai", reason="the openai package is not installed "
                                 "(pip install openai; .ci/run installs it)")
    a = api(http_api_keys="tok", auth_headers={"Authorization": "Bearer tok"})
    client = openai.OpenAI(base_url=a.base + "/v1", api_key="tok", max_retries=0)
    r = client.images.generate(prompt="a lighthouse", n=2, size="64x48", output_format="webp",
                               extra_body={"seed": 3, "num_inference_steps": 2})
    assert len(r.data) == 2 and r.output_format == "webp" and r.size == "64x48"
    assert r.created > 0 and r.usage is not None
    for d in r.data:
        assert image_size(base64.b64decode(d.b64_json)) == ("webp", 64, 48)
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", response_format="url")
    assert "b64_json" in str(e.value)
    bad = openai.OpenAI(base_url=a.base + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(prompt="x")


def kill_stage(svc, stage):
    slot = svc.slot(stage)
    os.kill(slot["pid"], signal.SIGKILL)
    return slot["gen"]


@pytest.mark.slow
def test_killed_stage_job_is_retried(api):
    """A stage SIGKILLed while it holds the job loses it without an answer: ingress sees the
    restart in the roster and sends the job again (attempt 1); the client gets its image."""
    a = api(stages=gen_stages(delay_ms=1500))
    out = []
    t = threading.Thread(target=lambda: out.append(a.generate(seed=11, size="32x32")))
    t.start()
    wait_for(lambda: any(l.startswith("gen step=denoise") for l in a.svc.stage_log("denoise")),
             10, "the job at denoise")
    wait_for(lambda: a.svc.slot("denoise") and a.svc.slot("denoise").get("pid"), 5, "a pid")
    kill_stage(a.svc, "denoise")
    t.join(30 * SLOW)
    status, _, body = out[0]
    assert status == 200, body
    assert image_size(base64.b64decode(body["data"][0]["b64_json"])) == ("png", 32, 32)
    lines = a.svc.stage_log("denoise")
    assert any("attempt=1" in l for l in lines if l.startswith("gen step=denoise"))
    samples = parse_metrics(a.request("GET", "/metrics")[2].decode())
    assert samples[("diffusiond_jobs_total", (("event", "retried"),))] >= 1
    # stage_peer_gen: the restarted denoise has the newest generation (6 processes before it)
    assert samples[("diffusiond_stage_generation", (("stage", "denoise"),))] > 5


def test_retry_once_then_503(api):
    """Killed twice in a row, the job is answered 503 rather than retried forever."""
    a = api(stages=gen_stages(delay_ms=1500))
    out = []
    t = threading.Thread(target=lambda: out.append(a.generate(size="32x32")))
    t.start()
    for attempt in (0, 1):
        wait_for(lambda: any(l.startswith("gen step=denoise") and f"attempt={attempt}" in l
                             for l in a.svc.stage_log("denoise")), 15, f"attempt {attempt}")
        wait_for(lambda: (s := a.svc.slot("denoise")) and s.get("ready"), 10, "denoise ready")
        kill_stage(a.svc, "denoise")
    t.join(30 * SLOW)
    status, hdrs, body = out[0]
    assert status == 503 and body["error"]["code"] == "unavailable" and "Retry-After" in hdrs
    assert a.alive()
