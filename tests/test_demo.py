"""The demo end to end at a reduced size: every stage runs and its numbers make sense."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.demo import DemoSettings, run_demo
from retrieval_bio.eval import map_at_k
from retrieval_bio.eval.report import load_codes


def test_demo_end_to_end(tmp_path):
    s = DemoSettings(image_size=8, pretrain_epochs=3, finetune_epochs=2, eps=(0.0, 0.2),
                     max_queries=40)
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
    hag = summary["compare"]["attacks"]["hag"]["runs"]
    for label, entry in hag.items():
        exact = entry["values"]["exact"]
        assert exact[0] == entry["clean"]  # ε = 0 changes nothing
        assert exact[1] < 0.6 * entry["clean"], (label, entry)  # ε = 0.2 with W's gradient
    assert (tmp_path / "demo.json").is_file()
    assert (tmp_path / "compare" / "compare-sdha.png").is_file()


def test_demo_cli_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "notes.txt").write_text("someone else's")
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "another run" in r.output
