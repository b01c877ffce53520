"""The ``retrieval-bio`` command line: parses arguments and calls the library, nothing more.

Errors a user can act on (a bad option, a missing or damaged file, bad data, a diverged run)
are printed as one plain-text ``error:`` message naming the input and the fix, exit code 2;
``--debug`` shows the traceback instead. Ctrl-C exits with 130 after saying what was kept.
"""

from __future__ import annotations

import inspect
import logging
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from . import __version__
from .config import ConfigError, RunConfig, build_config, load_yaml, resume_config

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

_state = {"debug": False}
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _version(value: bool) -> None:
    if value:
        typer.echo(f"retrieval-bio {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an error "
                               "instead of the one-line message."),
) -> None:
    """Measure how the learning rule behind a network changes its adversarial robustness."""
    _state["debug"] = debug


# -- errors -------------------------------------------------------------------------------


def _say(message: str, err: bool = True) -> None:
    """Print as plain text: paths with brackets, quotes and YAML marks stay exactly as
    they are (no markup parsing)."""
    typer.echo(message, err=err)


def _fail(message: str) -> None:
    _say(f"error: {message}")
    raise typer.Exit(EXIT_USER_ERROR)


def _message(e: BaseException) -> str:
    # KeyError's str() adds quotes around the message; the message itself has none to strip
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
        return e.args[0]
    from .runs import RunFolderError

    if isinstance(e, OSError) and not isinstance(e, RunFolderError) and e.filename:
        # a bare "[Errno 30] Read-only file system: 'x'": say what failed and what to do
        return (f"cannot write or read {e.filename}: {e.strerror}; check that the folder "
                f"exists, is a folder and is writable, or choose another --out")
    return str(e)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .datasets import DatasetError
    from .runs import RunFolderError
    from .train import DivergenceError

    # OSError covers PermissionError, a full disk and files that vanished mid-run;
    # KeyError is what the registries raise for an unknown name.
    return (ConfigError, RunFolderError, DatasetError, DivergenceError, KeyError, OSError)


