"""The demo end to end at its default size: every stage runs, its numbers make sense, and
the HAG table in the README is exactly what it prints."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.demo import DemoSettings, run_demo
from retrieval_bio.eval import map_at_k
from retrieval_bio.eval.compare import compare_rows
from retrieval_bio.eval.report import load_codes
from retrieval_bio.ui import _fmt

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_table() -> list[list[str]]:
    text = README.read_text().split("## What the demo shows", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return [r for r in rows if not set("".join(r)) <= set("-")]


@pytest.mark.slow
def test_demo_end_to_end_and_the_readme_table(tmp_path, one_thread):
    s = DemoSettings(device="cpu")
    summary = run_demo(tmp_path, s)
    assert summary["pretrain"]["val_accuracy"] > 0.5
    rng = np.random.default_rng(0)
    for rule in s.rules:
        r = summary["retrieval"][rule]
        codes = load_codes(tmp_path / f"hash-{rule}" / "codes.npz")
        random_map = map_at_k(np.where(rng.random(codes["query_codes"].shape) < .5, 1, -1),
                              codes["db_codes"], codes["query_labels"], codes["db_labels"], 0)
        assert r["map@k"] > random_map + 0.3, (rule, r["map@k"], random_map)
        assert r["index"]["agree"], r["index"]
    entry = summary["compare"]["attacks"]["hag"]
    for label, run in entry["runs"].items():
        assert run["values"]["exact"][-1] < 0.6 * run["clean"], (label, run)  # ε = 0.1, W
    header, rows = compare_rows(entry)
    printed = [header] + [[_fmt(v) for v in row] for row in rows]
    assert _readme_table() == printed
    assert (tmp_path / "demo.json").is_file()
    assert (tmp_path / "compare" / "compare-sdha.png").is_file()


def test_demo_cli_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "notes.txt").write_text("someone else's")
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "another run" in r.output
    assert re.search(r"error: .*another run", r.output)
