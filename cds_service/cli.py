"""The ``cds-service`` command."""

from __future__ import annotations

import sys

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cds-service")
def main() -> None:
    """CDS Hooks service: serve, check rules, prepare the model, audit decisions."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes (each loads its own rules, model and connections).")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64), help="Threads per worker.")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Run the service under gunicorn (the production WSGI server)."""
    from .config import Settings
    from .errors import ContentError
    from .server import run

    settings = Settings.load()
    try:  # fail before forking workers if content is broken, naming file and field
        from .rule_model import load_rulebook
        from .services import load_registry
        from .terminology import load_terminology

        terminology = load_terminology(settings.fhir_dir / "terminology")
        load_registry(settings.hooks_dir, load_rulebook(settings.rules_dir, terminology))
    except ContentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    base = f"http://{host}:{port}"
    click.echo(f"CDS Hooks discovery:  {base}/cds-services")
    click.echo(f"OpenAPI document:     {base}/openapi.json")
    click.echo(f"Health / readiness:   {base}/healthz  {base}/readyz")
    click.echo(f"Decision log:         {settings.decision_log_url.split('@')[-1]}")
    run(host, port, workers, threads)


if __name__ == "__main__":
    main()
