"""Command line: parse options, build a Config, call run. Nothing else lives here.

Exit codes: 0 all inputs explained; 1 some inputs failed (the others are written);
2 usage or config error (nothing ran); 3 the model could not be loaded or run;
128 + signal when SIGINT/SIGTERM stopped the run (130/143).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from igcli import __version__
from igcli.attribution.kinds import Rule
from igcli.backends.kinds import ScoreKind
from igcli.cli.nightly import diff, summary
from igcli.cli.reporting import OneLineUsage, reporting_errors
from igcli.data.discover import PathList, read_path_list

EXIT_CODES = ("Exit codes: 0 all inputs explained; 1 some inputs failed (or an output could not be written; or, "
              "with --strict, a record did not converge); "
              "2 usage or config error (or a device not here); 3 model error; 130/143 stopped by SIGINT/SIGTERM.")


class AtLeast(click.ParamType):
    """An integer option of at least ``minimum``; its error says what the number counts."""

    name = "integer"

    def __init__(self, minimum: int, counts: str):
        self.minimum, self.counts = minimum, counts

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = None
        if number is None or number < self.minimum:
            self.fail(f"got {value!r}; give {self.counts}: an integer of {self.minimum} or more", param, ctx)
        return number


def config_options(command: Callable) -> Callable:
    """--config and --set, shared by every command that reads a config."""
    command = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                           help="Override a config key, e.g. --set steps=64 --set baseline.kind=blur.")(command)
    return click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
                        help="YAML config file (see configs/).")(command)


def build_config(config_path: Path | None, sets: tuple[str, ...], flags: dict[str, Any]):
    from igcli.config import validate

    return validate(build_source(config_path, sets, flags))


def build_source(config_path: Path | None, sets: tuple[str, ...], flags: dict[str, Any]):
    """The config's raw data before validation, with the origin of each key (file:line, --set, --flag)."""
    from igcli.config import read_config

    overrides: list[tuple[Any, str]] = [(text, "--set") for text in sets]
    overrides += [((tuple(key.split(".")), value), f"--{key.split('.')[-1].replace('_', '-')}")
                  for key, value in flags.items() if value is not None]
    return read_config(config_path, overrides)


@click.group(cls=OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="igcli")
def main() -> None:
    """Explain model predictions with Integrated Gradients (Sundararajan et al., 2017)."""


@main.command("explain", epilog=EXIT_CODES)
@click.argument("inputs", nargs=-1)
@config_options
@click.option("-o", "--out", "out_dir",
              help="Output folder, or an fsspec URL of one (s3://, gs://, memory://...: written locally, then "
                   "mirrored there; docs/scaling.md).")
@click.option("--jsonl", metavar="PATH", help="Also stream records as JSON lines to PATH ('-' = stdout).")
@click.option("--model", "model_path", help="Model file; overrides model.path.")
@click.option("--device", help="auto | cpu | cuda | cuda:N; overrides device. cuda:all or a list (cuda:0,cuda:2): "
                               "one worker process per device.")
@click.option("--workers", type=AtLeast(1, "the number of worker processes"), metavar="N",
              help="Explain chunks in N worker processes (each its own device and share of the cores); this "
                   "process writes every output. docs/scaling.md.")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS",
              help="Explain chunks on Ray actors (pip install 'igcli[ray]'): auto joins this machine's cluster or "
                   "starts a local one; or ray://head:10001. --workers sets the actors.")
@click.option("--steps", help="Integer m, or 'auto'; overrides steps.")
@click.option("--method", type=click.Choice([r.value for r in Rule]), help="Quadrature rule; overrides method.")
@click.option("--batch-size", type=int, help="Path points per forward/backward (on a CPU, shared by the chunks in flight); overrides batch_size.")
@click.option("--files-from", type=click.File("rb"), metavar="FILE",
              help="Read more input paths from FILE, one per line ('-' for stdin). An input '-' does the same.")
@click.option("--shard", metavar="I/N", help="Explain only shard I of N (0-based): a stable slice by input name.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first input that fails.")
@click.option("--max-errors", type=AtLeast(0, "how many failed inputs to allow"), metavar="N", help="Stop once more than N inputs failed.")
@click.option("--resume", is_flag=True,
              help="Reuse the records already in OUT whose input, model and config are unchanged; do the rest.")
