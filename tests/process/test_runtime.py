"""The runtime as a whole: supervisor, stage skeleton, pools, protocol, systemd notifications.

Every test starts the real diffusiond with the test stages (tests/stages/teststage.c) and checks
what the processes did: their logs, status.json, the NOTIFY_SOCKET messages and /dev/shm.
"""
import os
import signal
import subprocess
import time

import pytest

from conftest import DIFFUSIOND, REPO, SLOW, pipeline, shm_segments, wait_for


def done_ids(svc):
    return {int(e["id"]) for e in svc.events("source", "done") if e["ok"]}


def test_large_tensor_crosses_three_stages_by_reference(service):
    """A 64 MiB tensor goes source -> relay -> sink -> source without a copy: every stage sees
    it in the same segment at the same offset, and the sink's write shows in the source."""
    jobs = 6
    svc = service(pipeline(f"--jobs {jobs} --bytes 64M --inflight 2"))
    svc.wait_ready()
    assert svc.notify.has("READY=1")
    assert any(line.startswith("STATUS=") for line in svc.notify.lines())
    wait_for(lambda: len(done_ids(svc)) == jobs, 30, "every job back at the source")

    sent = {e["id"]: e for e in svc.events("source", "sent")}
    relay = {e["id"]: e for e in svc.events("relay", "relay")}
    sink = {e["id"]: e for e in svc.events("sink", "sink")}
    done = {e["id"]: e for e in svc.events("source", "done")}
    assert len(sent) == jobs
    for i, s in sent.items():
        # the source's segment, and the same byte offset in it, at every stage
        assert s["seg"].startswith(f"/diffusiond.{svc.instance}.0.")
        for seen in (relay[i], sink[i], done[i]):
            assert (seen["seg"], seen["at"]) == (s["seg"], s["at"])
        assert relay[i]["ok"] and sink[i]["ok"]
        # "ok" at the source means it read the sink's mark in its own mapping: shared memory
        assert done[i]["ok"]

    assert svc.stop() == 0
    wait_for(lambda: svc.notify.has("STOPPING=1"), 5, "STOPPING=1")
    assert shm_segments(svc.instance) == []


def test_kill9_middle_stage_restarts_and_blocks_are_reclaimed(service):
    jobs = 30
    svc = service(pipeline(f"--jobs {jobs} --bytes 1M --inflight 8 --retry-ms 1500",
                           relay_args="--role relay --delay-ms 100", pool="64M"))
    svc.wait_ready()
    wait_for(lambda: len(svc.events("relay", "relay")) >= 3, 10, "the relay at work")
    before = svc.slot("relay")
    os.kill(before["pid"], signal.SIGKILL)

    wait_for(lambda: (s := svc.slot("relay")) and s["gen"] != before["gen"] and s["ready"],
             10, "a new relay")
    after = svc.slot("relay")
    assert after["restarts"] == 1 and after["pid"] != before["pid"]
    log = svc.log_text()
    assert "relay.0 (pid %d) killed by signal 9" % before["pid"] in log
    assert "restarting relay.0 in 100 ms" in log  # the first step of the backoff

    # Every job ends with a correct result: those lost with the relay were retried.
    wait_for(lambda: len(done_ids(svc)) == jobs, 30, "every job done")
    assert all(e["ok"] for e in svc.events("source", "done"))
    assert svc.events("source", "retry"), "no job was in flight at the relay when it died"
    # The blocks the dead relay held went back to the source's pool.
    wait_for(lambda: (s := svc.slot("source")) and s["pool_used"] == 0 and s["inflight"] == 0,
             10, "the source's pool empty again")
    assert "source.0: reclaimed" in log or "source.0: reclaimed" in svc.log_text()

    assert svc.stop() == 0
    assert shm_segments(svc.instance) == []


