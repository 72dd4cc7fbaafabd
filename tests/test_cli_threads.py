"""--threads N: the command reports the limits in force, and only N threads do the work (counted per thread)."""

import os
import re
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pytest
import torch

from _cli_helpers import export, run_cli
from scexplain._commands._threads import available_cores, limit_threads

TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """About two seconds of compute (one thread) for DeepSHAP (torch GEMMs) and TreeSHAP (numba prange)."""
    d = tmp_path_factory.mktemp("threads")
    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 1.0, (400, 200)).astype(np.float32)
    adata = ad.AnnData(x)
    adata.obs["group"] = x[:, :4].argmax(1).astype(str)
    adata.write_h5ad(d / "deep.h5ad")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(200, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 4))
    export(net, 200, d / "model.pt2")
    rep = rng.gamma(1.0, 1.0, (2000, 12))
    cells = ad.AnnData(np.zeros((2000, 1), np.float32), obsm={"X_rep": rep})
    cells.obs["group"] = rep[:, :4].argmax(1).astype(str)
    cells.write_h5ad(d / "tree.h5ad")
    from sklearn.ensemble import RandomForestClassifier
    from skops.io import dump

    forest = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0, n_jobs=1)
    dump(forest.fit(rep, cells.obs["group"]), d / "forest.skops")
    return d


COMMANDS = {
    "deep-shap": ["-i", "deep.h5ad", "--model", "model.pt2", "--groupby", "group", "--n-background", "60",
                  "--batch-size", "400"],
    "tree-shap": ["-i", "tree.h5ad", "--model", "forest.skops", "--use-rep", "X_rep", "--groupby", "group", "--target", "all",
                  "--interactions"],
}


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a running process (from /proc/PID/task/TID/stat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return out


def _run_counting_threads(workdir, command, threads):
    """Run the command; return (busy threads, CPU seconds per thread, wall seconds, stderr)."""
    argv = [sys.executable, "-m", "scexplain", command, "-o", f"out-{command}-{threads}.h5ad",
            *COMMANDS[command], "--threads", str(threads), "--verbose"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}
    while proc.poll() is None:
        try:
            for tid, cpu in _thread_cpu(proc.pid).items():
                seen[tid] = max(seen.get(tid, 0.0), cpu)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    assert proc.returncode == 0, err
    busy = [cpu for cpu in seen.values() if cpu >= 0.3]
    return busy, seen, wall, err


def _reported_limits(stderr: str, command: str) -> dict[str, int]:
    line = next(line for line in stderr.splitlines() if line.startswith(f"scexplain {command}: threads "))
    return {k: int(v) for k, v in re.findall(r"([\w:]+) (\d+)(?=,|\))", line)}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_threads_1_really_uses_one_thread(heavy, command):
    busy, seen, wall, err = _run_counting_threads(heavy, command, 1)
    limits = _reported_limits(err, command)
    pool = "torch" if command == "deep-shap" else "numba"
    assert limits[pool] == 1 and all(v == 1 for v in limits.values()), limits
    total = sum(seen.values())
    assert sum(busy) > 1.0, f"not compute-heavy enough: {sorted(seen.values())}"
    assert len(busy) == 1, f"{len(busy)} threads worked (CPU s per thread: {sorted(seen.values())})"
    print(f"{command} --threads 1: CPU {total:.1f} s over wall {wall:.1f} s, busy threads {len(busy)}")


@pytest.mark.slow
@pytest.mark.skipif(available_cores() < 2, reason="needs 2 cores to show a second thread working")
def test_threads_2_uses_a_second_thread(heavy):
    """The counter-check: the same run with two threads has two threads working (so the test above can fail)."""
    busy, seen, _, err = _run_counting_threads(heavy, "deep-shap", 2)
    assert _reported_limits(err, "deep-shap")["torch"] == 2
    assert len(busy) >= 2, f"CPU s per thread: {sorted(seen.values())}"


def test_default_is_the_cores_this_process_may_use(capsys):
    from scexplain.cli import main

    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert f"{len(os.sched_getaffinity(0))} here" in " ".join(capsys.readouterr().out.split())


def test_limits_are_set_and_restored_in_process():
    import numba
    from threadpoolctl import threadpool_info

    before = (torch.get_num_threads(), numba.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
    with limit_threads(1):
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["NUMBA_NUM_THREADS"] == "1"
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert (torch.get_num_threads(), numba.get_num_threads(), os.environ.get("OMP_NUM_THREADS")) == before


def test_a_fresh_process_gets_the_limits_before_importing_torch(tmp_path, toy_adata):
    toy_adata.write_h5ad(tmp_path / "in.h5ad")
    export(torch.nn.Sequential(torch.nn.Linear(toy_adata.n_vars, 4)), toy_adata.n_vars, tmp_path / "m.pt2")
    proc = run_cli("vargrad", "-i", tmp_path / "in.h5ad", "-o", tmp_path / "out.h5ad", "--model", tmp_path / "m.pt2",
                   "--layer", "lognorm", "--groupby", "cell_type", "--n-samples", "2", "--threads", "1", "--verbose")
    assert proc.returncode == 0, proc.stderr
    limits = _reported_limits(proc.stderr, "vargrad")
    assert limits["torch"] == 1 and all(v == 1 for v in limits.values()), limits