@contextmanager
def _guard(interrupted: str | Callable[[], str] | None = None) -> Iterator[None]:
    """Turn the errors a user can act on into one ``error:`` line (exit 2) and Ctrl-C into
    a line saying what was kept (exit 130). With ``--debug`` the traceback is shown too."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        from .distributed import env_rank

        text = interrupted() if callable(interrupted) else interrupted
        if env_rank() == 0:  # under torchrun every rank stops; one says so
            _say(f"interrupted{': ' + text if text else ''}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except _user_errors() as e:
        if _state["debug"]:
            traceback.print_exc()
        _fail(_message(e))


def _setup_logging(verbose: bool) -> None:
    from .distributed import env_rank

    level = logging.INFO if verbose else logging.WARNING
    if env_rank() != 0:  # under torchrun, rank 0 speaks for the run
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# -- run options: one flag per RunConfig key ----------------------------------------------


def _opt(*names: str, help: str, default: Any = None) -> Any:  # noqa: A002
    return typer.Option(default, *names, help=help)


ANY = ("pretrain", "finetune", "train")
NOT_PRETRAIN = ("finetune", "train")  # pretrain is BP classification by definition

#: (parameter name, annotation, typer option, stages that take it). ``None`` = not given:
#: the config file or the stage default applies. Every RunConfig key but ``stage`` has one.
RUN_OPTIONS: list[tuple[str, Any, Any, tuple[str, ...]]] = [
    ("config", Path | None, _opt("--config", "-c", help="YAML run config; flags override "
                                 "it."), ANY),
    ("task", str | None, _opt("--task", help="classify | hash (HyP² hash head)."),
     NOT_PRETRAIN),
    ("rule", str | None, _opt("--rule", help="Learning rule: bp | fa | usf | frsf | brsf "
                              "(layer rules) | pepita | ep | krotov (see 'retrieval-bio list "
                              "learners')."),
     NOT_PRETRAIN),
    ("scale", str | None, _opt("--scale", help="Feedback scale: norm (default, |B|=|W| per "
                               "layer) | none | init (BioTorch's)."), ("finetune",)),
    ("bits", int | None, _opt("--bits", help="Code length K in bits (hash task, multiple "
                              "of 8)."), ("finetune",)),
    ("init", str | None, _opt("--init", help="Start from this pretrain run folder (its "
                              "backbone and image size too, unless given) or weights file."),
     ("finetune",)),
    ("backbone", str | None, _opt("--backbone", help="alexnet | vgg16 | resnet18 | small-cnn "
                                  "| timm:<name>."), ANY),
    ("weights", str | None, _opt("--weights", help="Backbone weights: 'imagenet' (local "
                                 "cache) or a file."), ANY),
    ("dataset", str | None, _opt("--dataset", help="Dataset name (default digits); see "
                                 "'retrieval-bio list datasets'."), ANY),
    ("root", str | None, _opt("--root", help="Folder holding the dataset in its standard "
                              "layout."), ANY),
    ("protocol", str | None, _opt("--protocol", help="Split protocol (default: the "
                                  "dataset's own)."), ANY),
    ("image_size", int | None, _opt("--image-size", help="Input side length in px."),
     ANY),
    ("augment", bool | None, _opt("--augment/--no-augment", help="Train-split augmentation."),
     ANY),
    ("k", int | None, _opt("--k", help="mAP@k cut-off (<= 0: whole database)."),
     NOT_PRETRAIN),
    ("index", str | None, _opt("--index", help="FAISS index kind of database.index: flat | "
                               "hash | multihash | ivf."), ("finetune",)),
    ("learner_options", list[str] | None, _opt("--learner-opt", help="Learner option "
                                               "KEY=VALUE, repeatable (pepita: output_error="
                                               "first|modulated, f_scale=0.05)."),
     NOT_PRETRAIN),
    ("model_options", list[str] | None, _opt("--model-opt", help="Backbone option KEY=VALUE, "
                                             "repeatable (mlp: hidden=[1024], dropout=0.1, "
                                             "bias=true, output_bias=true, grey=true)."),
     ANY),
    ("frontend", str | None, _opt("--frontend", help="Structural front end before the "
                                  "backbone: none | polarizing | sparse-coding (seed 004)."),
     ANY),
    ("frontend_options", list[str] | None, _opt("--frontend-opt", help="Front-end option "
                                                "KEY=VALUE, repeatable (polarizing: threshold="
                                                "0.3, stage_epochs=[20,20])."), ANY),
    ("loss", str | None, _opt("--loss", help="auto (hyp2 for hash, cross-entropy for "
                              "classify) | cross-entropy | mse-softmax | hyp2."),
     ANY),
    ("optimizer", str | None, _opt("--optimizer", help="adam (default) | sgd."),
     ANY),
    ("momentum", float | None, _opt("--momentum", help="SGD momentum (default 0.9)."),
     ANY),
    ("nesterov", bool | None, _opt("--nesterov/--no-nesterov", help="SGD Nesterov momentum."),
     ANY),
    ("schedule", str | None, _opt("--schedule", help="Per-epoch learning-rate schedule: none "
                                  "| multistep | cosine | linear."),
     ANY),
    ("milestones", str | None, _opt("--milestones", help="multistep: epochs (from 0) where "
                                    "the rate is multiplied by --gamma, e.g. 60,90."),
     ANY),
    ("gamma", float | None, _opt("--gamma", help="multistep factor (default 0.1)."),
     ANY),
    ("t_max", int | None, _opt("--t-max", help="cosine / linear length in epochs (default: "
                               "--epochs); the rate holds at --lr-min after it."),
     ANY),
    ("lr_min", float | None, _opt("--lr-min", help="cosine floor / linear end rate."),
     ANY),
    ("layer_lrs", str | None, _opt("--layer-lrs", help="Per-layer learning rates of the "
                                   "backbone's layers in order, e.g. 0.25,0.15,0.1,0.08 "
                                   "(seed 002); the head keeps --lr-head."), ANY),
    ("freeze_backbone", bool | None, _opt("--freeze-backbone/--no-freeze-backbone",
                                          help="Train only the head: the backbone's weights "
                                          "stay fixed and its BatchNorms in eval mode (the "
                                          "head stage of a kh run)."), ANY),
    ("beta", float | None, _opt("--beta", help="EP nudging strength β (ep-* backbones; "
                                "default: the preset's)."), ANY),
    ("t_free", int | None, _opt("--t-free", help="EP free-phase steps per training step."),
     ANY),
    ("t_nudge", int | None, _opt("--t-nudge", help="EP steps of each nudged phase."), ANY),
    ("t_eval", int | None, _opt("--t-eval", help="EP relaxation steps of a prediction."), ANY),
    ("t_attack", int | None, _opt("--t-attack", help="EP steps of the unroll attacks "
                                  "differentiate (the run's default)."), ANY),
    ("adv_train", str | None, _opt("--adv-train", help="Adversarial training: none | fgsm | "
                                   "pgd (classify) | hag (hash); exact gradients."),
     ANY),
    ("val_attack", str | None, _opt("--val-attack", help="Also score validation under this "
                                    "attack (none | fgsm | pgd | hag; the --adv-* settings)."),
     ANY),
    ("adv_eps", float | None, _opt("--adv-eps", help="L∞ budget of --adv-train / "
                                   "--val-attack in [0, 1] pixels (default 0.3)."),
     ANY),
    ("adv_steps", int | None, _opt("--adv-steps", help="PGD / HAG iterations (default 40)."),
     ANY),
    ("adv_alpha", float | None, _opt("--adv-alpha", help="PGD step size (default eps/3)."),
     ANY),
    ("adv_random_start", bool | None, _opt("--adv-random-start/--no-adv-random-start",
                                           help="PGD starts at a random point of the ball."),
     ANY),
    ("adv_mix", str | None, _opt("--adv-mix", help="both ([x; x_adv], default) | adversarial "
                                 "(x_adv only)."), ANY),
    ("select", str | None, _opt("--select", help="Keep the epoch with the best natural "
                                "(default) or adversarial (needs --val-attack) validation "
                                "score."), ANY),
    ("epochs", int | None, _opt("--epochs", help="Training epochs."), ANY),
    ("batch_size", int | None, _opt("--batch-size", help="Batch size."),
     ANY),
    ("lr_backbone", float | None, _opt("--lr-backbone", help="Learning rate of the "
                                       "backbone."), ANY),
    ("lr_head", float | None, _opt("--lr-head", help="Learning rate of the task layer."), ANY),
    ("proxy_lr_mult", float | None, _opt("--proxy-lr-mult", help="HyP² proxies' rate as a "
                                         "multiple of --lr-head."), ("finetune",)),
    ("weight_decay", float | None, _opt("--weight-decay", help="Weight decay (L2)."),
     ANY),
    ("betas", str | None, _opt("--betas", help="Adam betas, e.g. 0.9,0.999."),
     ANY),
    ("num_workers", int | None, _opt("--num-workers", help="Data-loading worker processes "
                                     "(default: 0 for in-memory data, else the CPUs per "
                                     "process, at most 8)."), ANY),
    ("seed", int | None, _opt("--seed", help="Seed of every random choice of the run."),
     ANY),
    ("device", str | None, _opt("--device", help="auto (cuda, mps, cpu) | cpu | cuda | cuda:N "
                                "| mps."), ANY),
    ("eval_device", str | None, _opt("--eval-device", help="Device of the test encoding "
                                     "(default: --device)."), ANY),
    ("data_cache", str | None, _opt("--data-cache", help="Folder of a decoded uint8 image "
                                    "cache, built on first use and checked against the "
                                    "source lists (default: off)."), ANY),
    ("amp", bool | None, _opt("--amp/--no-amp", help="float16 autocast on CUDA."),
     ANY),
    ("skip_bad", bool | None, _opt("--skip-bad/--no-skip-bad", help="Skip (and count) "
                                   "unreadable images and bad list lines."),
     ANY),
    ("divergence_factor", float | None, _opt("--divergence-factor", help="Stop when the loss "
                                             "grows this many times its start (0: off)."),
     ANY),
    ("out", str | None, _opt("--out", "-o", help="Run folder to write."),
     ANY),
    ("data_opt", list[str] | None, _opt("--data-opt", help="Dataset loader option KEY=VALUE "
                                        "(VALUE read as YAML), repeatable: --data-opt "
                                        "lists=/data/nus/lists."), ANY),
    ("resume", bool, _opt("--resume/--no-resume", default=False,
                          help="Continue the run in --out from its checkpoint."),
     ANY),
    ("verbose", bool, _opt("--verbose/--quiet", "-v", default=False,
                           help="Log more (INFO messages)."), ANY),
]


def _data_options(items: list[str] | None, flag: str = "--data-opt") -> dict | None:
    if not items:
        return None
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = load_yaml(value)
        except yaml.YAMLError as e:
            _fail(f"{flag} {item!r}: the value is not valid YAML ({e})")
    return out


def _int_list(text: str | None, what: str, example: str = "60,90") -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        _fail(f"{what} takes whole numbers separated by commas, e.g. {example}; got {text!r}")


def _betas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    values = _float_list(text, "--betas")
    if values is None or len(values) != 2:
        _fail(f"--betas takes two numbers, e.g. 0.9,0.999; got {text!r}")
    return values


def _check_data_options(cfg: RunConfig) -> None:
    """A mistyped --data-opt key is named before any data is read (loaders would otherwise
    swallow it through ``**kwargs``)."""
    from .datasets import DATASETS
    from .datasets.listfile import LIST_LOADERS, load_list_splits

    loader = DATASETS.get(cfg.dataset)
    params = inspect.signature(loader).parameters
    named = {n for n, p in params.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and not n.startswith("_")}
    if cfg.dataset in LIST_LOADERS:  # they pass **kw on to the shared list-file reader
        named |= set(inspect.signature(load_list_splits).parameters)
    reserved = {"root", "protocol", "seed", "image_size", "augment", "name"}
    unknown = sorted(set(cfg.dataset_options) - (named - reserved) - {"skip_bad"})
    if unknown:
        raise ConfigError(
            f"--data-opt {', '.join(unknown)}: not an option of dataset {cfg.dataset!r}; it "
            f"takes {', '.join(sorted(named - reserved - {'problems'})) or 'none'}")


def _check_cells_data_options(grid: Path, cells: Sequence[Any]) -> None:
    """:func:`_check_data_options` for every cell of a grid file (``sweep``, ``tradeoff``),
    the error naming the file and the cell."""
    for cell in cells:
        try:
            _check_data_options(cell.config)
        except ConfigError as e:
            raise ConfigError(f"{grid}: cell {cell.name}: "
                              f"{str(e).replace('--data-opt ', 'dataset_options: ')}"
                              ) from None


def _train(stage: str, **given: Any) -> None:
    from .distributed import env_rank
    from .train import train_run
    from .ui import RichProgress, console, print_table

    _setup_logging(given.pop("verbose"))
    resume = given.pop("resume")
    config = given.pop("config")
    given["dataset_options"] = _data_options(given.pop("data_opt"))
    given["learner_options"] = _data_options(given.get("learner_options"), "--learner-opt")
    given["model_options"] = _data_options(given.get("model_options"), "--model-opt")
    given["frontend_options"] = _data_options(given.get("frontend_options"), "--frontend-opt")
    given["betas"] = _betas(given.get("betas"))
    given["milestones"] = _int_list(given.get("milestones"), "--milestones")
    given["layer_lrs"] = _float_list(given.get("layer_lrs"), "--layer-lrs")
    if stage == "pretrain":
        given["task"] = "classify"
    out = given.get("out")

    def interrupted() -> str:
        where = shlex.quote(out or RunConfig().out)
        return (f"the checkpoint is kept; continue with: retrieval-bio {stage} --resume "
                f"--out {where}")

    with _guard(interrupted):
        if resume:
            if not out:
                raise ConfigError("--resume needs --out DIR, the run folder to continue")
            cfg = resume_config(out, stage, config, **given)
        else:
            cfg = build_config(stage, config, **given)
        _check_data_options(cfg)
        result = train_run(cfg, resume=resume, progress=RichProgress())
    if env_rank() != 0:
        return
    rows = [(k, v) for k, v in result.metrics.items() if not isinstance(v, (list, dict))]
    print_table(f"{stage}: {result.run_dir}", ["metric", "value"], rows)
    warnings = [h["warning"] for h in result.metrics.get("history", []) if "warning" in h]
    for w in warnings:
        _say(f"warning: {w}")
    console.print(f"run folder: {result.run_dir}", markup=False, highlight=False)


def _command(stage: str, doc: str) -> Callable[..., None]:
    """A typer command taking the :data:`RUN_OPTIONS` of ``stage`` (one table serves
    pretrain and finetune, so the two cannot drift apart)."""
    params, notes = [], {}
    for name, annotation, option, stages in RUN_OPTIONS:
        if stage in stages:
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                             default=option, annotation=annotation))
            notes[name] = annotation

    def command(**given: Any) -> None:
        _train(stage, **given)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = notes
    command.__doc__ = doc
    command.__name__ = stage
    return command


pretrain = app.command("pretrain")(_command("pretrain", """BP pre-training of backbone +
classifier (writes config.yaml, metrics.json, checkpoint.pt, best.pt, training_curve.png).
The starting point that 'finetune --init' takes."""))

train = app.command("train")(_command("train", """Train a model from scratch with any rule
or learner: a layer rule (bp, fa, usf, frsf, brsf) or a procedure that is not backprop
(pepita), with optional adversarial training (--adv-train). E.g. seed 000's PEPITA:
'retrieval-bio train --config configs/pepita/natural/mnist-pepita.yaml'."""))

finetune = app.command("finetune")(_command("finetune", """Fine-tune every parameter with a
learning rule behind a new task layer (SPEC §3 defaults: Adam, lr 1e-5 backbone / 1e-4 head,
weight decay 5e-4, 20 epochs, batch 32). Hashing runs select the epoch by validation mAP
and write codes.npz and database.index."""))


# -- data ---------------------------------------------------------------------------------


@data_app.command("check")
def data_check(
    name: str = typer.Argument(..., help="Dataset name: cifar10, nuswide21, coco, list..."),
    root: str | None = typer.Option(None, help="Folder holding the dataset on disk."),
    lists: str | None = typer.Option(None, help="Folder of list files (default: --root)."),
    protocol: str | None = typer.Option(None, help="Split protocol (default: the dataset's)."),
    seed: int = typer.Option(0, help="Seed of the split."),
    counts: str | None = typer.Option(
        None, help="Protocol size overrides, e.g. 'query=5,validation=5,train=10'."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad/--no-skip-bad",
        help="Exit 0 when only skippable items (bad lines/images) fail."),
    max_problems: int = typer.Option(20, help="How many problems to list."),
) -> None:
    """Validate a dataset on disk: parse every list line, open and decode every image,
    build the protocol's splits and report their sizes and the first problems."""
    from .datasets import check
    from .ui import print_table

    kw: dict = {"lists": lists} if lists else {}
    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    with _guard():
        if counts:
            try:
                kw["counts"] = {k.strip(): int(v) for k, v in
                                (item.split("=") for item in counts.split(","))}
            except ValueError:
                raise ConfigError(f"--counts takes SPLIT=N,..., got {counts!r}") from None
        report = check(name, root, protocol=protocol, seed=seed, max_problems=max_problems,
                       **kw)
    if report.sizes is not None:
        print_table(f"{name}: {report.info.get('protocol', '')} (C = {report.num_classes})",
                    ["split", "items"], list(report.sizes.items()))
    for p in report.problems:
        _say(f"problem: {p}", err=False)
    if report.n_problems > len(report.problems):
        _say(f"... and {report.n_problems - len(report.problems)} more problems", err=False)
    if report.fatal:
        _fail(report.fatal)
    verdict = "ok" if report.ok else f"{report.n_problems} bad item(s)"
    _say(f"{name}: {verdict}" + (", skipped" if skip_bad and not report.ok else ""), err=False)
    if not report.usable(skip_bad):
        raise typer.Exit(1)