def test_sigterm_drains_jobs_in_flight_and_exits_0(service):
    svc = service(pipeline("--jobs 1000 --bytes 1M --inflight 8",
                           relay_args="--role relay --delay-ms 50", pool="64M"))
    svc.wait_ready()
    wait_for(lambda: len(svc.events("relay", "relay")) >= 4, 10, "jobs in flight")
    svc.signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=15 * SLOW) == 0
    wait_for(lambda: svc.notify.has("STOPPING=1"), 5, "STOPPING=1")
    sent = {e["id"] for e in svc.events("source", "sent")}
    done = {e["id"] for e in svc.events("source", "done") if e["ok"]}
    assert sent and sent == done, f"jobs lost in the drain: {sorted(sent - done)}"
    assert len(sent) < 1000  # it stopped taking new work
    assert "exit outstanding=0" in svc.stage_log("source")[-1]
    assert shm_segments(svc.instance) == []
    assert not os.path.exists(os.path.join(svc.runtime_dir, "control"))


def test_sighup_with_bad_config_keeps_running(service):
    svc = service(pipeline("--jobs 0 --interval-ms 50 --bytes 64K", pool="16M"))
    svc.wait_ready()
    pids = {s["stage"]: s["pid"] for s in svc.status()["slots"]}
    good = open(svc.config_path).read()
    svc.write_config(good.replace("[stage.relay]", "[stage.relay]\nreplicas = many"))
    svc.signal(signal.SIGHUP)
    wait_for(lambda: "keeping the running config" in svc.log_text(), 5, "the reload refused")
    wait_for(lambda: svc.notify.has("RELOADING=1"), 5, "RELOADING=1")
    assert "replicas" in svc.log_text()  # the message names the key
    time.sleep(0.3)
    assert svc.proc.poll() is None
    assert {s["stage"]: s["pid"] for s in svc.status()["slots"]} == pids
    n = len(done_ids(svc))
    wait_for(lambda: len(done_ids(svc)) > n + 2, 5, "jobs still flowing")

    # A good config that changes one stage restarts that stage only.
    svc.write_config(good.replace("--role relay", "--role relay --delay-ms 1"))
    svc.signal(signal.SIGHUP)
    wait_for(lambda: (s := svc.slot("relay")) and s["pid"] != pids["relay"] and s["ready"], 10,
             "the changed relay restarted")
    assert svc.slot("source")["pid"] == pids["source"]
    assert svc.slot("sink")["pid"] == pids["sink"]
    assert svc.slot("relay")["restarts"] == 0  # a reload is not a crash
    assert svc.stop() == 0


def test_bad_config_exit_is_not_restarted_and_its_jobs_fail_fast(service):
    # The sink rejects its arguments and exits 2.
    svc = service(pipeline("--jobs 5 --bytes 64K", sink_args="--role nonsense"))
    wait_for(lambda: "sink.0 exited with a bad config: not restarting" in svc.log_text(), 10,
             "the bad-config exit")
    wait_for(lambda: (s := svc.slot("sink")) and s["run"] == "failed", 5, "status: failed")
    assert svc.slot("sink")["restarts"] == 1
    assert "restarting sink" not in svc.log_text()
    assert not svc.notify.has("READY=1")  # not every stage is ready
    # Jobs for a failed stage come back to their origin as failures instead of waiting.
    wait_for(lambda: len(svc.events("source", "failed")) == 5, 10, "every job failed back")
    assert all("stage sink cannot take it" in line
               for line in svc.stage_log("source") if line.startswith("failed"))
    # A reload tries the failed stage again; the service, never ready, must not say READY=1.
    svc.signal(signal.SIGHUP)
    wait_for(lambda: svc.log_text().count("exited with a bad config") == 2, 10, "the retry")
    wait_for(lambda: svc.notify.has("RELOADING=1"), 5, "RELOADING=1")
    assert not svc.notify.has("READY=1")
    assert svc.proc.poll() is None
    t0 = time.monotonic()
    assert svc.stop() == 0
    assert "drain timed out" not in svc.log_text()  # nothing was left waiting
    assert time.monotonic() - t0 < 5 * SLOW
    time.sleep(0.2)  # let the reader thread take whatever came last
    assert not svc.notify.has("READY=1")


