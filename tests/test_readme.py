"""Every Python block of README.md runs as written.

The blocks run in order in one namespace (a later block may use what an earlier one defined), in
a subprocess with a hard timeout, from an empty working folder. A block right after the line
``<!-- readme-test: file examples/X.py -->`` is not run here: its text must appear verbatim in
that file, and a test must run that file (its name appears in a test module).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!--\s*readme-test:\s*file\s+(\S+)\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")
TIMEOUT_S = 300


def python_blocks(text: str) -> list[dict]:
    """``[{"line": first line number, "code": str, "file": marker file or None}]``."""
    blocks, lines, i = [], text.splitlines(), 0
    previous = None  # the last non-blank line before a fence
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        start, i = i + 1, i + 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start}: unterminated code block")
        if fence.group(1) == "python":
            marker = MARKER.match(previous or "")
            blocks.append(
                {
                    "line": start + 1,
                    "code": "\n".join(lines[start:i]) + "\n",
                    "file": marker.group(1) if marker else None,
                }
            )
        previous, i = None, i + 1
    return blocks


BLOCKS = python_blocks(README.read_text())

RUNNER = textwrap.dedent(
    """
    import json, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__readme__"}
    for block in blocks:
        print(f"--- README.md:{block['line']}", flush=True)
        try:
            exec(compile(block["code"], f"README.md:{block['line']}", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED README.md:{block['line']}", flush=True)
            sys.exit(1)
    print("ALL BLOCKS RAN", flush=True)
    """
)


def test_the_readme_has_python_blocks_and_markers_parse():
    assert len(BLOCKS) >= 5
    assert any(b["file"] is None for b in BLOCKS)
    # The parser itself: a marker applies to the next block only.
    sample = (
        "<!-- readme-test: file examples/a.py -->\n```python\nx = 1\n```\n\n```python\ny\n```\n"
    )
    assert [b["file"] for b in python_blocks(sample)] == ["examples/a.py", None]


def test_every_python_block_runs_in_order(tmp_path):
    runnable = [b for b in BLOCKS if b["file"] is None]
    (tmp_path / "blocks.json").write_text(json.dumps(runnable))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    }
    work = tmp_path / "work"
    work.mkdir()
    try:
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "blocks.json")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        started = re.findall(r"--- (README\.md:\d+)", exc.stdout or "")
        pytest.fail(f"README blocks ran past {TIMEOUT_S} s (last started: {started[-1:]})")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ALL BLOCKS RAN" in proc.stdout, out[-6000:]


def marked_block_problem(block: dict, root: Path = ROOT) -> str | None:
    """Why a marked block fails its contract, or None."""
    path = root / block["file"]
    where = f"README.md:{block['line']}"
    if not path.is_file():
        return f"{where}: {block['file']} does not exist"
    if block["code"].strip() not in path.read_text():
        return f"{where}: the block is not verbatim in {block['file']}"
    tests = [p for p in (root / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    if not any(path.name in p.read_text() for p in tests):
        return f"{where}: no test module mentions {path.name}, so nothing runs it"
    return None


def test_marked_blocks_appear_verbatim_in_a_file_a_test_runs(tmp_path):
    problems = [marked_block_problem(b) for b in BLOCKS if b["file"] is not None]
    assert not [p for p in problems if p], problems
    # The check itself, on a made-up tree: each broken contract is reported.
    (tmp_path / "examples").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "examples" / "x.py").write_text("a = 1\nb = 2\n")
    block = {"line": 1, "code": "a = 1\n", "file": "examples/x.py"}
    assert "no test module" in marked_block_problem(block, tmp_path)
    (tmp_path / "tests" / "test_x.py").write_text("run('examples/x.py')\n")
    assert marked_block_problem(block, tmp_path) is None
    assert "not verbatim" in marked_block_problem({**block, "code": "c = 3\n"}, tmp_path)
    assert "does not exist" in marked_block_problem({**block, "file": "examples/y.py"}, tmp_path)