@click.option("--show", is_flag=True,
              help="Text: print each document's words coloured by attribution (plain when not a TTY or NO_COLOR).")
@click.option("--strict", is_flag=True,
              help="Exit 1 when any record did not converge (completeness or map error above its tolerance, or "
                   "max_steps reached).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; errors only.")
@click.option("-v", "--verbose", is_flag=True, help="Log more on stderr.")
@reporting_errors
def explain_command(inputs: tuple[str, ...], config_path: Path | None, sets: tuple[str, ...], out_dir: str | None,
            jsonl: str | None, model_path: str | None, device: str | None, steps: str | None,
            method: str | None, batch_size: int | None, files_from, shard: str | None, fail_fast: bool,
            max_errors: int | None, resume: bool, show: bool, strict: bool, quiet: bool, verbose: bool,
            workers: int | None = None, ray_address: str | None = None) -> None:
    """Explain INPUTS (image or text files, folders, globs): heatmaps or coloured text, and JSON records.

    SIGINT or SIGTERM finish the inputs in flight, write the manifest and exit 130 or 143; a second
    one stops at once. Every file appears whole or not at all, so a killed run can be --resume'd.
    """
    from igcli.runtime.heap import set_up_malloc
    from igcli.runtime.options import RuntimeOptions

    # A program that calls main(obj=RuntimeOptions(...)) sets how the run uses the machine.
    options = click.get_current_context().find_object(RuntimeOptions) or RuntimeOptions()
    set_up_malloc(options.malloc)  # before torch: every batch frees what the next allocates (runtime/heap.py)
    from igcli.backends.devices import require_device
    from igcli.config import validate
    from igcli.pipeline.ray_runner import driver_device, ray_plan
    from igcli.pipeline.run import explain_inputs
    from igcli.pipeline.workers import parse_devices, worker_plan

    if files_from is not None:  # one list: its files keep their tree below their common folder
        name = getattr(files_from, "name", None)  # stdin's buffer is '<stdin>', or unnamed under a test runner
        origin = f"--files-from {click.format_filename(name) if isinstance(name, str) and name != '<stdin>' else '-'}"
        inputs = inputs + (PathList(read_path_list(files_from, origin)),)
    if not inputs:
        raise click.UsageError("give at least one input file, folder or glob (or --files-from, or - for stdin)")
    if show and jsonl == "-":
        raise click.UsageError("--show and --jsonl - both write to stdout; choose one")
    _setup_logging(quiet, verbose)
    out_spec = out_dir
    if out_dir is not None:
        from igcli.results.store import output_target

        out_dir = output_target(out_dir)
    devices = parse_devices(device) if device is not None and ray_address is None else None
    asked = devices[0] if devices else device
    flags = {"model.path": model_path, "device": driver_device(ray_address, asked), "method": method,
             "batch_size": batch_size, "steps": _steps_value(steps)}
    source = build_source(config_path, sets, flags)
    config = validate(source)
    if ray_address is None:  # Ray places its actors on the cluster's devices, not this machine's
        require_device(config.device, _device_origin(source, config.device))
    plan = ray_plan(ray_address, workers, asked or config.device) or worker_plan(workers, devices, config.device)
    try:
        summary = explain_inputs(config, inputs, out_dir, jsonl, progress=not quiet and sys.stderr.isatty(),
                                 show=sys.stdout if show else None, shard=_shard(shard),
                                 max_errors=0 if fail_fast else max_errors, resume=resume, options=options,
                                 workers=plan)
    except KeyboardInterrupt as error:  # a second signal: the files written so far are whole, the manifest says so
        click.echo("igcli: stopped at once; rerun with --resume to finish", err=True)
        # The manifest is written. Chunks still in flight in other threads would abort the
        # interpreter's shutdown (SIGABRT), so the process ends here: 130 for SIGINT, 143 for SIGTERM.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + getattr(error, "signum", 2))
    if not quiet:
        click.echo(_summary_line(summary), err=True)
    elif not summary.signal and (summary.failed or strict and summary.not_converged):
        click.echo(_quiet_failure_line(summary, strict, out_spec), err=True)  # -q: the exit code's reason
    if summary.signal:
        sys.exit(128 + summary.signal)
    if summary.failed or strict and summary.not_converged:
        sys.exit(1)


