"""`python -m ce score` on files, run as a subprocess, good input and bad."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import ce
from ce import _cli

RNG = np.random.default_rng(7)


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ce", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def run_json(*args):
    r = run(*args, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    return json.loads(r.stdout)


def assert_same(doc, s, rel=1e-12):
    assert doc["rows"] == s.rows and doc["count"] == s.count
    assert doc["loss_sum"] == pytest.approx(s.loss_sum, rel=rel)
    assert doc["weight_sum"] == s.weight_sum and doc["correct"] == s.correct
    assert doc["mean_loss"] == pytest.approx(s.mean_loss, rel=rel)
    assert doc["top_k_accuracy"] == {str(k): v for k, v in s.top_k_accuracy.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    x = RNG.standard_normal((3001, 37)).astype(np.float32)
    y = RNG.integers(0, 37, 3001)
    y[::17] = -100
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    return d, x, y


def test_builtin_example():
    r = run("score")
    assert r.returncode == 0, r.stderr
    assert "built-in example" in r.stdout and "100,000" in r.stdout
    assert "mean loss" in r.stdout and "top-5 accuracy" in r.stdout
    doc = run_json("score")
    assert doc["example"] is True and doc["shape"] == [100000, 100]
    lx, ly = _cli.example()
    assert_same(doc, ce.score(lx.a, ly.a, top_k=(1, 5)))


def test_npy_files_and_chunking(data):
    d, x, y = data
    s = ce.score(x, y, top_k=(1, 5))
    one = run_json("score", d / "x.npy", d / "y.npy")
    assert_same(one, s)
    assert one["loss_sum"] == s.loss_sum  # a single chunk: the same kernel sum
    # a 40 kB budget: about 200 rows per chunk, merged
    chunked = run_json("score", d / "x.npy", d / "y.npy", "--memory-budget", "40KB")
    assert_same(chunked, s)


def test_human_table(data):
    d, x, y = data
    r = run("score", d / "x.npy", d / "y.npy", "--top-k", "1,3")
    assert r.returncode == 0 and r.stderr == ""
    s = ce.score(x, y, top_k=(1, 3))
    assert f"{s.mean_loss:.6f}" in r.stdout and "top-3 accuracy" in r.stdout
    assert f"{s.count:,}" in r.stdout


def test_npz_members_and_shards(data, tmp_path):
    _, x, y = data
    s = ce.score(x, y, top_k=(1, 5))
    np.savez(tmp_path / "stored.npz", logits=x, labels=y)
    np.savez_compressed(tmp_path / "packed.npz", labels=y, logits=x)
    (tmp_path / "xs").mkdir()
    (tmp_path / "ys").mkdir()
    for i, (a, b) in enumerate(zip(np.array_split(x, 4), np.array_split(y, 4))):
        np.save(tmp_path / "xs" / f"part-{i:03d}.npy", a)
        np.save(tmp_path / "ys" / f"part-{i:03d}.npy", b)
    for lx, ly, budget in [("stored.npz", "stored.npz:labels", "256MB"),  # first member
                           ("stored.npz:logits", "packed.npz:labels", "30KB"),
                           ("packed.npz:logits.npy", "packed.npz", "30KB"),
                           ("xs", "ys", "256MB"),
                           ("xs", "ys", "30KB")]:  # chunks that straddle the shards
        assert_same(run_json("score", tmp_path / lx, tmp_path / ly, "--memory-budget", budget), s)


def test_layouts_and_dtypes(tmp_path):
    x = RNG.standard_normal((40, 9, 6)).astype(np.float16)
    y = RNG.integers(0, 9, (40, 6))
    np.save(tmp_path / "x.npy", np.asfortranarray(x))
    np.save(tmp_path / "y.npy", y.astype(np.int32))
    doc = run_json("score", tmp_path / "x.npy", tmp_path / "y.npy", "--axis", "1",
                   "--memory-budget", "1KB", "--top-k", "2")
    # float16 is computed in float32, whose sums depend on the memory layout at ~1e-7
    assert_same(doc, ce.score(x, y, axis=1, top_k=2), rel=1e-6)
    np.save(tmp_path / "xbe.npy", x.astype(">f8"))
    doc = run_json("score", tmp_path / "xbe.npy", tmp_path / "y.npy", "--axis", "-2")
    assert_same(doc, ce.score(x.astype(np.float64), y, axis=1, top_k=(1, 5)))


def test_probabilities_ignore_index_threads(tmp_path):
    p = RNG.random((500, 12))
    p /= p.sum(axis=1, keepdims=True)
    y = RNG.integers(0, 12, 500)
    y[:50] = 99
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "y.npy", y)
    doc = run_json("score", tmp_path / "p.npy", tmp_path / "y.npy", "--from-probs",
                   "--ignore-index", "99", "--threads", "1", "--top-k", "1,2,3")
    assert doc["from_logits"] is False and doc["count"] == 450
    assert_same(doc, ce.score(p, y, from_logits=False, ignore_index=99, top_k=(1, 2, 3)))


def test_nothing_counted_gives_null(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    np.save(tmp_path / "y.npy", np.full(3, -100))
    doc = run_json("score", tmp_path / "x.npy", tmp_path / "y.npy")
    assert doc["count"] == 0 and doc["mean_loss"] is None and doc["accuracy"] is None


def one_error_line(r):
    assert r.returncode != 0
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_errors(data, tmp_path):
    d, x, y = data
    bad = y.copy()
    bad[2345] = 37
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "short.npy", y[:-1])
    np.save(tmp_path / "float.npy", y.astype(np.float32))
    np.save(tmp_path / "int.npy", y[:, None].repeat(37, axis=1))
    np.save(tmp_path / "onehot.npy", np.eye(x.shape[1], dtype=np.float32)[np.maximum(y, 0)])
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    (tmp_path / "empty").mkdir()
    xp, yp = d / "x.npy", d / "y.npy"
    cases = [
        ((tmp_path / "missing.npy", yp), "no such file"),
        ((xp, tmp_path / "short.npy"), "does not match logits shape (3001, 37)"),
        ((xp, tmp_path / "bad.npy"), "label 37 at position (2345,)"),
        ((xp, tmp_path / "float.npy"), "integer class indices"),
        ((tmp_path / "int.npy", yp), "float16/float32/float64"),
        ((tmp_path / "junk.npy", yp), "not a .npy file"),
        ((tmp_path / "empty", yp), "no .npy files"),
        ((xp, tmp_path / "onehot.npy"), "For probability targets use ce.cross_entropy"),
    ]
    for args, message in cases:
        r = run("score", *args)
        line = one_error_line(r)
        assert message in line and r.returncode == 1, (r.returncode, line)
    usage = [
        ((xp, yp, "--axis", "0"), "first axis"),
        ((xp, yp, "--axis", "3"), "out of range"),
        ((xp, yp, "--axis", "-3"), "out of range"),
        ((xp, yp, "--top-k", "1,38"), "more than the 37 classes"),
    ]
    for args, message in usage:  # bad usage, not bad data: exit 2 and a pointer to --help
        r = run("score", *args)
        line = one_error_line(r)
        assert message in line and "--help" in line and r.returncode == 2, (r.returncode, line)
    assert run_json("score", xp, yp, "--top-k", "37")["top_k_accuracy"]["37"] == 1.0
    # a bad label found in a later chunk still reports its global position
    line = one_error_line(run("score", xp, tmp_path / "bad.npy", "--memory-budget", "20KB"))
    assert "label 37 at position (2345,)" in line


@pytest.mark.parametrize("args", [("--top-k", "0"), ("--memory-budget", "lots"),
                                  ("--threads", "-2"), ("--bogus",), ("only-one.npy",)])
def test_usage_errors(args):
    r = run("score", *args)
    assert r.returncode == 2
    assert "error" in one_error_line(r)


def test_dispatch_and_usage():
    r = run()
    assert r.returncode == 2 and "score" in r.stderr and "bench" in r.stderr
    r = run("--help")
    assert r.returncode == 0 and "score" in r.stdout and "bench" in r.stdout
    r = run("score", "--help")
    assert r.returncode == 0 and "--memory-budget" in r.stdout
    assert one_error_line(run("frobnicate")).startswith("python -m ce: unknown command")
    r = run("--version")
    assert r.returncode == 0 and r.stdout == f"ce {ce.__version__}\n"


def test_parse_bytes():
    assert _cli.parse_bytes("256MB") == 256 * 10**6
    assert _cli.parse_bytes("2GiB") == 2 * 2**30
    assert _cli.parse_bytes("1.5k") == 1500
    assert _cli.parse_bytes("4096") == 4096


def test_progress_line():
    out = io.StringIO()
    p = _cli.Progress(1000, out)
    p.update(1000)
    p.close()
    assert "1,000/1,000 rows" in out.getvalue() and "rows/s" in out.getvalue()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kB on Linux")
def test_memory_stays_within_budget(tmp_path):
    n, c = 400_000, 100  # 160 MB of float32 logits, scored with a 8 MB budget
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (n, c))
    for i in range(0, n, 50_000):
        x[i:i + 50_000] = np.arange(c, dtype=np.float32) % 7
    x.flush()
    del x
    np.save(tmp_path / "y.npy", np.arange(n) % c)
    code = ("import resource, sys; from ce import _cli; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "rc = _cli.main(sys.argv[1:]); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy"), "--memory-budget", "8MB", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew_mb = int(r.stdout.strip().splitlines()[-1])
    assert grew_mb < 60, f"peak RSS grew by {grew_mb} MB for a 160 MB file"