# -- evaluate, attack, compare, report ----------------------------------------------------

WeightsChoice = typer.Option(
    "best", "--weights", help="Which weights: best (the selected epoch, best.pt), last "
    "(checkpoint.pt) or a checkpoint file.")
SkipBadOpt = typer.Option(None, "--skip-bad/--no-skip-bad",
                          help="Skip unreadable images (default: the run's own setting).")
DeviceChoice = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps.")


def _metric_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = []
    for key, v in report.items():
        if isinstance(v, (dict, list)) or key in ("written_to",):
            continue
        if key == "map@k":
            key = "mAP@all" if report.get("k", 0) <= 0 else f"mAP@{report['k']}"
        elif key == "map@k_expected_ties":
            key += " (all)" if report.get("k", 0) <= 0 else ""
        rows.append((key, v))
    w = report.get("evaluated_weights") or {}
    if w:
        rows.append(("weights", f"{w.get('file')} (epoch {w.get('epoch')})"))
    return rows


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by 'finetune' or 'pretrain'."),
    k: int | None = typer.Option(None, help="mAP@k cut-off (<= 0: whole database); "
                                 "default: the run's own."),
    radius: int = typer.Option(2, help="Hamming radius of the precision-within-radius metric."),
    weights: str = WeightsChoice,
    encode: bool = typer.Option(
        False, "--encode/--no-encode", help="Re-encode query and database with the weights "
        "(rewrites codes.npz and database.index); what finishes a run whose final encode "
        "stopped on a bad image, with --skip-bad."),
    index: str | None = typer.Option(None, "--index", help="Index kind when re-encoding: "
                                     "flat | hash | multihash | ivf (default: the run's)."),
    skip_bad: bool | None = SkipBadOpt,
    device: str = DeviceChoice,
) -> None:
    """Evaluate a run: mAP@k (index and expected ties), precision/recall@k, P@H<=2 and the
    PR curve for hashing runs; test accuracy for classification runs. Merged into
    metrics.json, with the weights file and epoch used."""
    from .ui import RichProgress, console, print_table
    from .workflows import evaluate_run

    with _guard():
        report = evaluate_run(run, k=k, radius=radius, device=device, weights=weights,
                              encode_codes=encode or index is not None, index=index,
                              skip_bad=skip_bad, progress=RichProgress())
    print_table(f"evaluate: {run}", ["metric", "value"], _metric_rows(report))
    for note in report["notes"]:
        _say(f"note: {note}")
    if report.get("written_to"):
        console.print(f"written to {report['written_to']}", markup=False, highlight=False)


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


