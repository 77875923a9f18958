"""A real two-node local Ray cluster on 127.0.0.1 (``ray start --head`` plus a second
``ray start --address`` with a custom resource): a sweep joined with ``--address`` runs
on both nodes, and a cluster without the requested resources is one clear line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from study_cases import env, run

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray(*args: str, cluster_env: dict[str, str]) -> None:
    res = subprocess.run([RAY, *args], env=cluster_env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not os.path.exists(RAY):
        pytest.skip("the ray command is not installed next to this python")
    e = env()
    e["RAY_AUTH_MODE"] = "disabled"  # a throw-away cluster on the loopback address
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    try:
        _ray("start", "--head", f"--port={port}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", cluster_env=e)
        _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"node2": 1}',
             "--node-ip-address=127.0.0.1", "--disable-usage-stats", cluster_env=e)
        yield f"127.0.0.1:{port}", e
    finally:
        _stop_cluster(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def _stop_cluster(temp: str) -> None:
    """Kill this test's cluster only: the processes whose command line names its temp dir.
    (``ray stop --force`` kills every Ray on the machine, a user's running sweep included.)"""
    import signal
    import time

    def ours() -> list[int]:
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as fh:
                        if temp.encode() in fh.read():
                            pids.append(int(d))
                except OSError:
                    pass
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while ours() and time.monotonic() < deadline:
            time.sleep(0.5)


def _sweep(args: list[str], cluster_env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    from study_cases import ROOT, stllr_cmd

    return subprocess.run(stllr_cmd(*args), cwd=ROOT, env=cluster_env, capture_output=True, text=True,
                          timeout=timeout)


def test_sweep_runs_on_both_nodes(cluster, study_file, tmp_path):
    address, cluster_env = cluster
    path = study_file(budget={"trials": 4, "epochs": 1, "seeds": [0, 1]}, sampler={"name": "random", "seed": 0})
    folder = tmp_path / "study"
    res = _sweep(["sweep", str(path), "--out", str(folder), "--address", address, "--quiet", "--no-report"],
                 cluster_env)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_parquet(folder / "results.parquet")
    assert set(df.status) == {"complete"}
    nodes = df.node.unique()
    assert len(nodes) == 2, nodes  # runs landed on the head and on the second node
    assert all(":" in n for n in nodes)


def test_cluster_without_the_resources_is_one_line(cluster, study_file, tmp_path):
    address, cluster_env = cluster
    path = study_file(resources={"cpu": 4, "gpu": 0})
    res = _sweep(["sweep", str(path), "--out", str(tmp_path / "s"), "--address", address], cluster_env, timeout=120)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "each trial needs 4 CPU and 0 GPU but no node of the cluster has that" in line
    assert not (tmp_path / "s").exists()  # refused before its first run: no study left behind


_HOLDER = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=1)
class Hold:
    def ping(self):
        return 1
held = [Hold.remote() for _ in range(2)]
ray.get([h.ping.remote() for h in held])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_progress_says_it_waits_for_resources_held_by_other_jobs(cluster, study_file, tmp_path):
    """Another job holds every CPU of the cluster: the sweep says what it waits for, then runs."""
    address, cluster_env = cluster
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, address, "25"], env=cluster_env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        path = study_file(budget={"trials": 1, "epochs": 1, "seeds": [0]}, rules=["stllr"], baseline=None,
                          sampler={"name": "random", "seed": 0})
        res = _sweep(["sweep", str(path), "--out", str(tmp_path / "s"), "--address", address, "--no-report"],
                     cluster_env)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 0, res.stderr[-3000:]
    waiting = [ln for ln in res.stdout.splitlines() if "waiting for resources" in ln]
    assert waiting, res.stdout
    assert waiting[0].endswith("waiting for resources: a trial needs 1 CPU; CPU 0 of 2 free")
    assert "running 0" in waiting[0]
    assert pd.read_parquet(tmp_path / "s" / "results.parquet").status.tolist() == ["complete"]


def test_export_of_a_folder_that_is_not_a_study():
    # the study package imports without Ray running (reading results needs pandas only)
    out = run("export", "/nonexistent-study-folder")
    assert out.returncode == 2 and "is not a study folder" in out.stderr
