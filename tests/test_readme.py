"""Every README example runs as written.

- Each ```python block runs as a script of its own (a fresh interpreter, `__name__ ==
  "__main__"`), so a block cannot lean on another block's variables. A block may read files that
  an earlier block of its own section wrote (the README says so where it does): each test runs
  the section's earlier blocks first, in order, in a fresh directory.
- Each plain ``` block whose lines start with `$ python -m ce` is a transcript: the command runs
  and its output (stdout then stderr) must match line by line, numbers to 1e-6 relative; lines
  that report a time are not compared.
- ```sh blocks (installing, building) are not run here: they need the network or a fresh
  environment. `.ci/run` runs the set-up and test commands, tools/build_wheel.sh the wheel
  commands, and tests/test_cython_example.py the Cython example's commands exactly as printed.
- A block that imports an optional peer (torch, mygrad, dask, ...) is skipped when it is missing.
"""
import ast
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"

# Blocks that cannot run here, by a phrase they contain, and why. Keep this short.
SKIP = {}

OPTIONAL = ("torch", "mygrad", "dask", "distributed", "jax", "optax", "sklearn")
NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+)%?")
TOLERANCE = 1e-6


def _blocks():
    """(kind, code, section, line) for every fenced block, in order."""
    if not README.exists():
        return []
    out, section = [], ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if line.startswith("```"):
            kind, start, body = line[3:].strip(), i + 1, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((kind, "\n".join(body) + "\n", section, start))
        i += 1
    return out


BLOCKS = _blocks()
PYTHON = [(i, b) for i, b in enumerate(BLOCKS) if b[0] == "python"]
TRANSCRIPTS = [(i, b) for i, b in enumerate(BLOCKS)
               if b[0] == "" and b[1].lstrip().startswith("$ python -m ce")]


def _id(item):
    i, (kind, code, section, line) = item
    return f"line{line}"


def _imports(code):
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
            if node.module.startswith("ce."):  # ce.torch needs torch, ce.mygrad mygrad, ...
                names.add(node.module.split(".")[1])
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ce."))
    return names


def _skip_if_unavailable(code):
    for phrase, reason in SKIP.items():
        if phrase in code:
            pytest.skip(reason)
    for name in sorted(_imports(code) & set(OPTIONAL)):
        pytest.importorskip(name, reason=f"the block imports {name}, which is not installed")


def _env():
    """The children import the ce under test: whatever this interpreter imports."""
    import ce
    env = dict(os.environ)
    paths = [os.path.dirname(os.path.dirname(ce.__file__)), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _run_python(code, cwd, line):
    path = cwd / f"readme_line{line}.py"
    path.write_text(code)
    proc = subprocess.run([sys.executable, str(path)], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README block at line {line} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _prepare(index, section, cwd):
    """Run the earlier python blocks of the same section (they may write files this one reads)."""
    for kind, code, sec, line in BLOCKS[:index]:
        if kind == "python" and sec == section:
            _skip_if_unavailable(code)
            _run_python(code, cwd, line)


@pytest.mark.skipif(not BLOCKS, reason="README.md is not beside these tests (a copied test tree)")
@pytest.mark.parametrize("item", PYTHON, ids=_id)
def test_python_block_runs(item, tmp_path):
    index, (_, code, section, line) = item
    _skip_if_unavailable(code)
    _prepare(index, section, tmp_path)
    _run_python(code, tmp_path, line)


def _numbers_match(want, got):
    if NUMBER.sub("#", want) != NUMBER.sub("#", got):
        return False
    for a, b in zip(NUMBER.findall(want), NUMBER.findall(got)):
        x, y = (float(s.replace(",", "").rstrip("%")) for s in (a, b))
        if not math.isclose(x, y, rel_tol=TOLERANCE, abs_tol=0.0):
            return False
    return True


@pytest.mark.skipif(not BLOCKS, reason="README.md is not beside these tests (a copied test tree)")
@pytest.mark.parametrize("item", TRANSCRIPTS, ids=_id)
def test_shell_transcript_matches(item, tmp_path):
    index, (_, text, section, line) = item
    _prepare(index, section, tmp_path)
    lines = text.rstrip("\n").splitlines()
    command, expected = lines[0][2:], lines[1:]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "ce"], command
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    got = (proc.stdout + proc.stderr).rstrip("\n").splitlines()
    assert len(got) == len(expected), f"line {line}: {command}\n" + "\n".join(got)
    for want, have in zip(expected, got):
        if want.split()[:1] == ["time"]:
            continue  # the wall time of this run
        assert _numbers_match(want, have), f"line {line}: {command}\nREADME: {want}\ngot:    {have}"