def print_attack_report(report: dict[str, Any]) -> None:
    """The table of one attack report, its masking line (classification: falls to chance,
    zero gradients), its notes (the masking warnings among them) and where it is written."""
    from .eval.compare import masking_line
    from .eval.robustness import report_rows
    from .ui import print_table

    header, rows = report_rows(report)
    k = f", k={report['k']}" if report.get("k") is not None else ""
    if report["attack"] == "square":
        budget = f"{report['steps']} model queries/image"
    elif report["attack"] == "auto":
        budget = (f"APGD-CE + APGD-T {report['steps']} step(s), Square "
                  f"{report.get('queries_per_image')} queries/image")
    else:
        budget = f"{report['steps']} step(s)"
    w = report.get("weights") or {}
    used = f", {w.get('file')} epoch {w.get('epoch')}" if w else ""
    norm = "L2" if report.get("norm") == "l2" else "L∞"
    print_table(f"{report['attack']} ({norm}) on {report.get('rule', '?')} "
                f"({report['num_queries']} queries, {budget}{k}{used})", header,
                [[_cell(v) for v in r] for r in rows])
    if not report.get("complete", True):
        _say("note: some cells are empty (an interrupted sweep); run the same command again "
             "to compute them")
    line = masking_line(report)
    if line:
        _say(line, err=False)
    for note in report.get("notes", []):
        _say(f"note: {note}")
    if report.get("path"):
        _say(f"report: {report['path']}", err=False)


@app.command("attack")
def attack_cmd(
    name: str = typer.Argument(..., help="hag | sdha (hash runs) | fgsm | pgd | square | "
                               "apgd | apgd-t | auto (classify runs; auto = APGD-CE, then "
                               "APGD-T, then Square, per-image worst case)."),
    run: Path = typer.Argument(..., help="Run folder written by 'finetune'."),
    eps: str | None = typer.Option(
        None, help="Comma-separated budgets in [0, 1] pixels, in --norm: L∞ in [0, 1], L2 "
        "(over an image's C·H·W entries) any value >= 0 (default: hash "
        "0.001,0.005,0.01,0.05,0.1,0.5; classify 0,0.001,0.005,0.01,0.05,0.1,0.5; --norm l2: "
        "seed 002's grid 0, 0.05 ... 3). Add 1 (L∞) or sqrt(C·H·W) (L2) to a classifier "
        "sweep for the gradient-masking check (accuracy must fall to chance)."),
    norm: str = typer.Option(
        "linf", "--norm", help="Threat model: linf (max over pixels) | l2 (Euclidean over "
        "an image's C·H·W pixels). Classifier attacks only; HAG/SDHA are L∞."),
    steps: int | None = typer.Option(
        None, help="Iterations of an iterative attack (HAG/SDHA default: the preset's, "
        "paper = 5; PGD 5; APGD, APGD-T and auto's APGD parts 100). Not for square: see "
        "--queries-per-image."),
    queries_per_image: int | None = typer.Option(
        None, "--queries-per-image", help="Square's model queries per image (default "
        "1000), or auto's Square part's (default 5000)."),
    grad: str = typer.Option("exact,model", help="Gradient sources: exact (through W) and/or "
                             "model (the rule's feedback path). Square is gradient-free."),
    preset: str | None = typer.Option(
        None, help="HAG/SDHA preset: paper (5 steps) | reference (ε 8/255, SAAT's steps). PGD "
        "preset: paper (5 steps, step ε/3; the default) | pepita (seed 000: 40 steps, step "
        "0.1, random start; default --eps 0,0.1,0.2,0.3,0.5,1) | ep (seed 002: 20 steps, "
        "step ε/8, no random start; default --eps 0,1.18/255,2.55/255,5.49/255,8/255,0.1,1). "
        "--steps wins over a preset."),
    num_images: int | None = typer.Option(
        None, "--num-images", help="Attack a seeded subsample of this many query images "
        "(default: all)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Attack batch size."),
    weights: str = WeightsChoice,
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", help="Recompute cells that a report with the "
        "same settings already holds."),
    report_dir: Path | None = typer.Option(
        None, "--report-dir", help="Folder for the report (default: the run folder)."),
    skip_bad: bool | None = SkipBadOpt,
    device: str = DeviceChoice,
    seed: int = typer.Option(0, help="Seed of the attack and of the query subsample."),
    bpda: str | None = typer.Option(
        None, "--bpda", help="Backward through the model's non-differentiable ops (front-end "
        "quantisers, top-T, dropout), one column each: none (their true gradient: zero "
        "through a quantiser, the obfuscated number) | identity | smooth (tanh staircase, "
        "top-U), e.g. none,identity,smooth. Default for a front-end run: none,identity,smooth "
        "(and smooth with --eot 10 for a random one)."),
    eot: str | None = typer.Option(
        None, "--eot", help="EOT: gradient samples averaged per step (fresh randomness in "
        "each), one column per value, e.g. 1,10."),
    eot_reduce: str = typer.Option(
        "normalized", "--eot-reduce", help="How EOT samples combine: mean | normalized "
        "(each gradient scaled to unit L2 per image first; seed 004) | sign."),
    source: Path | None = typer.Option(
        None, "--source", help="Transfer attack: make the adversarial images on this run's "
        "model and score them on RUN's."),
    t_attack: str | None = typer.Option(
        None, "--t-attack", help="EP (ep-*) runs: relaxation steps the gradient "
        "differentiates (default: the run's t_attack); a list such as 2,10,30,70 sweeps them "
        "and plots accuracy against t_attack. Scoring stays at the run's t_eval."),
) -> None:
    """Attack a run's model over an ε sweep with each gradient source: adversarial mAP@k
    (hash: adversarial queries vs the clean database, with clean and theory levels) or
    robust accuracy (classify). Writes attack-NAME-KEY.json and .png into the run, KEY a
    digest of the settings: other settings make another report; the same settings reuse
    the cells already computed (an interrupted sweep continues)."""
    from .ui import RichProgress
    from .workflows import attack_run

    grads = [g.strip() for g in grad.split(",") if g.strip()]
    attack_kwargs = None
    if name == "square":
        if steps is not None:
            _fail("square is not iterative: give its budget with --queries-per-image, not "
                  "--steps")
        steps = queries_per_image
    elif name == "auto" and queries_per_image is not None:
        if queries_per_image < 0:
            _fail(f"--queries-per-image must be >= 0, got {queries_per_image}")
        attack_kwargs = {"n_queries": queries_per_image}
    elif queries_per_image is not None:
        _fail(f"--queries-per-image is Square's budget (square, auto); {name} takes --steps")
    eps_list = _float_list(eps, "--eps")
    kept = (f"every (source, ε) cell finished before the interrupt is kept in "
            f"{report_dir or run}/attack-{name}-*.json; run the same command again to continue")
    lengths = _int_list(t_attack, "--t-attack", "2,10,30,70")
    common = dict(grads=grads, steps=steps, preset=preset, max_queries=num_images,
                  batch_size=batch_size, device=device, seed=seed, weights=weights,
                  overwrite=overwrite, out_dir=report_dir, skip_bad=skip_bad,
                  progress=RichProgress(), norm=norm, attack_kwargs=attack_kwargs,
                  bpda=[b.strip() for b in bpda.split(",") if b.strip()] if bpda else None,
                  eot=_int_list(eot, "--eot", "1,10"), eot_reduce=eot_reduce, source=source)
    with _guard(kept):
        if lengths is not None and len(lengths) > 1:
            from .workflows import t_attack_sweep

            sweep = t_attack_sweep(run, name, lengths, eps_list, **common)
            print_t_attack_sweep(sweep)
            return
        report = attack_run(run, name, eps_list, t_attack=lengths[0] if lengths else None,
                            **common)
    print_attack_report(report)


