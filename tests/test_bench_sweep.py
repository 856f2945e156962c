"""Smoke test of `python -m ce bench --sweep` (ce._bench_sweep): its functions run on a few tiny
problems and return what the tables, JSON and plot are made of. No timing is asserted."""
import json

import numpy as np
import pytest

from ce import _bench, _bench_sweep


def test_sweep_rows_have_ns_per_logit_for_every_implementation_and_mode():
    rows = _bench_sweep.sweep(classes=[2, 17, 100], dtypes=[np.float32, np.float64],
                              budget_s=0.001, peers=["ce", "numpy"], logits=1 << 10,
                              log=lambda s: None)
    assert [(r["dtype"], r["c"]) for r in rows] == [
        (d, c) for d in ("float32", "float64") for c in (2, 17, 100)]
    for r in rows:
        assert r["n"] == (1 << 10) // r["c"]
        for mode in ("forward", "fused"):
            assert set(r[mode]) == {"ce", "numpy"}
            assert all(v > 0 and np.isfinite(v) for v in r[mode].values())
            assert r[mode + "_lead"] is None   # neither torch nor jax was asked for
            assert r[mode + "_reps"] >= 5
    text = _bench_sweep.markdown(rows, [], [], None, {
        "cpu": "cpu", "threads": 2, "simd": "simd", "logits": 1 << 10})
    assert "float32:" in text and "float64:" in text
    assert text.count("\n| 17 |") == 2
    json.dumps(rows)


def test_lead_is_the_faster_peer_over_ce():
    assert _bench_sweep.lead({"ce": 1.0, "torch": 3.0, "jax": 2.0}) == 2.0
    assert _bench_sweep.lead({"ce": 2.0, "torch": 1.0}) == 0.5
    assert _bench_sweep.lead({"ce": 1.0, "numpy": 5.0}) is None


def test_wide_rows_and_cold_tables():
    wide = _bench_sweep.wide_rows(shapes=[(1, 300), (2, 200)], budget_s=0.001, log=lambda s: None)
    assert [(r["n"], r["c"]) for r in wide] == [(1, 300), (2, 200)]
    for r in wide:
        for mode in ("forward", "fused"):
            assert r[mode]["speedup"] == pytest.approx(r[mode]["1"] / r[mode]["2"])
    cold = _bench.cold_runs([(4, 10)], 0.001, flush=_bench.cache_flusher(1 << 20))
    assert [(r["n"], r["c"]) for r in cold] == [(4, 10)]
    assert cold[0]["fused_bytes"] == cold[0]["forward_bytes"] + 4 * 10 * 4
    text = _bench_sweep.markdown([], wide, [{"n": 4, "c": 10, "forward": 1e-3, "fused": 2e-3,
                                             "forward_bytes": 1e6, "fused_bytes": 2e6}],
                                 {"read": 10.0, "copy": 10.0, "write": 10.0},
                                 {"cpu": "cpu", "threads": 2, "simd": "simd", "logits": 1,
                                  "llc_bytes": 1 << 25, "flush_bytes": 3 << 25})
    assert "| 1 x 300 |" in text and "| 4 x 10 | 1.00 ms | 10% (1.0 GB/s) |" in text


def test_the_flush_is_larger_than_the_last_level_cache():
    llc = _bench.last_level_cache_bytes()
    assert llc is None or llc > 0
    assert _bench.flush_bytes() >= (3 * llc if llc else 1 << 30)


def test_plot_writes_a_file_or_says_it_cannot(tmp_path):
    rows = _bench_sweep.sweep(classes=[2, 8], dtypes=[np.float32], budget_s=0.001,
                              peers=["ce"], logits=1 << 8, log=lambda s: None)
    path = tmp_path / "sweep.png"
    made = _bench_sweep.plot(rows, str(path))
    assert made == path.exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not made
    else:
        assert made


def test_command_line_writes_json_and_markdown(tmp_path, capsys):
    out, md = tmp_path / "sweep.json", tmp_path / "sweep.md"
    assert _bench.main(["--sweep", "--quick", "--peers", "ce", "--dtype", "float64",
                        "--budget", "0.001", "--logits", "512", "--no-wide",
                        "--json", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    assert [r["c"] for r in data["sweep"]] == _bench_sweep.QUICK_CLASS_COUNTS
    assert {r["dtype"] for r in data["sweep"]} == {"float64"}
    assert data["wide"] == [] and data["cold"] == []
    assert md.read_text().startswith("Machine:")
    assert "ce bench --sweep on" in capsys.readouterr().out


def test_the_plain_bench_table_keeps_its_cold_rows():
    results, cold_rows = _bench.run([(4, 10)], [np.float32], 0.001, {"ce"}, cold=False)
    assert cold_rows == [] and results[0]["forward"]["ce"] > 0
    bw = {"read": 10.0, "copy": 10.0, "write": 10.0}
    info = {"cpu": "cpu", "threads": 2, "simd": "simd"}
    cold = [{"n": 4, "c": 10, "forward": 1e-3, "fused": 2e-3, "forward_bytes": 1e6,
             "fused_bytes": 2e6}]
    text = _bench.markdown(results, cold, bw, info)
    assert "| 4 x 10 | 1.00 ms | 10% (1.0 GB/s) | 2.00 ms | 10% (1.0 GB/s) |" in text
    assert "3x the last-level cache" in text
