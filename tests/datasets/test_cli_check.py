"""``retrieval-bio data check`` end to end on real-format fixtures."""

from fixtures import corrupt_image, write_cifar10, write_list_dataset
from typer.testing import CliRunner

from retrieval_bio.cli import app

runner = CliRunner()


def test_data_check_clean_and_bad_list_dataset(tmp_path):
    write_list_dataset(tmp_path, n_train=6, n_test=3, n_database=4)
    ok = runner.invoke(app, ["data", "check", "list", "--root", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "database" in ok.output and "ok" in ok.output

    corrupt_image(tmp_path / "images" / "test_001.jpg")
    bad = runner.invoke(app, ["data", "check", "list", "--root", str(tmp_path)])
    assert bad.exit_code == 1
    out = " ".join(bad.output.split())  # rich wraps long lines
    assert "test.txt:2" in out and "test_001.jpg" in out and "1 bad item" in out
    skip = runner.invoke(app, ["data", "check", "list", "--root", str(tmp_path), "--skip-bad"])
    assert skip.exit_code == 0 and "skipped" in skip.output


def test_data_check_counts_and_missing_files(tmp_path):
    write_cifar10(tmp_path, train_per_class=5, test_per_class=1)
    r = runner.invoke(app, ["data", "check", "cifar10", "--root", str(tmp_path),
                            "--counts", "query=1,validation=1,train=3"])
    assert r.exit_code == 0, r.output
    assert "30" in r.output  # 3 train per class x 10 classes
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    r = runner.invoke(app, ["data", "check", "cifar10", "--root", str(tmp_path)])
    assert r.exit_code == 2
    assert "test_batch" in " ".join(r.output.split())