def print_t_attack_sweep(sweep: dict[str, Any]) -> None:
    """Robust accuracy per (gradient source, ε) against the unroll length."""
    from .ui import console, print_table

    header = ["grad", "ε"] + [f"t={t}" for t in sweep["t_attack"]]
    rows = [[g, e, *map(_cell, values)] for g, by_eps in sweep["accuracy"].items()
            for e, values in by_eps.items()]
    print_table(f"{sweep['attack']} vs t_attack on {sweep.get('rule')} (scored at t_eval="
                f"{sweep.get('t_eval')}; clean {_cell(sweep.get('clean_accuracy'))})",
                header, rows)
    for note in sweep.get("notes", []):
        _say(f"note: {note}", err=False)
    if sweep.get("path"):
        console.print(f"sweep: {sweep['path']}", markup=False, highlight=False)


def print_corruption_report(report: dict[str, Any]) -> None:
    """The table of one corruption report (a row per corruption, the mean row, the clean
    accuracy), its notes and where it is written."""
    from .eval.corruption import report_rows
    from .ui import print_table

    header, rows = report_rows(report)
    w = report.get("weights") or {}
    used = f", {w.get('file')} epoch {w.get('epoch')}" if w else ""
    def fmt(v: object) -> object:
        return f"{v:.4f}" if isinstance(v, float) else _cell(v)

    print_table(f"accuracy under corruptions ({report['source']}) on {report.get('rule', '?')} "
                f"({report['num_images']} images per cell, seed {report['seed']}{used})",
                header, [[fmt(v) for v in r] for r in rows])
    if not report.get("complete", True):
        _say("note: some cells are empty (an interrupted sweep); run the same command again "
             "to compute them")
    for note in report.get("notes", []):
        _say(f"note: {note}")
    if report.get("path"):
        _say(f"report: {report['path']}", err=False)
    if report.get("plot"):
        _say(f"heat map: {report['plot']}", err=False)


@app.command("corrupt")
def corrupt_cmd(
    run: Path = typer.Argument(..., help="Classification run folder (any learner)."),
    root: Path | None = typer.Option(
        None, "--root", help="Folder of the official CIFAR-10-C / CIFAR-100-C arrays "
        "(<name>.npy + labels.npy). Without it the run's query images are corrupted "
        "in-process with CIFAR-C's constants (15 corruptions; not motion_blur, snow, frost, "
        "spatter)."),
    corruptions: str | None = typer.Option(
        None, "--corruptions", help="Comma-separated names (default: all available; see "
        "'retrieval-bio list corruptions')."),
    severities: str = typer.Option("1,2,3,4,5", "--severities",
                                   help="Comma-separated severities in 1..5."),
    num_images: int | None = typer.Option(
        None, "--num-images", help="Evaluate a seeded subset of this many images per cell "
        "(default: all)."),
    seed: int = typer.Option(0, help="Seed of the generated noise and of the subset."),
    batch_size: int = typer.Option(128, "--batch-size", help="Evaluation batch size."),
    device: str = DeviceChoice,
    weights: str = WeightsChoice,
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", help="Recompute cells that a report with the "
        "same settings already holds."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Folder for the report (default: the run folder)."),
) -> None:
    """Accuracy of a classification run under natural corruptions (CIFAR-10-C style, seed
    002 §5.1): per corruption x severity, the mean per severity and overall, the clean
    accuracy. Writes corruption-KEY.json (after every cell) and a heat map
    corruption-KEY.png into the run, KEY a digest of the settings; the same settings reuse
    the cells already computed (an interrupted sweep continues)."""
    from .ui import RichProgress
    from .workflows import corrupt_run

    names = ([c.strip() for c in corruptions.split(",") if c.strip()]
             if corruptions is not None else None)
    try:
        levels = [int(t) for t in severities.replace(" ", "").split(",") if t]
    except ValueError:
        _fail(f"--severities takes whole numbers in 1..5 separated by commas, e.g. 1,3,5; "
              f"got {severities!r}")
    kept = (f"every cell finished before the interrupt is kept in "
            f"{out or run}/corruption-*.json; run the same command again to continue")
    with _guard(kept):
        report = corrupt_run(run, root=root, corruptions=names, severities=levels,
                             seed=seed, max_images=num_images, batch_size=batch_size,
                             device=device, weights=weights, overwrite=overwrite, out_dir=out,
                             progress=RichProgress())
    print_corruption_report(report)


