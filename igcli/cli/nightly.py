"""The nightly commands: ``diff`` (drift between two runs) and ``summary`` (a run, class by class).
They parse and call; the work is in results/diff.py and results/summary.py (docs/nightly.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from igcli.cli.reporting import reporting_errors, warnings_on_stderr

DIFF_EXIT_CODES = ("Exit codes: 0 every --fail-on rule within its threshold; 1 a rule breached (drift); "
                   "2 usage error (a bad rule, a missing run folder, runs without saved maps).")


@click.command("diff", epilog=DIFF_EXIT_CODES)
@click.argument("old")
@click.argument("new")
@click.option("-o", "--out", "out_dir", required=True,
              help="Folder (or URL, e.g. s3://bucket/diff) for diff.jsonl, diff.html and its pictures.")
@click.option("--fail-on", "rules", multiple=True, metavar="EXPR",
              help="Exit 1 when EXPR holds, e.g. 'rank_corr<0.7' (any input) or 'mean(top_overlap)<0.5'. Repeatable.")
@click.option("--top", "top_percent", type=click.FloatRange(0, 100, min_open=True), default=10.0, show_default=True,
              help="Percent of pixels/tokens, highest attribution first, whose overlap (IoU) top_overlap measures.")
@reporting_errors
def diff(old: str, new: str, out_dir: str, rules: tuple[str, ...], top_percent: float) -> None:
    """Compare the attributions of run OLD with run NEW (both -o folders of igcli explain, or their URLs)."""
    from igcli.errors import UsageError
    from igcli.results.diff import compare, load_run
    from igcli.results.diff_view import write_diff
    from igcli.results.drift_rules import parse_rule
    from igcli.results.store import output_folder, output_target, run_folder

    parsed = [parse_rule(text) for text in rules]
    target = output_target(out_dir)
    if isinstance(target, Path):
        if target.exists() and not target.is_dir():
            raise UsageError(f"{target}: -o names a file; give a folder")
        if any(target.resolve() == Path(run).resolve() for run in (old, new)):
            raise UsageError(f"{target}: -o is one of the runs compared; give a folder of its own")
    elif target.url in (old.rstrip("/"), new.rstrip("/")):
        raise UsageError(f"{target.url}: -o is one of the runs compared; give a folder of its own")
    needed = ("results.jsonl", "attributions/")  # a run in a store: only what diff reads is fetched
    with run_folder(old, needed) as old_folder, run_folder(new, needed) as new_folder:
        before, after = load_run(old_folder), load_run(new_folder)
        rows = compare(before, after, top_percent)
        breaches = [line for line in (rule.breaches(rows) for rule in parsed) if line is not None]
        with output_folder(target) as folder:  # a store's diff is written locally, then put there
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_diff(rows, before, after, folder, breaches)
            except OSError as error:
                raise UsageError(f"{out_dir}: cannot write the diff ({error.strerror or error})") from None
    matched = sum(row["match"] == "both" for row in rows)
    written = target / "diff.html" if isinstance(target, Path) else f"{target.url}/diff.html"
    click.echo(f"igcli: {matched} matched, {len(rows) - matched} in one run only; wrote {written}", err=True)
    for line in breaches:
        click.echo(f"igcli: drift: {line}", err=True)
    if breaches:
        sys.exit(1)


@click.command("summary")
@click.argument("run")
@reporting_errors
def summary(run: str) -> None:
    """Rebuild RUN/summary.json (and report.html's summary) from RUN/results.jsonl and saved maps.
    RUN may be a URL (s3://...): the run is read from the store and the new files put back."""
    from igcli.errors import UsageError
    from igcli.results.jsonl import run_results
    from igcli.results.report import write_report
    from igcli.results.store import run_folder
    from igcli.results.summary import rebuild_summary

    warnings_on_stderr()
    with run_folder(run, write_back=True) as folder:
        run_results(folder)
        try:
            rebuild_summary(folder)
            write_report(folder)
        except OSError as error:
            raise UsageError(f"{run}: cannot write summary.json ({error.strerror or error})") from None
    click.echo(f"igcli: wrote {run.rstrip('/')}/summary.json", err=True)