@main.command(epilog=EXIT_CODES)
@click.argument("out_dir")
@reporting_errors
def report(out_dir: str) -> None:
    """Rebuild OUT_DIR/report.html from OUT_DIR/results.jsonl (one offline page, sortable).
    OUT_DIR may be a URL (s3://...): the run is read from the store and report.html put back."""
    from igcli.errors import UsageError
    from igcli.results.jsonl import run_results
    from igcli.results.report import write_report
    from igcli.results.store import run_folder

    with run_folder(out_dir, write_back=True) as folder:
        run_results(folder)
        try:
            path = write_report(folder)
        except OSError as error:
            raise UsageError(f"{out_dir}: cannot write report.html ({error.strerror or error})") from None
    written = f"{out_dir.rstrip('/')}/{path.name}" if folder != Path(out_dir) else path
    click.echo(f"igcli: wrote {written}", err=True)


@main.command("validate-config", epilog=EXIT_CODES)
@click.argument("config_file", type=click.Path(path_type=Path), required=False)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@reporting_errors
def validate_config(config_file: Path | None, sets: tuple[str, ...]) -> None:
    """Check a config and print it resolved, with every default filled in.

    With a layer set, the model is built as explain builds it (a model.factory runs) to check the
    name; where model.path is not here, explain checks it before any work."""
    from igcli.config import resolved

    config = build_config(config_file, sets, {})
    if isinstance(config.target, str) and config.target != "predicted" and config.model.labels is not None \
            and config.model.labels.is_file():
        from igcli.pipeline.common import read_labels, resolve_target

        resolve_target(config.target, read_labels(config.model.labels))  # explain refuses a name not listed
    if config.layer is not None:  # only then torch: the name is checked against the model's modules
        from igcli.pipeline.methods import layer_check_line

        click.echo(f"igcli: {layer_check_line(config)}", err=True)
    click.echo(yaml.safe_dump(resolved(config), sort_keys=False), nl=False)


