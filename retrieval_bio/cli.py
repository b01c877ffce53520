"""The ``retrieval-bio`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from .config import ConfigError, RunConfig, build_config

app = typer.Typer(
    name="retrieval-bio",
    help="Measure how the learning rule behind a network changes its adversarial robustness "
    "(deep-hashing retrieval and classification). Images are in [0, 1] everywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and validate datasets on disk.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str) -> None:
    from .ui import err_console

    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


# Options shared by pretrain and finetune. ``None`` means "not given": the config file or
# the stage default applies.
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML run config; flags override it.")
BackboneOpt = typer.Option(None, help="alexnet | vgg16 | resnet18 | small-cnn | timm:<name>.")
WeightsOpt = typer.Option(None, help="Backbone weights: 'imagenet' (local cache) or a file.")
DatasetOpt = typer.Option(None, help="Dataset name (default digits); see 'data check'.")
RootOpt = typer.Option(None, help="Folder holding the dataset in its standard layout.")
ProtocolOpt = typer.Option(None, help="Split protocol (default: the dataset's own).")
SizeOpt = typer.Option(None, "--image-size", help="Input side length in px.")
EpochsOpt = typer.Option(None, help="Training epochs.")
BatchOpt = typer.Option(None, "--batch-size", help="Batch size.")
LrBOpt = typer.Option(None, "--lr-backbone", help="Adam learning rate of the backbone.")
LrHOpt = typer.Option(None, "--lr-head", help="Adam learning rate of the new task layer.")
SeedOpt = typer.Option(None, help="Seed of every random choice of the run.")
DeviceOpt = typer.Option(None, help="auto (cuda, mps, cpu) | cpu | cuda | mps.")
OutOpt = typer.Option(None, "--out", "-o", help="Run folder to write.")
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Log each epoch's metrics.")
DataOpt = typer.Option(
    None, "--data-opt", help="Dataset loader option KEY=VALUE (VALUE read as YAML), "
    "repeatable: --data-opt lists=/data/nus/lists --data-opt 'counts={query: 5}'.")


def _data_options(items: list[str] | None) -> dict | None:
    if not items:
        return None
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--data-opt takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run(stage: str, config: Path | None, resume: bool, verbose: bool, **flags) -> None:
    from .runs import CONFIG, RunFolderError
    from .train import NonFiniteLossError, train_run
    from .ui import RichProgress, console, print_table

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if resume and flags.get("out") and (Path(flags["out"]) / CONFIG).is_file():
            # A resumed run continues its own config; only --epochs may extend it.
            cfg = build_config(stage, Path(flags["out"]) / CONFIG, epochs=flags.get("epochs"))
        else:
            cfg = build_config(stage, config, **flags)
        result = train_run(cfg, resume=resume, progress=RichProgress())
    except (ConfigError, RunFolderError, FileNotFoundError, KeyError, ValueError) as e:
        _fail(str(e).strip("'\""))
    except NonFiniteLossError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail(f"interrupted; continue with: retrieval-bio {stage} --out "
              f"{flags.get('out') or RunConfig().out} --resume")
    rows = [(k, v) for k, v in result.metrics.items() if not isinstance(v, (list, dict))]
    print_table(f"{stage}: {result.run_dir}", ["metric", "value"], rows)
    console.print(f"run folder: [bold]{result.run_dir}[/]")


@app.command()
def pretrain(
    config: Path | None = ConfigOpt,
    backbone: str | None = BackboneOpt,
    weights: str | None = WeightsOpt,
    dataset: str | None = DatasetOpt,
    root: str | None = RootOpt,
    protocol: str | None = ProtocolOpt,
    image_size: int | None = SizeOpt,
    epochs: int | None = EpochsOpt,
    batch_size: int | None = BatchOpt,
    lr_backbone: float | None = LrBOpt,
    lr_head: float | None = LrHOpt,
    seed: int | None = SeedOpt,
    device: str | None = DeviceOpt,
    out: str | None = OutOpt,
    data_opt: list[str] | None = DataOpt,
    resume: bool = ResumeOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """BP pre-training of backbone + classifier (writes config.yaml, metrics.json,
    checkpoint.pt). The starting point that 'finetune --init' takes."""
    _run("pretrain", config, resume, verbose, task="classify", backbone=backbone,
         weights=weights, dataset=dataset, root=root, protocol=protocol,
         image_size=image_size, epochs=epochs, batch_size=batch_size, lr_backbone=lr_backbone,
         lr_head=lr_head, seed=seed, device=device, out=out,
         dataset_options=_data_options(data_opt))


@app.command()
def finetune(
    config: Path | None = ConfigOpt,
    rule: str | None = typer.Option(None, help="Learning rule: bp | fa | usf | frsf | brsf."),
    scale: str | None = typer.Option(
        None, help="Feedback scale: norm (default, |B|=|W| per layer) | none | init."),
    task: str | None = typer.Option(None, help="classify | hash (HyP² hash head)."),
    bits: int | None = typer.Option(None, help="Code length K in bits (hash task)."),
    init: str | None = typer.Option(
        None, help="Start from this pretrain run folder or weights file."),
    backbone: str | None = BackboneOpt,
    weights: str | None = WeightsOpt,
    dataset: str | None = DatasetOpt,
    root: str | None = RootOpt,
    protocol: str | None = ProtocolOpt,
    image_size: int | None = SizeOpt,
    k: int | None = typer.Option(None, help="mAP@k cut-off (<= 0: whole database)."),
    epochs: int | None = EpochsOpt,
    batch_size: int | None = BatchOpt,
    lr_backbone: float | None = LrBOpt,
    lr_head: float | None = LrHOpt,
    seed: int | None = SeedOpt,
    device: str | None = DeviceOpt,
    out: str | None = OutOpt,
    data_opt: list[str] | None = DataOpt,
    resume: bool = ResumeOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Fine-tune every parameter with a learning rule behind a new task layer (SPEC §3
    defaults: Adam, lr 1e-5 backbone / 1e-4 head, weight decay 5e-4, 20 epochs, batch 32).
    Hashing runs select the epoch by validation mAP and write codes.npz."""
    _run("finetune", config, resume, verbose, rule=rule, scale=scale, task=task, bits=bits,
         init=init, backbone=backbone, weights=weights, dataset=dataset, root=root,
         protocol=protocol, image_size=image_size, k=k, epochs=epochs, batch_size=batch_size,
         lr_backbone=lr_backbone, lr_head=lr_head, seed=seed, device=device, out=out,
         dataset_options=_data_options(data_opt))