@app.command("diagnose")
def diagnose_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folder(s) to diagnose; with several, "
                                      "--out DIR gets a comparison."),
    eps: float = typer.Option(8 / 255, help="L∞ budget of the attack the perturbation-to-"
                              "signal ratio is measured under (PGD, or HAG for hash runs)."),
    steps: int = typer.Option(20, help="Attack iterations (seed 004: 100); also the PGD "
                              "iterations of the critical-perturbation sweep."),
    num_images: int = typer.Option(200, "--num-images", help="Query images used (seeded)."),
    sigma: float = typer.Option(0.1, help="Std of the Gaussian noise of the block SNR."),
    snr_draws: int = typer.Option(3, "--snr-draws", help="Noise draws per image."),
    batch_size: int = typer.Option(100, "--batch-size", help="Images per forward."),
    seed: int = typer.Option(0, help="Seed of the subsample, the attack and the noise."),
    weights: str = WeightsChoice,
    report_dir: Path | None = typer.Option(
        None, "--report-dir", help="Folder for the results of one run (default: the run "
        "folder)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the comparison of the runs "
        "(diagnose-compare.json and diagnose-compare-*.png); required with several runs, "
        "whose own results go into their run folders."),
    layerwise_section: bool = typer.Option(
        True, "--layerwise/--no-layerwise", help="Measure the layer-wise section (PSR, SNR, "
        "sparsity, conv spectra, BatchNorm)."),
    representation: bool = typer.Option(
        True, "--representation/--no-representation", help="Measure the representation "
        "layer: covariance spectrum and power law (data, white-noise probe, pixels), "
        "Jacobian norms, critical perturbations."),
    layer: str | None = typer.Option(
        None, "--layer", help="Representation layer: a module name (see the error of a bad "
        "name for the list) or 'head-input'. Default: the backbone's own representation "
        "layer, else the input of the head."),
    projections: str = typer.Option(
        "auto", "--projections", help="Jacobian: 'exact', a number of random projections, or "
        "'auto' (exact up to 256 output units, else 16 projections)."),
    spectrum_images: int = typer.Option(
        1000, "--spectrum-images", help="Query images for the spectra (capped at the query "
        "split; the reference used 10,000)."),
    probe_images: int = typer.Option(
        100, "--probe-images", help="Query images for the Jacobian norms and the critical "
        "perturbations."),
    critical: str = typer.Option(
        "noise,fgsm,pgd", "--critical-attacks", help="Comma-separated critical-perturbation "
        "attacks (noise, fgsm, pgd), or 'none'. Classification runs only."),
    grid_size: int = typer.Option(
        24, "--grid-size", help="Log-spaced ε per critical sweep: 1e-3…1 (FGSM, PGD; L∞ "
        "pixels) and 1e-2…10 (noise σ)."),
    device: str = DeviceChoice,
) -> None:
    """Diagnostics of trained runs. Layer-wise (seed 004 ch. 3, 5): perturbation-to-signal
    ratio per layer under an attack, block SNR under noise, activation and per-filter
    sparsity, singular values of each conv (FFT), BatchNorm statistics. Representation
    (methods/krotov.md): covariance spectrum with its power-law exponent α on query images
    and on a seeded white-noise probe, input-Jacobian norms, and the critical perturbation
    (first ε that flips each correct image, and ‖Δx‖₂) under noise, FGSM and PGD. Writes
    diagnostics.json and diagnose-*.png per run; several runs with --out DIR also get
    diagnose-compare.json and diagnose-compare-*.png there."""
    from .diagnose import diagnose_run, diagnose_runs
    from .ui import RichProgress, print_table

    if len(runs) > 1 and out is None:
        _fail(f"diagnosing {len(runs)} runs compares them: give --out DIR for the comparison "
              f"(each run's own diagnostics.json still goes into its run folder)")
    if len(runs) > 1 and report_dir is not None:
        _fail("--report-dir takes a single run; with several runs each run's results go "
              "into its own folder and the comparison into --out")
    names = [] if critical.strip().lower() == "none" else \
        [a.strip().lower() for a in critical.split(",") if a.strip()]
    proj: str | int = projections.strip().lower()
    if proj not in ("auto", "exact"):
        try:
            proj = int(proj)
        except ValueError:
            _fail(f"--projections takes 'auto', 'exact' or a whole number >= 1, got "
                  f"{projections!r}")
    options: dict[str, Any] = dict(
        eps=eps, steps=steps, num_images=num_images, sigma=sigma, snr_draws=snr_draws,
        batch_size=batch_size, seed=seed, device=device, weights=weights,
        layerwise_section=layerwise_section, representation=representation, layer=layer,
        projections=proj, spectrum_images=spectrum_images, probe_images=probe_images,
        attacks=names, grid_size=grid_size)
    with _guard():
        if out is None:
            reports = {str(runs[0]): diagnose_run(runs[0], out_dir=report_dir,
                                                  progress=RichProgress(), **options)}
            compared = None
        else:
            compared = diagnose_runs(runs, out, progress=RichProgress(), **options)
            reports = compared["reports"]

    def num(v: object) -> object:
        return "–" if v is None else f"{v:.4g}"

    for name, rep in reports.items():
        rows = [[n, num(v["mean"].get("l2")), num(v["db"].get("l2")),
                 num(rep["snr_db"].get(n)), num(rep["activation_sparsity"].get(n)),
                 num((rep["spectra"].get(n) or {}).get("max"))] for n, v in rep["psr"].items()]
        if rep["attack"] is not None:
            print_table(f"layer diagnostics of {name} ({rep['attack']['name']} ε={eps:g})",
                        ["layer", "PSR (L2)", "PSR dB", "SNR dB", "sparsity", "σ_max"], rows)
        r = rep.get("representation")
        if r:
            print_table(f"representation of {name}: {r['layer']} ({r['output_dim']} units)",
                        ["quantity", "value"], _diag_representation_rows(r))
        for note in rep["notes"]:
            _say(f"note: {note}")
        _say(f"report: {rep['path']}", err=False)
    if compared is not None:
        print_table("comparison", *_diag_compare_table(compared["runs"]))
        for w in compared["warnings"]:
            _say(f"warning: {w}")
        _say(f"comparison: {compared['path']}", err=False)


def _diag_alpha(fit: dict[str, Any]) -> str:
    if fit.get("alpha") is None:
        return "–"
    return f"{fit['alpha']:.3g} ± {fit['stderr']:.2g} (R² {fit['r2']:.3f})"


def _diag_representation_rows(r: dict[str, Any]) -> list[list[str]]:
    """The representation block of a diagnose report as (quantity, value) rows."""
    def num(v: object) -> str:
        return "–" if v is None else f"{v:.4g}"

    rows = [[f"α data ({r['spectrum']['images']} images)", _diag_alpha(r["spectrum"]["fit"])],
            ["α white-noise probe", _diag_alpha(r["noise_spectrum"]["fit"])],
            ["α pixels", _diag_alpha(r["input_spectrum"]["fit"])],
            [f"‖J‖_F median ({r['jacobian']['method']})", num(r["jacobian"].get("median"))]]
    for attack, c in (r.get("critical") or {}).items():
        rows.append([f"{attack}: median crit ‖Δx‖₂ / never flipped",
                     f"{num(c['median_crit_norm'])} / {num(c['never_flipped'])}"])
    return rows


def _diag_compare_table(entries: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    def num(v: object) -> str:
        return "–" if v is None else f"{v:.4g}"

    def pm(e: dict[str, Any], key: str) -> str:
        a, se = e.get(f"alpha_{key}"), e.get(f"alpha_{key}_stderr")
        return "–" if a is None else f"{a:.3g} ± {se:.2g}"

    attacks: list[str] = []
    for e in entries.values():
        attacks.extend(a for a in e.get("median_crit_norm", {}) if a not in attacks)
    header = (["run", "test acc", "α data", "α noise", "‖J‖ median"]
              + [f"crit ‖Δx‖ {a}" for a in attacks])
    rows = [[label, num(e.get("test_accuracy")), pm(e, "data"), pm(e, "noise"),
             num(e.get("jacobian_median"))]
            + [num(e.get("median_crit_norm", {}).get(a)) for a in attacks]
            for label, e in entries.items()]
    return header, rows


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders holding attack-*.json reports."),
    out: Path = typer.Option(Path("compare"), "--out", "-o",
                             help="Folder for compare.json and compare-ATTACK.png."),
) -> None:
    """Put several runs (e.g. BP vs frSF vs uSF) side by side under each attack they were
    evaluated with: one table and one plot per attack (exact-gradient lines solid,
    model-gradient lines dashed, one colour per run). Says which report each column comes
    from, and warns when the runs differ in dataset, queries, steps or ε grid."""
    from .eval.compare import compare_rows, compare_runs
    from .ui import print_table

    with _guard():
        result = compare_runs(runs, out)
    for name, entry in result["attacks"].items():
        header, rows = compare_rows(entry)
        print_table(f"{name}: {entry['metric']}", header, [[_cell(v) for v in r] for r in rows])
        for label, r in entry["runs"].items():
            _say(f"{name} {label}: {r['report']}", err=False)
    for w in result["warnings"]:
        _say(f"warning: {w}")
    for png in result["plots"].values():
        _say(f"written: {out / png}", err=False)
    _say(f"written: {out / 'compare.json'}", err=False)


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding them (a "
                                      "sweep's root: searched for config.yaml)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the tables and figures (clean.md/.csv, "
        "robust.md/.csv, robust-*.png, report.json). Needed for several runs; without it "
        "one run folder is shown in the terminal."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the robustness figures."),
) -> None:
    """With one run folder: show what it holds (config, test metrics and the weights they
    came from, every attack report). With --out: rebuild seed 001's tables from the runs
    (test accuracy / mAP@k per backbone × dataset × rule; robust accuracy / mAP per attack,
    gradient source and ε) and its robustness figures, as Markdown, CSV and PNG, with mean ±
    std (ddof=1) over the seeds of each configuration."""
    if out is None:
        # one path that is a folder but not a run: a sweep's root, whose runs need --out
        if len(runs) > 1 or (runs[0].is_dir() and not (runs[0] / "config.yaml").is_file()):
            what = f"{len(runs)} paths" if len(runs) > 1 else f"{runs[0]} (not a run folder)"
            _fail(f"{what}: the tables of several runs need a folder to be written to; add "
                  f"--out DIR (e.g. --out report), or give one run folder to show it here")
        _report_one(runs[0])
        return
    _report_tables(runs, out, plot)