@main.command("export", epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Where to write the gradient graph (.onnx).")
@click.option("--score", type=click.Choice([k.value for k in ScoreKind]), default="softmax", show_default=True,
              help="What F is in the graph.")
@click.option("--input-shape", help="C,H,W without the batch axis, when the model does not fix it.")
@click.option("--factory", help="package.module:function (or file.py:function) building the model for a state_dict.")
@click.option("--trust-pickle", is_flag=True, help="Allow a fully pickled module (runs code from the file).")
@click.option("--output", "output", metavar="NAME|INDEX",
              help="Which output F is made of, for a model with several (as model.output in explain).")
@reporting_errors
def export(model: Path, out_path: Path, score: str, input_shape: str | None, factory: str | None,
           trust_pickle: bool, output: str | None) -> None:
    """Export MODEL (.pt2, TorchScript, state_dict + factory, or plain .onnx) as an ONNX gradient graph.

    The graph takes (input, target_weights) and returns (scores, input_grads) for a whole batch; it
    is checked against float64 autograd on onnxruntime before it is written.
    """
    from igcli.backends.loading import build_gradient_graph
    from igcli.results.atomic_files import write_bytes_atomic

    selector = int(output) if output is not None and output.lstrip("-").isdigit() else output
    graph, check = build_gradient_graph(model, factory, ScoreKind(score), trust_pickle, _shape(input_shape), selector)
    write_bytes_atomic(out_path, graph.SerializeToString())
    click.echo(f"igcli: wrote {out_path} (score {score}; gradients within {check.error:.1e} of {check.reference} "
               "autograd, relative)", err=True)


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.option("--factory", help="package.module:function (or file.py:function) building the model for a state_dict.")
@click.option("--input-shape", help="C,H,W without the batch axis, for a torch model whose size nothing fixes.")
@click.option("--trust-pickle", is_flag=True, help="Allow a fully pickled module (runs code from the file).")
@reporting_errors
def inspect(model: Path, as_json: bool, factory: str | None, input_shape: str | None, trust_pickle: bool) -> None:
    """Describe a model: inputs, outputs, layout; for ONNX also opsets, producer, ops, gradient
    support; for Hugging Face folders and torch files (TorchScript, .pt2, state_dict + --factory)
    also the preprocessing and labels they carry."""
    import json

    from igcli.backends.describe_torch import describe_torch_model, is_torch_source

    if factory is not None or is_torch_source(model):
        report = describe_torch_model(model, factory, trust_pickle, _shape(input_shape))
        click.echo(json.dumps(report, indent=2) if as_json else yaml.safe_dump(report, sort_keys=False),
                   nl=not as_json)
        return
    from igcli.backends.layout import describe_layout
    from igcli.backends.onnx.describe import describe
    from igcli.backends.onnx.format import graph_inputs, read_onnx

    proto = read_onnx(model)
    report = describe(proto, model)
    inputs = [spec.shape for spec in graph_inputs(proto)]
    report["layout"] = describe_layout(inputs[:1] if report["igcli_gradient_graph"] else inputs)
    click.echo(json.dumps(report, indent=2) if as_json else yaml.safe_dump(report, sort_keys=False), nl=not as_json)


@main.command()
def env() -> None:
    """Versions, devices and threads igcli would use."""
    import torch

    from igcli.pipeline.summary import versions

    for name, version in versions().items():
        click.echo(f"{name}: {version}")
    click.echo(f"torch threads: {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    click.echo(f"cuda: {'available, ' + str(torch.cuda.device_count()) + ' device(s)' if cuda else 'not available'}")
    for index in range(torch.cuda.device_count() if cuda else 0):
        click.echo(f"cuda:{index}: {torch.cuda.get_device_name(index)}")
    click.echo(f"device auto: {'cuda' if cuda else 'cpu'}")


def _device_origin(source: Any, device: str) -> str:
    """Where the run's device was named, for its error line: --device cuda, --set device=cuda, cfg.yaml:3."""
    origin = source.origin(("device",))
    if origin == "--set":
        return f"--set device={device}"
    return f"--device {device}" if origin.startswith("--") else f"{origin}: device {device}"


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise click.BadParameter("expected I/N with 0 <= I < N, e.g. 0/4", param_hint="--shard")
    return int(index), int(count)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise click.BadParameter("expected positive integers like 3,224,224", param_hint="--input-shape")
    return shape


def _steps_value(steps: str | None) -> int | str | None:
    if steps is None or steps == "auto":
        return steps
    try:
        return int(steps)
    except ValueError:
        raise click.BadParameter("must be an integer or 'auto'", param_hint="--steps") from None


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    if not quiet and not verbose and os.environ.get("IGCLI_LOG_LEVEL"):
        level = logging.getLevelName(os.environ["IGCLI_LOG_LEVEL"].upper())
        if not isinstance(level, int):
            raise click.BadParameter(f"got {os.environ['IGCLI_LOG_LEVEL']!r}; use DEBUG, INFO, WARNING or ERROR",
                                     param_hint="IGCLI_LOG_LEVEL")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("igcli: %(levelname)s: %(message)s"))
    logger = logging.getLogger("igcli")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _quiet_failure_line(summary: Any, strict: bool, out_dir: str | None) -> str:
    where = f"{out_dir.rstrip('/')}/results.jsonl" if out_dir is not None else "the --jsonl records"
    reasons = [f"{summary.failed} of {summary.inputs} inputs failed (their error records are in {where})"] \
        if summary.failed else []
    if strict and summary.not_converged:
        reasons.append(f"{summary.not_converged} records did not converge (--strict)")
    return f"igcli: error: {'; '.join(reasons)}"


def _summary_line(summary: Any) -> str:
    totals = summary.to_json()
    reused = f" ({totals['reused']} reused)" if totals["reused"] else ""
    return (f"igcli: {totals['inputs']} inputs, {totals['records']} records{reused}, {totals['failed']} failed, "
            f"{totals['not_converged']} not converged ({totals['at_max_steps']} at max_steps); steps mean {totals['mean_steps'] or 0:.1f} "
            f"max {totals['max_steps'] or 0}; max relative completeness error {totals['max_rel_error']:.2e}; "
            f"{totals['seconds']:.1f} s")


main.add_command(diff)
main.add_command(summary)
