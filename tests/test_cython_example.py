"""examples/cython_package, built with exactly the commands the README's "From Cython" section
prints, in a fresh venv that sees the installed ce, then called.

The venv (made without pip) gets a .pth file naming this interpreter's site-packages, so pip,
ce, NumPy, Cython and setuptools come from the environment under test and pip needs no network
when they satisfy the README's requirements; the example is installed into the venv only.
"""
import importlib.metadata
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import ce

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "cython_package"


def readme_commands():
    """The shell lines of the README block that builds examples/cython_package."""
    text = README.read_text()
    section = text[text.index("### From Cython"):]
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        if "examples/cython_package" in block:
            return [line for line in block.splitlines() if line.strip()]
    raise AssertionError("the README's From Cython section has no build commands")


def _installed_ce():
    """True when `import ce` is an installed distribution (not the source tree on PYTHONPATH)."""
    try:
        dist = importlib.metadata.distribution("ce")
    except importlib.metadata.PackageNotFoundError:
        return False
    files = [f for f in dist.files or () if f.name == "__init__.py" and f.parent.name == "ce"]
    # an editable install lists paths that may not exist where locate_file puts them
    return any(os.path.exists(dist.locate_file(f)) and os.path.samefile(dist.locate_file(f), ce.__file__)
               for f in files)


def _have_compiler():
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc")
    return shutil.which(cc.split()[0]) is not None


CHECK = textwrap.dedent("""
    import numpy as np, ce, ce_cython_example
    from ce_cython_example import loss_and_grad
    assert "site-packages" in ce_cython_example.__file__, ce_cython_example.__file__
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((300, 37))).astype(np.float32)
    y = rng.integers(0, 37, 300)
    y[::7] = -100
    g = np.empty_like(x)
    loss = loss_and_grad(x, y, g)
    want_loss, want_grad = ce.cross_entropy_with_grad(x, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(g, want_grad, rtol=1e-5, atol=1e-8)
    assert not g[::7].any()
    # bad input is refused before anything is written
    for bad_y, bad_g, word in [(np.where(y == 3, 37, y), g, "outside [0, 37)"),
                               (y[:-1], g, "y must have shape"),
                               (y, np.empty((300, 36), np.float32), "g must have"),
                               (y, np.empty((30, 37), np.float32), "g must have")]:
        before = bad_g.copy()
        try:
            loss_and_grad(x, bad_y, bad_g)
        except ValueError as exc:
            assert word in str(exc), exc
        else:
            raise AssertionError(f"no error for {word}")
        assert np.array_equal(bad_g, before, equal_nan=True), "written before the error"
    assert np.isnan(loss_and_grad(x[:0], y[:0], g[:0]))
    print("example ok")
""")


def test_readme_builds_the_example_against_the_installed_ce(tmp_path):
    if not README.exists() or not EXAMPLE.exists():
        pytest.skip("README.md and examples/ are not beside these tests (a copied test tree)")
    if not _have_compiler():
        pytest.skip("no C compiler to build the example")
    if not _installed_ce():
        pytest.skip("ce is imported from the source tree, not installed: the example is built "
                    "against an installed ce (pip install . first)")
    pytest.importorskip("Cython", reason="the README's commands expect Cython installed")
    venv = tmp_path / "venv"
    # no pip or setuptools of its own: the .pth below brings this environment's (newer) ones
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bindir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    python = bindir / ("python.exe" if sys.platform == "win32" else "python")
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    pathlib.Path(venv_site, "outer-env.pth").write_text("\n".join(sorted(ours)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env["PATH"] = str(bindir) + os.pathsep + env.get("PATH", "")
    for line in readme_commands():
        argv = shlex.split(line)
        assert argv[0] == "pip", line
        proc = subprocess.run([str(python), "-m", "pip", *argv[1:]], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    names = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze", "--path", venv_site],
                           env=env, capture_output=True, text=True, check=True).stdout
    assert "ce-cython-example==0.1.0" in names.replace("_", "-"), names
    proc = subprocess.run([str(python), "-c", CHECK], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "example ok" in proc.stdout, proc.stdout + proc.stderr


def test_readme_shows_the_example_source():
    if not README.exists() or not EXAMPLE.exists():
        pytest.skip("README.md and examples/ are not beside these tests (a copied test tree)")
    source = (EXAMPLE / "ce_cython_example" / "_loss.pyx").read_text()
    assert "```cython\n" + source + "```" in README.read_text()
