"""Concurrency: Python threads and processes.

* Many Python threads call every public function at once on shared read-only inputs, each with
  its own outputs; every result must be bit-for-bit the single-threaded one. Some inputs are big
  enough for the OpenMP parallel region, so several OpenMP teams run at the same time (one per
  calling thread), with different n_threads.

* Processes after the parent has run an OpenMP parallel region. libgomp keeps a thread pool
  that does not survive fork(): what happens here (checked by the tests below) is

    - a forked child that runs a *parallel* call (default n_threads, or n_threads >= 2, on more
      than 16384 logits) hangs for ever in libgomp (a futex wait in GOMP_parallel: the pool's
      threads do not exist in the child);
    - a forked child that uses n_threads=1, or threadpoolctl's limit of 1, or only problems
      small enough to run serially, works; so does any forked child if the parent never ran a
      parallel region;
    - 'spawn' and 'forkserver' workers always work.

  That is the advice to document: use multiprocessing's 'spawn' or 'forkserver' start method
  (or concurrent.futures with mp_context=...), or n_threads=1 in forked children. Every test
  that could hang runs in a subprocess with a timeout.
"""
import os
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import ce

N_PY_THREADS = 8
ROUNDS = 3


def shared_inputs():
    rng = np.random.default_rng(0)
    d = {
        "x_small": rng.standard_normal((32, 10)),
        "y_small": rng.integers(0, 10, 32),
        "x_big": rng.standard_normal((256, 200), dtype=np.float32),   # 51200 logits: parallel
        "y_big": rng.integers(0, 200, 256),
        "x_nchw": rng.standard_normal((8, 7, 32, 32), dtype=np.float32),  # axis=1, parallel
        "y_nchw": rng.integers(0, 7, (8, 32, 32)),
        "dense": rng.random((32, 10)),
        "w": rng.random(10),
        "sw": rng.random(32),
        "x16": rng.standard_normal((64, 50)).astype(np.float16),
        "y16": rng.integers(0, 50, 64),
    }
    d["y_small"][::5] = -100
    for a in d.values():
        a.flags.writeable = False
    return d


def jobs(d):
    """name -> function(n_threads) returning a tuple of results; outputs are the caller's own."""
    def with_out(fn, x, *args, **kw):
        out = np.full(x.shape, np.nan, dtype=x.dtype)
        res = fn(x, *args, out=out, **kw)
        return res if isinstance(res, tuple) else (res,)

    return {
        "cross_entropy small": lambda nt: (ce.cross_entropy(d["x_small"], d["y_small"], n_threads=nt),),
        "cross_entropy big": lambda nt: (ce.cross_entropy(d["x_big"], d["y_big"], n_threads=nt),),
        "cross_entropy nchw none": lambda nt: (ce.cross_entropy(d["x_nchw"], d["y_nchw"], axis=1,
                                                                reduction="none", n_threads=nt),),
        "cross_entropy weighted dense": lambda nt: (ce.cross_entropy(
            d["x_small"], d["dense"], weight=d["w"], sample_weight=d["sw"], label_smoothing=0.1,
            n_threads=nt),),
        "cross_entropy float16": lambda nt: (ce.cross_entropy(d["x16"], d["y16"], n_threads=nt),),
        "grad big out=": lambda nt: with_out(ce.cross_entropy_grad, d["x_big"], d["y_big"], n_threads=nt),
        "grad nchw": lambda nt: (ce.cross_entropy_grad(d["x_nchw"], d["y_nchw"], axis=1, n_threads=nt),),
        "grad small weighted": lambda nt: (ce.cross_entropy_grad(d["x_small"], d["y_small"], weight=d["w"],
                                                                 z_loss=0.01, n_threads=nt),),
        "fused big": lambda nt: ce.cross_entropy_with_grad(d["x_big"], d["y_big"], n_threads=nt,
                                                           return_lse=True),
        "fused big out=": lambda nt: with_out(ce.cross_entropy_with_grad, d["x_big"], d["y_big"],
                                              n_threads=nt, softcap=20.0),
        "fused nchw": lambda nt: ce.cross_entropy_with_grad(d["x_nchw"], d["y_nchw"], axis=1,
                                                            reduction="sum", n_threads=nt),
        "fused small dense": lambda nt: ce.cross_entropy_with_grad(d["x_small"], d["dense"], n_threads=nt),
        # the target-free functions follow OpenMP's setting (n_threads does not apply)
        "softmax big": lambda nt: (ce.softmax(d["x_big"]),),
        "softmax big out=": lambda nt: with_out(ce.softmax, d["x_big"]),
        "log_softmax nchw": lambda nt: (ce.log_softmax(d["x_nchw"], axis=1),),
        "log_softmax small out=": lambda nt: with_out(ce.log_softmax, d["x_small"]),
        "logsumexp big": lambda nt: (ce.logsumexp(d["x_big"]),),
        "logsumexp nchw tuple": lambda nt: (ce.logsumexp(d["x_nchw"], axis=(1, 2)),),
    }


def as_bytes(result):
    return tuple(np.asarray(r).tobytes() for r in result)


