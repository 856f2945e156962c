"""mypy sees ce's real types: correct calls pass, a misspelt reduction is rejected.

Runs mypy (skipped where it is not installed) on tests/typecheck/usage_ok.py and
usage_bad.py against the ce that this test imports: an installed ce through its
py.typed marker, a source tree through MYPYPATH.
"""
import os
import pathlib
import site
import subprocess
import sys
import sysconfig

import pytest

import ce

HERE = pathlib.Path(__file__).parent / "typecheck"


def run_mypy(path, tmp_path):
    pytest.importorskip("mypy")
    env = dict(os.environ)
    root = pathlib.Path(ce.__file__).resolve().parent.parent
    installed = {pathlib.Path(p).resolve() for p in
                 [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]}
    if root not in installed:  # a source tree: mypy refuses site-packages in MYPYPATH
        env["MYPYPATH"] = str(root)
    # --follow-imports=silent: report the usage file only, as a user's mypy reports their code
    cmd = [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path),
           "--follow-imports=silent", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)


def test_ce_ships_py_typed():
    assert (pathlib.Path(ce.__file__).parent / "py.typed").is_file()


def test_correct_calls_type_check(tmp_path):
    res = run_mypy(HERE / "usage_ok.py", tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_misspelt_reduction_is_rejected(tmp_path):
    res = run_mypy(HERE / "usage_bad.py", tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'Argument "reduction" to "cross_entropy" has incompatible type "Literal[\'meam\']"' \
        in res.stdout, res.stdout
    assert "Literal['none', 'sum', 'mean']" in res.stdout
    assert "Found 1 error in 1 file" in res.stdout