def _report_tables(runs: list[Path], out: Path, plot: bool) -> None:
    """``report RUNS... --out DIR``: write the tables and print the clean ones."""
    from .eval.tables import build_report
    from .eval.tables_io import clean_table
    from .ui import print_table

    with _guard():
        result = build_report(runs, out, plot=plot)
    titles = {"classify": "test accuracy", "hash": "test mAP@k"}
    for task in dict.fromkeys(r["task"] for r in result["clean"]):
        header, rows = clean_table(result["clean"], task)
        print_table(f"{titles.get(task, task)} (mean ± std over seeds, ddof=1)", header, rows)
    _say(f"{len(result['runs'])} run(s) in {len(result['clean'])} configuration(s); "
         f"{len(result['robust'])} robust row(s)", err=False)
    for s in result["skipped"]:
        _say(f"skipped: {s['run']}: {s['reason']}")
    for n in result["notes"]:
        _say(f"note: {n}", err=False)
    for w in result["warnings"]:
        _say(f"warning: {w}")
    for f in result["files"]:
        _say(f"written: {out / f}", err=False)


def _report_one(run: Path) -> None:
    """``report RUN``: what a run folder holds: its config, test metrics (and the weights
    they came from) and every attack report, each with the file it was read from."""
    from .eval.compare import load_reports
    from .runs import CONFIG, METRICS, read_json
    from .ui import print_table

    with _guard():
        cfg = RunConfig.load_run(run / CONFIG)
        metrics = read_json(run / METRICS)
        problems: list[str] = []
        reports = load_reports(run, problems)
    print_table(f"run {run}: {cfg.stage} {cfg.task}, rule {cfg.rule}, {cfg.backbone} on "
                f"{cfg.dataset}", ["metric", "value"],
                [(k, v) for k, v in metrics.items() if not isinstance(v, (dict, list))])
    w = metrics.get("test_weights")
    if w:
        _say(f"test metrics from {w.get('file')} (epoch {w.get('epoch')})", err=False)
    if not reports:
        _say(f"no attack report in {run}; run 'retrieval-bio attack <name> {run}'", err=False)
    for rep in reports:
        print_attack_report(rep)
    for p in problems:
        _say(f"warning: {p}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the runs."),
    device: str = DeviceChoice,
    seed: int = typer.Option(0, help="Seed of every random choice."),
) -> None:
    """End to end on the bundled digits (about 15 s on 2 CPU cores): BP pre-training,
    BP and frSF hashing fine-tunes, FAISS index, mAP@k, HAG and SDHA with exact and model
    gradients, and the comparison table. Re-running reuses finished stages."""
    from .demo import DemoSettings, run_demo
    from .eval.compare import compare_rows
    from .ui import RichProgress, print_table

    with _guard(f"finished stages are kept; run the same command again to continue ({out})"):
        summary = run_demo(out, DemoSettings(seed=seed, device=device), progress=RichProgress())
    p = summary["pretrain"]
    _say(f"BP pre-training: validation accuracy {p['val_accuracy']:.3f}, "
         f"test accuracy {p['test_accuracy']:.3f}", err=False)
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
        _say(f"note: {note}", err=False)
    _say(f"runs, plots and demo.json in {out}", err=False)


@app.command("list")
def list_cmd(
    what: str = typer.Argument("all", help="backbones | rules | datasets | losses | attacks "
                               "| indexes | corruptions | all."),
) -> None:
    """List what is registered (the names --backbone, --rule, --dataset... accept)."""
    from .datasets.corruptions import CORRUPTIONS, NOT_GENERATED
    from .registry import registries
    from .ui import print_table

    regs = {**registries(), "corruptions": CORRUPTIONS}
    if what != "all" and what not in regs:
        _fail(f"cannot list {what!r}; choose one of: all, {', '.join(regs)}")
    for name, reg in regs.items():
        if what in ("all", name):
            rows = [(n, reg.help(n)) for n in reg.names()]
            if name == "backbones":
                rows.append(("timm:<name>", "any timm model, e.g. timm:resnet50"))
            if name == "corruptions":  # CIFAR-C's others: only from the official arrays
                rows += [(n, f"official arrays only (--root): {why}")
                         for n, why in NOT_GENERATED.items()]
            print_table(name, ["name", "description"], rows)


def _print_cell_states(title: str, rows: list[dict[str, Any]], finished: str, where: str
                       ) -> None:
    """A grid runner's ``--dry-run``: each cell's state, then how many are finished."""
    from .ui import print_table

    print_table(title, ["cell", "state", "detail"],
                [(r["cell"], r["state"], r["detail"]) for r in rows])
    done = sum(r["state"] == finished for r in rows)
    _say(f"{done} of {len(rows)} cells finished; {where}", err=False)