def test_many_python_threads_agree_with_single_thread():
    d = shared_inputs()
    before = {k: v.copy() for k, v in d.items()}
    work = jobs(d)
    expected = {name: as_bytes(fn(1)) for name, fn in work.items()}
    barrier = threading.Barrier(N_PY_THREADS)
    errors = []
    calls = [0] * N_PY_THREADS

    def worker(i):
        rnd = random.Random(i)
        names = list(work)
        try:
            barrier.wait(timeout=60)
            for _ in range(ROUNDS):
                rnd.shuffle(names)
                for name in names:
                    nt = rnd.choice([None, 1, 2, 3])
                    got = as_bytes(work[name](nt))
                    calls[i] += 1
                    if got != expected[name]:
                        errors.append(f"thread {i}: {name} (n_threads={nt}) differs")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_PY_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, "\n".join(errors[:20])
    assert sum(calls) == N_PY_THREADS * ROUNDS * len(work)
    for k, v in d.items():
        assert np.array_equal(v, before[k]), f"shared input {k} was modified"


def test_threads_with_errors_and_successes_interleaved():
    """Errors raised in some threads (bad labels) while others compute: no cross-talk."""
    d = shared_inputs()
    bad = np.array(d["y_big"])
    bad[100] = 10**6
    good = as_bytes(ce.cross_entropy_with_grad(d["x_big"], d["y_big"]))
    errors = []

    def worker(i):
        try:
            for k in range(20):
                if (i + k) % 2:
                    with pytest.raises(ValueError, match="1000000"):
                        ce.cross_entropy_with_grad(d["x_big"], bad)
                elif as_bytes(ce.cross_entropy_with_grad(d["x_big"], d["y_big"])) != good:
                    errors.append(f"thread {i}: result differs")
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, "\n".join(errors)


# ------------------------------------------------------------------------------------------
# Processes after the parent used OpenMP (each scenario in a subprocess with a timeout)
# ------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp
    import os
    import sys
    import time

    import numpy as np
    import ce

    RNG = np.random.default_rng(0)
    BIG = RNG.standard_normal((512, 128)).astype(np.float32)   # 65536 logits: a parallel call
    Y = RNG.integers(0, 128, 512)
    SMALL, YS = BIG[:16], Y[:16]                                # 2048 logits: serial

    def work(kind):
        if kind == "n_threads=1":
            return float(ce.cross_entropy(BIG, Y, n_threads=1))
        if kind == "threadpoolctl 1":
            from threadpoolctl import threadpool_limits
            with threadpool_limits(1, user_api="openmp"):
                return float(ce.cross_entropy(BIG, Y))
        if kind == "small":
            return float(ce.cross_entropy(SMALL, YS))
        if kind == "n_threads=2":                               # parallel even on one core
            return float(ce.cross_entropy(BIG, Y, n_threads=2))
        return float(ce.cross_entropy(BIG, Y))                  # default: parallel on 2+ cores

    def expected(kind):
        return float(ce.cross_entropy(SMALL, YS) if kind == "small" else ce.cross_entropy(BIG, Y))

    def run_fork(kind, timeout):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, repr(work(kind)).encode())
            os._exit(0)
        os.close(w)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                value = os.read(r, 100).decode()
                return ("ok", float(value)) if os.waitstatus_to_exitcode(status) == 0 else ("died", None)
            time.sleep(0.02)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return ("hang", None)

    if __name__ == "__main__":
        method, kind, parent_parallel = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
        if parent_parallel:
            ce.cross_entropy(BIG, Y, n_threads=2)   # the parent runs an OpenMP parallel region
        else:
            ce.cross_entropy(SMALL, YS)   # serial only: libgomp's pool is never started
        if method == "fork":
            state, got = run_fork(kind, float(sys.argv[4]))
        else:
            ctx = mp.get_context(method)
            with ctx.Pool(2) as pool:
                got = pool.apply_async(work, (kind,)).get(timeout=float(sys.argv[4]))
            state = "ok"
        want = expected(kind)  # only now: this may be the parent's first parallel call
        print(state, got == want if state == "ok" else "")
""")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("procs") / "mp_script.py"
    path.write_text(SCRIPT)
    return str(path)


def run_script(script, method, kind, parent_parallel=True, child_timeout=60):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # let OpenMP use both cores, as a user's default would
    proc = subprocess.run([sys.executable, script, method, kind, "1" if parent_parallel else "0",
                           str(child_timeout)], capture_output=True, text=True, timeout=child_timeout + 120,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


needs_openmp = pytest.mark.skipif(not ce.show_config(print_out=False)["openmp"],
                                  reason="ce was built without OpenMP")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("kind", ["default", "n_threads=1", "n_threads=2"])
def test_spawn_and_forkserver_workers_after_parallel_parent(script, method, kind):
    assert run_script(script, method, kind) == ["ok", "True"]


@pytest.mark.parametrize("kind", ["n_threads=1", "threadpoolctl 1", "small"])
def test_forked_child_serial_calls_after_parallel_parent(script, kind):
    """The documented way to use fork after a parallel call: one thread in the child."""
    assert run_script(script, "fork", kind) == ["ok", "True"]


def test_forked_child_parallel_when_parent_never_went_parallel(script):
    assert run_script(script, "fork", "n_threads=2", parent_parallel=False) == ["ok", "True"]


@needs_openmp
def test_forked_child_parallel_call_after_parallel_parent(script):
    """libgomp's pool does not survive fork(); ce's at-fork hook makes the child run on one
    thread instead of waiting for ever in GOMP_parallel."""
    assert run_script(script, "fork", "n_threads=2", child_timeout=5) == ["ok", "True"]
