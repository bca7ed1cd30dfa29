"""The project's ``kedro run``: Kedro's own command, with errors the user can fix shown as one block.

Kedro picks up a project ``cli.py`` and lets its commands override the built-in ones (see
https://docs.kedro.org/en/stable/extend/common_use_cases/), so ``kedro run`` and ``python -m
finetune_predictor`` both come here. Every option of Kedro's ``run`` is kept; ``--verbose`` (``-v``) adds the
traceback of an expected error, as ``FINETUNE_PREDICTOR_VERBOSE=1`` does. A bug keeps its full traceback.
"""

from __future__ import annotations

import os
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import CONTEXT_SETTINGS, KedroCliError

from finetune_predictor.errors import EXIT_CODE, VERBOSE_ENV, find_user_error, install_log_filter, verbose_requested
from finetune_predictor.prediction import meta_dataset
from finetune_predictor.redaction import redact, redact_exception


@click.group(context_settings=CONTEXT_SETTINGS, name=__file__)
def cli() -> None:
    """Command line tools of the finetune-predictor project."""


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        os.environ[VERBOSE_ENV] = "1"
        KedroCliError.VERBOSE_ERROR = True  # the same switch as Kedro's own `--verbose` commands
    return value


def _user_message(error: BaseException) -> str | None:
    """An expected error's what / where / fix block, redacted; None where ``error`` is not one."""
    redact_exception(error)  # the traceback or the block never shows a credential (a URI's password)
    user_error = find_user_error(error)
    return redact(user_error.render()) if user_error else None


def _explained(error: BaseException, verbose: bool = False) -> bool:
    """Print an expected error's block; False where ``error`` is not one, or where the traceback was asked for
    (the caller then raises it)."""
    message = _user_message(error)
    if message is None or verbose or verbose_requested():
        return False
    click.echo(message, err=True)
    return True


def _run(verbose: bool, **options: Any) -> Any:
    """Kedro's ``run``; an expected error prints its what / where / fix block and exits with status 1."""
    install_log_filter()
    try:
        return kedro_run.callback(**options)
    except Exception as error:
        if not _explained(error, verbose):
            raise
        raise click.exceptions.Exit(EXIT_CODE) from None


run = click.Command(
    name="run",
    callback=_run,
    params=[*kedro_run.params,
            click.Option(["--verbose", "-v"], is_flag=True, expose_value=True, callback=_set_verbose,
                         help=f"Show the traceback of expected errors too (or set {VERBOSE_ENV}=1).")],
    help=kedro_run.help,
    context_settings=CONTEXT_SETTINGS,
)
cli.add_command(run)


@cli.command("meta-dataset")
@click.option("--chunk", "chunk_names", multiple=True,
              help="A chunk of conf/meta_dataset/meta_dataset.yml (repeatable).")
@click.option("--list", "list_only", is_flag=True, help="List the chunks, their sweeps and run counts; run nothing.")
@click.option("--env", default=meta_dataset.ENV, show_default=True, help="The environment that holds the study.")
def meta_dataset_command(chunk_names: tuple[str, ...], list_only: bool, env: str) -> None:
    """Run chunks of the meta-dataset study (resumable), then append their runs to the runs archive."""
    from pathlib import Path

    install_log_filter()
    project_path = Path.cwd()
    try:
        chunks, sensitivity = meta_dataset.load_study(project_path, env)
        selected = {name: meta_dataset.chunk_sweeps(chunks, name) for name in (chunk_names or chunks)}
    except Exception as error:
        if not _explained(error):
            raise
        raise click.exceptions.Exit(EXIT_CODE) from None
    if list_only or not chunk_names:
        for name, sweeps in selected.items():
            total = sum(meta_dataset.sweep_size(sweep, sensitivity) for sweep in sweeps)
            click.echo(f"{name}: {len(sweeps)} sweeps, {total} runs")
            for sweep in sweeps:
                click.echo(f"  {meta_dataset.sweep_size(sweep, sensitivity):3d}  {meta_dataset.describe(sweep)}")
        return
    failed = []
    for name, sweeps in selected.items():
        for index, sweep in enumerate(sweeps, start=1):
            label = f"{name} sweep {index}/{len(sweeps)}: {meta_dataset.describe(sweep)}"
            click.echo(f"meta-dataset {label}")
            try:
                meta_dataset.run_sweep(project_path, sweep, env)
            except Exception as error:  # one sweep's failure must not cost the chunk's other sweeps (verbose too)
                message = _user_message(error)
                if message is None and verbose_requested():
                    raise
                click.echo(message or redact(repr(error)), err=True)
                failed.append(label)
    meta_dataset.archive(project_path, env)
    if failed:
        click.echo("Sweeps that did not finish (run the chunk again to resume them):\n  " + "\n  ".join(failed),
                   err=True)
        raise click.exceptions.Exit(EXIT_CODE)