def test_stage_dying_before_first_job_is_throttled_and_budgeted(service):
    stages = pipeline("--jobs 0")
    stages[2] = ("sink", "", {"program": "program = /bin/false"})  # exits 1 at once
    svc = service(stages, throttle_ms=600, restart_budget=3)
    wait_for(lambda: "died 3 times within" in svc.log_text(), 15, "the restart budget spent")
    log = svc.log_text()
    assert "restarting sink.0 in 600 ms (throttled: it died before its first job)" in log
    starts = [line for line in log.splitlines() if "sink.0 (pid" in line and "exited with 1" in line]
    assert len(starts) == 4  # the first run and three restarts
    wait_for(lambda: svc.slot("sink")["run"] == "failed", 5, "status: failed")
    assert svc.stop() == 0


def test_stages_exit_when_the_supervisor_dies(service):
    svc = service(pipeline("--jobs 0 --interval-ms 50 --bytes 64K", pool="16M"))
    svc.wait_ready()
    pids = [s["pid"] for s in svc.status()["slots"]]
    svc.proc.kill()
    svc.proc.wait()

    def all_gone():
        for pid in pids:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True

    wait_for(all_gone, 5, "stages to exit")
    # Stages exit cleanly on the parent-death signal and remove their own segments.
    wait_for(lambda: shm_segments(svc.instance) == [], 5, "segments removed")