@app.command("tradeoff")
def tradeoff_cmd(
    grid: Path = typer.Argument(..., help="Grid YAML: base config, rules, lrs, seeds, attack, "
                                "out (docs/tradeoff.md)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N | "
                                      "mps (default: each cell's config)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and which are "
                                 "already finished; train and attack nothing."),
) -> None:
    """Natural vs adversarial accuracy over a learning-rate grid, one curve per rule (seed
    000 Fig. 2): trains every (rule, lr, seed) cell into OUT/<rule>-lr<lr>-s<seed>/, attacks
    it at one ε, and writes OUT/tradeoff.json (mean ± std over seeds; per rule the mean over
    lrs of natural − adversarial accuracy) and OUT/tradeoff.png. A re-run skips finished
    cells, resumes interrupted ones and retries failed ones."""
    from .tradeoff import FAILED, finished_cells, grid_status, load_grid, run_tradeoff
    from .ui import RichProgress, print_table

    with _guard():
        spec = load_grid(grid)
        _check_cells_data_options(grid, spec.cells)
    if dry_run:
        with _guard():
            rows = grid_status(spec)
        _print_cell_states(f"tradeoff {grid}: {len(rows)} cells, {spec.attack.describe()}",
                           rows, "finished", f"run folders {spec.out}/<cell>, results "
                           f"{spec.out / 'tradeoff.json'}")
        return

    def show(record: dict[str, Any]) -> None:
        head = f"[{record['index'] + 1}/{record['total']}] {record['cell']}"
        if record["status"] == "running":
            _say(f"{head}: starting ({record['run_dir']})")
        elif record["status"] == FAILED:
            _say(f"{head}: failed: {record['error']}")
        else:
            _say(f"{head}: {record['status']}: natural {record['natural']:.4f}, "
                 f"adversarial {record['adversarial']:.4f}")

    def interrupted() -> str:
        try:
            done = finished_cells(spec)
        except Exception:  # noqa: BLE001 - the message must not fail
            done = []
        listed = ", ".join(done) if done else "none"
        return (f"finished cells ({len(done)} of {len(spec.cells)}): {listed}; an interrupted "
                f"training keeps its checkpoint. Run the same command again to continue "
                f"(finished cells are skipped, unfinished runs resume)")

    with _guard(interrupted):
        result = run_tradeoff(spec, device=device, progress=RichProgress(), on_cell=show)
    print_table(f"tradeoff: {spec.attack.describe()}",
                ["rule", "lr", "seeds", "natural", "adversarial", "natural − adversarial"],
                [(p["rule"], f"{p['lr']:g}", p["n"],
                  f"{p['natural_mean']:.4f} ± {p['natural_std']:.4f}",
                  f"{p['adversarial_mean']:.4f} ± {p['adversarial_std']:.4f}",
                  f"{p['gap_mean']:.4f}") for p in result["summary"]])
    for rule, h in result["headline"].items():
        gap = "–" if h["mean_gap"] is None else f"{h['mean_gap']:.4f}"
        _say(f"{rule}: mean over {len(h['lrs'])} lr(s) of natural − adversarial = {gap}"
             f"{'' if h['complete'] else ' (incomplete: some cells failed)'}", err=False)
    for note in result["notes"]:
        _say(f"note: {note}")
    if result["plot"]:
        _say(f"written: {result['plot']}", err=False)
    _say(f"written: {result['path']}", err=False)
    if result["errors"]:
        _say(f"{len(result['errors'])} cell(s) failed (listed above and in tradeoff.json); "
             f"fix the cause and run the same command again: finished cells are skipped")
        raise typer.Exit(1)


@app.command("sweep")
def sweep_cmd(
    grid: Path = typer.Argument(..., help="Grid YAML: base config, grid (lists of RunConfig "
                                "values), attacks, out, executor, slurm (docs/sweeps.md)."),
    executor: str | None = typer.Option(
        None, "--executor", help="local: the cells one after another in this process (the "
        "default) | slurm: one job array through submitit (pip install "
        "'retrieval-bio[slurm]'). Default: the grid's executor."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and the state of "
                                 "their folders (finished, partial, failed...); run nothing."),
    only: str | None = typer.Option(
        None, "--only", help="Only the cells whose folder name matches one of these "
        "comma-separated glob patterns, e.g. 'resnet18-*' or '*-frsf-s0,*-bp-s0'."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N | "
                                      "mps for every cell (default: each cell's config)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait for the jobs and "
                              "print the summary, or return once they are submitted."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each cell does."),
) -> None:
    """Run a grid of runs (backbone x dataset x rule x seed ...): trains every cell into
    OUT/<cell>/ and runs the grid's attacks on it. A re-run skips finished cells (complete
    metrics.json and attack reports), resumes interrupted ones and retries failed ones. A
    failed cell is recorded (OUT/<cell>/error.txt, OUT/sweep.json) and the others go on;
    the exit code is 1 when a cell failed."""
    from .sweeps import FAILED, FINISHED, SUBMITTED, load_grid, run_sweep, sweep_status
    from .ui import RichProgress, print_table

    _setup_logging(verbose)
    with _guard():
        spec = load_grid(grid)
        _check_cells_data_options(grid, spec.cells)
        if dry_run:
            rows = sweep_status(spec, only)
    attacks = ", ".join(a.label for a in spec.attacks) or "no attacks"
    if dry_run:
        _print_cell_states(f"sweep {grid}: {len(rows)} cells, {attacks}", rows, FINISHED,
                           f"run folders {spec.out}/<cell>, status {spec.out / 'sweep.json'}")
        return

    def show(record: dict[str, Any]) -> None:
        head = f"[{record['index'] + 1}/{record['total']}] {record['cell']}"
        if record["status"] == "pending":
            _say(f"{head}: starting ({record['run_dir']})")
        elif record["status"] == SUBMITTED:
            _say(f"{head}: submitted as job {record['job_id']}")
        elif record["status"] == FAILED:
            _say(f"{head}: failed: {(record['error'] or '').splitlines()[0]}")
        else:
            _say(f"{head}: {record['status']}")

    def interrupted() -> str:
        jobs = " (submitted jobs keep running)" if (executor or spec.executor) == "slurm" else ""
        return (f"{spec.out / 'sweep.json'} lists what finished; the interrupted cell keeps "
                f"its checkpoint{jobs}. Run the same command again to continue: finished "
                f"cells are skipped, interrupted ones resume")

    with _guard(interrupted):
        result = run_sweep(spec, executor=executor, only=only, device=device,
                           progress=RichProgress(), on_cell=show, wait=wait)
    rows = []
    ran = [r for r in result["cells"] if r["cell"] in set(result["selected"])]
    for r in ran:
        shown = ", ".join(f"{a['attack']} {a['status']}" for a in r["attacks"])
        error = (r["error"] or "").splitlines()[0] if r["error"] else ""
        rows.append((r["cell"], r["status"], r["train"] or "", shown,
                     "" if r.get("time_s") is None else f"{r['time_s']:.1f} s",
                     error[:100] + ("…" if len(error) > 100 else "")))
    print_table(f"sweep {grid}", ["cell", "status", "training", "attacks", "time", "error"],
                rows)
    counts: dict[str, int] = {}
    for r in ran:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    _say(f"{', '.join(f'{n} {status}' for status, n in counts.items())}; written: "
         f"{result['path']}", err=False)
    if counts.get(SUBMITTED):
        _say(f"the submitted jobs run on the cluster (logs in {spec.out}/submitit/); see the "
             f"state of every cell with: retrieval-bio sweep {shlex.quote(str(grid))} "
             f"--dry-run", err=False)
    failed = counts.get(FAILED, 0)
    if failed:
        _say(f"{failed} cell(s) failed (tracebacks in {spec.out}/<cell>/error.txt); fix the "
             f"cause and run the same command again: finished cells are skipped")
        raise typer.Exit(1)


def _one_line_summaries(*apps: typer.Typer) -> None:
    """Typer's rich help keeps a docstring's line breaks in the list of commands, then wraps
    each line again, which prints a staircase: list each command by its first paragraph on
    one line (its own ``--help`` still shows the whole text)."""
    for group in apps:
        for info in group.registered_commands:
            doc = info.help or (info.callback.__doc__ if info.callback else None)
            if info.short_help is None and doc:
                info.short_help = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


_one_line_summaries(app, data_app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
