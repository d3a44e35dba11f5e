"""Behaviour on a shared machine: thread counts sized to the CPUs this process may use (affinity,
cgroup quota), and --quiet runs that still report progress once per interval."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from cat_apps import _threads, quantize
from cat_apps._quiet import QuietProgress


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_cgroup_v2_quota_takes_the_tightest_level(tmp_path):
    _write(tmp_path / "a" / "cpu.max", "150000 100000\n")
    _write(tmp_path / "a" / "b" / "cpu.max", "max 100000\n")
    assert _threads.cgroup_cpus(tmp_path, "0::/a/b\n") == pytest.approx(1.5)
    _write(tmp_path / "a" / "b" / "cpu.max", "50000 100000\n")
    assert _threads.cgroup_cpus(tmp_path, "0::/a/b\n") == pytest.approx(0.5)


def test_cgroup_v1_quota(tmp_path):
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "300000\n")
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    assert _threads.cgroup_cpus(tmp_path, "4:cpu,cpuacct:/job\n3:memory:/job\n") == pytest.approx(3.0)
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "-1\n")  # unlimited
    assert _threads.cgroup_cpus(tmp_path, "4:cpu,cpuacct:/job\n") is None


def test_no_cgroup_quota(tmp_path):
    assert _threads.cgroup_cpus(tmp_path, "0::/\n") is None
    assert _threads.cgroup_cpus(tmp_path, "") is None


def test_available_cpus_is_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(_threads, "_affinity", lambda: 16)
    monkeypatch.setattr(_threads, "cgroup_cpus", lambda: 2.5)
    assert _threads.available_cpus() == 3
    monkeypatch.setattr(_threads, "cgroup_cpus", lambda: 0.2)
    assert _threads.available_cpus() == 1
    monkeypatch.setattr(_threads, "cgroup_cpus", lambda: None)
    assert _threads.available_cpus() == 16
    monkeypatch.setattr(_threads, "_affinity", lambda: 2)
    monkeypatch.setattr(_threads, "cgroup_cpus", lambda: 8.0)
    assert _threads.available_cpus() == 2


def test_affinity_is_what_this_process_may_use():
    if hasattr(os, "sched_getaffinity"):
        assert _threads._affinity() == len(os.sched_getaffinity(0))


def test_configure_sets_defaults_but_the_user_wins(monkeypatch):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 3)
    env: dict = {}
    assert _threads.configure(env) == 3
    assert env["OMP_NUM_THREADS"] == "3" and env["CAT_KERNELS_NUM_THREADS"] == "3"
    env = {"OMP_NUM_THREADS": "1"}
    _threads.configure(env)
    assert env["OMP_NUM_THREADS"] == "1" and env["CAT_KERNELS_NUM_THREADS"] == "3"


def test_threads_of_a_fresh_front_end_process_follow_the_cpus_it_may_use(tmp_path):
    """In a new process (torch not yet imported) the front-end's setting reaches torch."""
    import subprocess

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and at least 2 CPUs to pin a child to one")
    repo = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CAT_KERNELS_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "packages/cat-core/src"), str(repo / "packages/cat-apps/src")])
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from cat_apps import _threads; _threads.configure(); import torch; "
            "print(torch.get_num_threads(), os.environ['CAT_KERNELS_NUM_THREADS'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1"]


# ----------------------------------------------------------------------------- --quiet progress


def test_quiet_progress_reports_the_latest_bar_state(capsys):
    from tqdm.auto import tqdm

    with QuietProgress("cat-x", interval=0.05):
        bar = tqdm(total=7, desc="AWQ", unit="block")
        for _ in range(3):
            bar.update(1)
            time.sleep(0.12)  # past tqdm's 0.1 s redraw interval
        bar.refresh()
        time.sleep(0.15)
        print("a warning line", file=sys.stderr)
        bar.close()
    err = capsys.readouterr().err.splitlines()
    reports = [line for line in err if line.startswith("cat-x: ")]
    assert reports, err
    assert "AWQ: 43% 3/7" in reports[-1], reports[-1]
    assert "a warning line" in err
    assert not any("█" in line or "\r" in line for line in err), err


def test_quiet_progress_prints_nothing_in_a_short_run(capsys):
    with QuietProgress("cat-x", interval=30):
        from tqdm.auto import tqdm

        for _ in tqdm(range(3)):
            pass
    assert capsys.readouterr().err == ""


def test_quiet_quantize_still_reports_progress(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAT_QUIET_PROGRESS_S", "0.1")
    import cat_core.awq as awq

    real = awq.run_awq

    def slow(*a, **k):  # a search long enough to be reported, whatever the machine
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(awq, "run_awq", slow)
    rc = quantize.main([str(tiny_dir), "--n-samples", "2", "--seqlen", "16", "--no-quality",
                        "--out", str(tmp_path / "o"), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    reports = [line for line in cap.err.splitlines() if line.startswith("cat-quantize: ")]
    assert reports, cap.err
    assert all(" min " in line and " s: " in line for line in reports)
    assert not any("|" in line for line in cap.err.splitlines()), cap.err  # no bar was drawn


def test_waits_sleep_only_when_the_machine_is_busy(monkeypatch):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 2)
    env: dict = {}
    _threads.configure(env, busy=0.1)
    assert "OMP_WAIT_POLICY" not in env and "spin" in _threads.chosen
    env = {}
    _threads.configure(env, busy=1.0)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "sleep" in _threads.chosen
    env = {"GOMP_SPINCOUNT": "10000"}  # the user's setting wins
    _threads.configure(env, busy=1.0)
    assert "OMP_WAIT_POLICY" not in env


def test_busy_elsewhere_sees_a_cpu_burner():
    import subprocess

    if _threads.busy_elsewhere(0.05) is None:
        pytest.skip("needs /proc/stat")
    burner = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(0.3)
        busy = _threads.busy_elsewhere(0.5)
    finally:
        burner.kill()
        burner.wait()
    assert busy is not None and busy >= 0.7, busy
