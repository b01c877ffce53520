"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs(one_thread, capsys):
    text = README.read_text()
    section = text[text.index("## The library"):text.index("## What is inside")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(README), "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    assert 0.0 < float(printed[0]) <= 1.0  # an mAP