def test_watchdog_pings_only_while_stages_heartbeat(service):
    svc = service(pipeline("--jobs 0", pool="16M"), env={"WATCHDOG_USEC": "400000"},
                  heartbeat_timeout_ms=1500)
    svc.wait_ready()
    wait_for(lambda: svc.notify.lines().count("WATCHDOG=1") >= 3, 3, "watchdog pings")
    relay = svc.slot("relay")
    t_stop = time.monotonic()
    os.kill(relay["pid"], signal.SIGSTOP)  # alive but silent
    try:
        wait_for(lambda: "sent no heartbeat" in svc.log_text(), 5, "the hung stage killed")
        wait_for(lambda: (s := svc.slot("relay")) and s["pid"] != relay["pid"] and s["ready"], 10,
                 "the relay replaced")
        n = svc.notify.lines().count("WATCHDOG=1")
        wait_for(lambda: svc.notify.lines().count("WATCHDOG=1") > n + 2, 3, "pings again")
    finally:
        try:
            os.kill(relay["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    # Pings come every 0.2 s while stages heartbeat; they paused once the relay's heartbeat
    # was overdue (0.3 s) until it was killed (1.5 s) and replaced.
    pings = [t for t, m in svc.notify.snapshot() if "WATCHDOG=1" in m and t > t_stop]
    gaps = [b - a for a, b in zip([t_stop] + pings, pings)]
    assert max(gaps) > 0.8, f"pings went on while a stage was silent: {gaps}"
    assert svc.stop() == 0


def test_config_check_flag(tmp_path):
    good = subprocess.run([DIFFUSIOND, "-t", "-c", os.path.join(REPO, "conf/diffusiond.conf")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("[server]\nheartbeat_ms = 100\n\n[stage.a]\nthreads = -4\n")
    r = subprocess.run([DIFFUSIOND, "-t", "-c", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{bad}:5:" in r.stderr and "threads" in r.stderr
    missing = subprocess.run([DIFFUSIOND, "-t", "-c", str(tmp_path / "nope.conf")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "No such file" in missing.stderr


@pytest.mark.parametrize("text,message", [
    ("[stage.ingress]\nreplicas = 2\npool_size = 0\n", "[stage.ingress] replicas: 2"),
    ("[stage.text]\npool_size = 0\n", "[stage.text] pool_size: 0"),
    ("[server]\nhttp_api_key_file = /nonexistent/keys\n[stage.ingress]\npool_size = 0\n",
     "http_api_key_file: cannot read /nonexistent/keys"),
])
def test_config_check_refuses_a_pipeline_that_cannot_get_ready(tmp_path, text, message):
    """One ingress (one socket), a readable key file, a pool for each model stage: checked by
    -t and at start, not found by a stage that exits 2 later."""
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    r = subprocess.run([DIFFUSIOND, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_replicas_share_work_and_results_return_to_their_origin(service):
    """Two sources, two relays: jobs spread over the relays, and each result comes back to the
    source replica that made it (it would hold the client), never to the other one."""
    jobs = 12
    stages = pipeline(f"--jobs {jobs} --bytes 64K --inflight 4", pool="16M")
    stages[0][2]["replicas"] = 2
    stages[1][2]["replicas"] = 2
    svc = service(stages)
    svc.wait_ready()
    for r in (0, 1):
        wait_for(lambda: len([e for e in svc.events("source", "done", r) if e["ok"]]) == jobs, 20,
                 f"source.{r}'s jobs")
    for r in (0, 1):
        sent = {e["id"]: e["seg"] for e in svc.events("source", "sent", r)}
        done = {e["id"]: e["seg"] for e in svc.events("source", "done", r)}
        assert sent == done  # its own jobs, in its own segment
        assert all(seg.startswith(f"/diffusiond.{svc.instance}.{r}.") for seg in sent.values())
        assert not svc.events("source", "stale", r)
    relayed = [len(svc.events("relay", "relay", r)) for r in (0, 1)]
    assert sum(relayed) == 2 * jobs and min(relayed) > 0, relayed
    assert svc.stop() == 0
    assert shm_segments(svc.instance) == []


def test_origin_ahead_of_a_slow_pipeline_does_not_deadlock(service):
    """Many jobs in flight, short queues and a slow sink: the origin's sends wait for room, and
    the results it must read to make room still come in."""
    jobs = 300
    stages = pipeline(f"--jobs {jobs} --bytes 4K --inflight 200", sink_args="--role sink --delay-ms 1",
                      pool="64M")
    stages[1][2]["queue_depth"] = 2
    stages[2][2]["queue_depth"] = 2
    svc = service(stages)
    svc.wait_ready()
    wait_for(lambda: len(done_ids(svc)) == jobs, 30, "every job done")
    assert svc.stop() == 0


def test_restarted_origin_never_gets_its_predecessors_results(service):
    svc = service(pipeline("--jobs 40 --bytes 64K --inflight 8",
                           relay_args="--role relay --delay-ms 30", pool="16M"))
    svc.wait_ready()
    wait_for(lambda: len(svc.events("relay", "relay")) >= 4, 10, "jobs in flight")
    old = svc.slot("source")
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: (s := svc.slot("source")) and s["gen"] != old["gen"] and s["ready"], 10,
             "a new source")
    new_gen = svc.slot("source")["gen"]
    # The new source makes ids 0..39 again: every result it counts must be one of its own.
    wait_for(lambda: sum(1 for line in svc.stage_log("source") if line.startswith("done"))
             >= 40 + 0, 20, "the new source's jobs")  # noqa: E501
    lines = svc.stage_log("source")
    start = lines.index(f"start gen={new_gen}")
    sent = set()
    for line in lines[start:]:
        kind, fields = line.split()[0], dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
        if kind == "sent":
            sent.add((fields["id"], fields["seg"]))
        elif kind in ("done", "failed", "stale"):
            assert kind != "stale", line
            if kind == "done":
                assert (fields["id"], fields["seg"]) in sent, f"not this source's job: {line}"
                assert line.endswith(" ok"), line
    assert svc.stop() == 0
    assert shm_segments(svc.instance) == []


def test_second_supervisor_for_the_same_instance_is_refused(service):
    first = service(pipeline("--jobs 0", pool="16M"))
    first.wait_ready()
    second = service(pipeline("--jobs 0", pool="16M"), start=False)
    second.write_config(open(first.config_path).read().replace(first.runtime_dir,
                                                              second.runtime_dir))
    second.start()
    assert second.proc.wait(timeout=10 * SLOW) == 1
    assert f"another diffusiond runs instance '{first.instance}'" in second.log_text()
    assert len(shm_segments(first.instance)) == 1  # the first one's pool is untouched
    assert first.proc.poll() is None
    assert first.stop() == 0


def test_reload_restarting_a_stage_with_jobs_in_flight_loses_none(service):
    """A reload changes the relay's config while many jobs are in flight: the relay retires
    (senders stop sending it work, it finishes what it has), its successor takes over, and
    every job ends done with no retry and no failure."""
    jobs = 200
    svc = service(pipeline(f"--jobs {jobs} --bytes 16K --inflight 32",
                           relay_args="--role relay --delay-ms 5", pool="16M"))
    svc.wait_ready()
    wait_for(lambda: len(svc.events("relay", "relay")) >= 20, 10, "jobs at the relay")
    old = svc.slot("relay")
    svc.write_config(open(svc.config_path).read().replace("--delay-ms 5", "--delay-ms 4"))
    svc.signal(signal.SIGHUP)
    wait_for(lambda: len(done_ids(svc)) == jobs, 30, "every job done")
    assert not svc.events("source", "failed")
    new = svc.slot("relay")
    assert new["gen"] != old["gen"] and new["restarts"] == 0
    log = svc.log_text()
    assert "relay.0: retiring" in log and "relay.0: retired" in log
    assert svc.stop() == 0
    assert shm_segments(svc.instance) == []


def test_blocks_of_a_stage_that_failed_for_good_are_reclaimed(service):
    svc = service(pipeline("--jobs 100000 --bytes 1M --inflight 8 --retry-ms 300",
                           relay_args="--role relay --delay-ms 50", pool="32M"),
                  restart_budget=1)
    svc.wait_ready()
    killed = set()
    for _ in range(2):  # the second death spends the budget
        n = len(svc.events("relay", "relay"))
        wait_for(lambda: len(svc.events("relay", "relay")) >= n + 3, 10, "the relay at work")
        pid = svc.slot("relay")["pid"]
        assert pid not in killed
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        wait_for(lambda: svc.slot("relay")["pid"] != pid, 5, "the death seen")
    wait_for(lambda: svc.slot("relay")["run"] == "failed", 10, "the relay failed for good")
    # It died holding blocks of the source's pool: the source reclaims them although the
    # failed slot keeps the dead process's generation, and its jobs now fail back at once.
    wait_for(lambda: svc.events("source", "failed"), 5, "jobs failing back")
    wait_for(lambda: svc.slot("source")["pool_used"] == 0, 5, "the source's pool empty")
    assert "source.0: reclaimed" in svc.log_text()
    assert svc.stop() == 0


def test_drain_does_not_wait_for_a_stage_that_is_down(service):
    # A job lost inside the killed sink can only end by the source's own timeout (500 ms);
    # jobs held for the sink elsewhere must fail back at once.
    svc = service(pipeline("--jobs 100000 --inflight 4 --retry-ms 500 --bytes 64K", pool="16M"),
                  restart_backoff_ms=20000, restart_backoff_max_ms=20000)
    svc.wait_ready()
    wait_for(lambda: len(done_ids(svc)) >= 2, 10, "jobs done")
    os.kill(svc.slot("sink")["pid"], signal.SIGKILL)
    wait_for(lambda: "restarting sink.0 in 20000 ms" in svc.log_text(), 5, "the sink down")
    time.sleep(0.2)
    t0 = time.monotonic()
    assert svc.stop() == 0
    assert time.monotonic() - t0 < 4 * SLOW
    assert "drain timed out" not in svc.log_text()


def test_second_supervisor_in_the_same_runtime_dir_is_refused(service):
    first = service(pipeline("--jobs 0", pool="16M"))
    first.wait_ready()
    second = service(pipeline("--jobs 0", pool="16M"), start=False)
    second.write_config(open(second.config_path).read().replace(second.runtime_dir,
                                                                first.runtime_dir))
    second.start()
    assert second.proc.wait(timeout=10 * SLOW) == 1
    assert f"another diffusiond uses the runtime directory {first.runtime_dir}" in second.log_text()
    assert first.proc.poll() is None and first.slot("source")["ready"]
    assert first.stop() == 0