@data_app.command("check")
def data_check(
    name: str = typer.Argument(..., help="Dataset name: cifar10, nuswide21, coco, list..."),
    root: str | None = typer.Option(None, help="Folder holding the dataset on disk."),
    lists: str | None = typer.Option(None, help="Folder of list files (default: --root)."),
    protocol: str | None = ProtocolOpt,
    seed: int = typer.Option(0, help="Seed of the split."),
    counts: str | None = typer.Option(
        None, help="Protocol size overrides, e.g. 'query=5,validation=5,train=10'."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Exit 0 when only skippable items (bad lines/images) fail."),
    max_problems: int = typer.Option(20, help="How many problems to list."),
) -> None:
    """Validate a dataset on disk: parse every list line, open and decode every image,
    build the protocol's splits and report their sizes and the first problems."""
    from .datasets import check
    from .ui import console, print_table

    kw: dict = {"lists": lists} if lists else {}
    try:
        if counts:
            kw["counts"] = {k.strip(): int(v) for k, v in
                            (item.split("=") for item in counts.split(","))}
        report = check(name, root, protocol=protocol, seed=seed, max_problems=max_problems,
                       **kw)
    except (KeyError, ValueError) as e:
        _fail(str(e).strip("'\""))
    if report.sizes is not None:
        print_table(f"{name}: {report.info.get('protocol', '')} (C = {report.num_classes})",
                    ["split", "items"], list(report.sizes.items()))
    for p in report.problems:
        console.print(f"[yellow]problem:[/] {p}", highlight=False, soft_wrap=True)
    if report.n_problems > len(report.problems):
        console.print(f"... and {report.n_problems - len(report.problems)} more problems")
    if report.fatal:
        _fail(report.fatal)
    verdict = "ok" if report.ok else f"{report.n_problems} bad item(s)"
    console.print(f"{name}: {verdict}" + (", skipped" if skip_bad and not report.ok else ""))
    if not report.usable(skip_bad):
        raise typer.Exit(1)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by 'finetune'."),
    k: int | None = typer.Option(None, help="mAP@k cut-off (<= 0: whole database); "
                                 "default: the run's own."),
    radius: int = typer.Option(2, help="Hamming radius of the precision-within-radius metric."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps (classification runs)."),
) -> None:
    """Evaluate a run: mAP@k (index and expected ties), precision/recall@k, P@H<=2 and the
    PR curve for hashing runs; test accuracy for classification runs. Merged into
    metrics.json."""
    from .runs import RunFolderError
    from .ui import RichProgress, console, print_table
    from .workflows import evaluate_run

    try:
        report = evaluate_run(run, k=k, radius=radius, device=device, progress=RichProgress())
    except (FileNotFoundError, RunFolderError, ConfigError) as e:
        _fail(str(e))
    rows = [(key, v) for key, v in report.items() if not isinstance(v, (dict, list))]
    print_table(f"evaluate: {run}", ["metric", "value"], rows)
    console.print(f"written to [bold]{run / 'metrics.json'}[/]")


def _float_list(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"{what} must be comma-separated numbers, got {text!r}")
        return None


def _cell(v: object) -> object:
    return "–" if v is None else v


@app.command("attack")
def attack_cmd(
    name: str = typer.Argument(..., help="hag | sdha (hash runs) | fgsm | pgd | square "
                               "(classify runs)."),
    run: Path = typer.Argument(..., help="Run folder written by 'finetune'."),
    eps: str | None = typer.Option(
        None, help="Comma-separated L∞ budgets in [0, 1] pixels (default: hash "
        "0.001,0.005,0.01,0.05,0.1,0.5; classify 0,0.001,0.005,0.01,0.05,0.1,0.5)."),
    steps: int | None = typer.Option(
        None, help="Attack iterations (HAG/SDHA default: the preset's, paper = 5; PGD 5); "
        "Square: queries per image (default 1000)."),
    grad: str = typer.Option("exact,model", help="Gradient sources: exact (through W) and/or "
                             "model (the rule's feedback path). Square is gradient-free."),
    preset: str | None = typer.Option(None, help="HAG/SDHA preset: paper | reference."),
    max_queries: int | None = typer.Option(
        None, "--max-queries", help="Attack a seeded subsample of this many queries."),
    batch_size: int = typer.Option(128, "--batch-size", help="Attack batch size."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
    seed: int = typer.Option(0, help="Seed of the attack and of the query subsample."),
) -> None:
    """Attack a run's model over an ε sweep with each gradient source: adversarial mAP@k
    (hash: adversarial queries vs the clean database, with clean and theory levels) or
    robust accuracy (classify). Writes attack-NAME.json and attack-NAME.png into the run."""
    from .eval.robustness import report_paths, report_rows
    from .runs import RunFolderError
    from .ui import RichProgress, console, print_table
    from .workflows import attack_run

    grads = [g.strip() for g in grad.split(",") if g.strip()]
    try:
        report = attack_run(run, name, _float_list(eps, "--eps"), grads=grads, steps=steps,
                            preset=preset, max_queries=max_queries, batch_size=batch_size,
                            device=device, seed=seed, progress=RichProgress())
    except (FileNotFoundError, RunFolderError, ConfigError, KeyError, ValueError,
            RuntimeError) as e:
        _fail(str(e).strip("'\""))
    header, rows = report_rows(report)
    k = f", k={report['k']}" if report.get("k") is not None else ""
    budget = (f"{report['steps']} model queries/image" if name == "square"
              else f"{report['steps']} step(s)")
    print_table(f"{name} on {report['rule']} ({report['num_queries']} queries, {budget}{k})",
                header,
                [[_cell(v) for v in r] for r in rows])
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False)
    for path in report_paths(run, name):
        if path.is_file():
            console.print(f"written: [bold]{path}[/]")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders holding attack-*.json reports."),
    out: Path = typer.Option(Path("compare"), "--out", "-o",
                             help="Folder for compare.json and compare-ATTACK.png."),
) -> None:
    """Put several runs (e.g. BP vs frSF vs uSF) side by side under each attack they were
    evaluated with: one table and one plot per attack (exact-gradient lines solid,
    model-gradient lines dashed, one colour per run)."""
    from .eval.compare import compare_rows, compare_runs
    from .ui import console, print_table

    try:
        result = compare_runs(runs, out)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    for name, entry in result["attacks"].items():
        header, rows = compare_rows(entry)
        print_table(f"{name}: {entry['metric']}", header, [[_cell(v) for v in r] for r in rows])
    for png in result["plots"].values():
        console.print(f"written: [bold]{out / png}[/]")
    console.print(f"written: [bold]{out / 'compare.json'}[/]")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the runs."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
) -> None:
    """End to end on the bundled digits (about 30 s on 2 idle CPU cores): BP pre-training,
    BP and frSF hashing fine-tunes, FAISS index, mAP@k, HAG and SDHA with exact and model
    gradients, and the comparison table. Re-running reuses finished training stages."""
    from .demo import DemoSettings, run_demo
    from .eval.compare import compare_rows
    from .ui import RichProgress, console, print_table

    try:
        summary = run_demo(out, DemoSettings(seed=seed, device=device), progress=RichProgress())
    except (FileExistsError, ConfigError) as e:
        _fail(str(e))
    p = summary["pretrain"]
    console.print(f"BP pre-training: validation accuracy {p['val_accuracy']:.3f}, "
                  f"test accuracy {p['test_accuracy']:.3f}")
    rows = [(rule, r["map@k"], r["map@k_expected_ties"], r["precision@h<=2"],
             r["index"]["faiss_precision"], r["index"]["agree"])
            for rule, r in summary["retrieval"].items()]
    print_table("retrieval (32-bit HyP² codes, whole-database mAP)",
                ["rule", "mAP", "mAP (expected ties)", "P@H<=2", "FAISS P@10",
                 "FAISS = metric"], rows)
    for attack, entry in summary["compare"]["attacks"].items():
        header, rows = compare_rows(entry)
        print_table(f"{attack.upper()}: adversarial mAP (exact = through W, model = the "
                    f"rule's own gradient)", header, rows)
    for note in summary["notes"]:
        console.print(f"note: {note}", highlight=False)
    console.print(f"runs, plots and demo.json in [bold]{out}[/]")


@app.command("list")
def list_cmd(
    what: str = typer.Argument("all", help="backbones | rules | datasets | losses | attacks "
                               "| indexes | all."),
) -> None:
    """List what is registered (the names --backbone, --rule, --dataset... accept)."""
    from .registry import registries
    from .ui import print_table

    regs = registries()
    if what != "all" and what not in regs:
        _fail(f"cannot list {what!r}; choose one of: all, {', '.join(regs)}")
    for name, reg in regs.items():
        if what in ("all", name):
            rows = [(n, reg.help(n)) for n in reg.names()]
            if name == "backbones":
                rows.append(("timm:<name>", "any timm model, e.g. timm:resnet50"))
            print_table(name, ["name", "description"], rows)


def main() -> None:  # pragma: no cover
    app()
