"""mypy sees ce's real types: correct calls pass, a misspelt reduction is rejected; and the
stub of the compiled Call has the keywords the compiled Call takes.

Runs mypy (skipped where it is not installed) on tests/typecheck/usage_ok.py and
usage_bad.py against the ce that this test imports: an installed ce through its
py.typed marker, a source tree through MYPYPATH.
"""
import ast
import inspect
import os
import pathlib
import site
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import ce
from ce import _kernels

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


def _stub_call_keywords():
    """The keyword-only parameters of Call.__init__ in the shipped _kernels.pyi, with defaults."""
    stub = pathlib.Path(_kernels.__file__).parent / "_kernels.pyi"
    tree = ast.parse(stub.read_text())
    call = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Call")
    init = next(n for n in call.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args
    assert not args.args[1:] and args.vararg is None and args.kwarg is None  # keywords only
    return {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults)}


def test_call_stub_has_every_option_of_the_public_functions():
    # stubtest cannot see Call.__init__'s signature (Cython gives it none): this test can
    public = set()
    for fn in (ce.cross_entropy, ce.cross_entropy_grad, ce.cross_entropy_with_grad):
        public |= set(inspect.signature(fn).parameters)
    public -= {"out", "return_lse"}   # arguments of the kernel entries, not of the Call
    assert public <= set(_stub_call_keywords())


def test_call_accepts_every_keyword_of_its_stub():
    x, y = np.zeros((2, 3)), np.array([0, 1])
    values = {"logits": x, "target": y}
    for name, default in _stub_call_keywords().items():
        if name not in values:   # every stub default is a literal (or ..., meaning NO_TARGET)
            assert default is not None, name
            values[name] = ast.literal_eval(default)
    call = _kernels.Call(**values)
    assert call.n_rows == 2 and call.n_classes == 3
    with pytest.raises(TypeError):
        _kernels.Call(**values, no_such_option=1)
