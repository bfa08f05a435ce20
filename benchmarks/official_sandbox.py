"""The official CDS Hooks Sandbox (github.com/cds-hooks/sandbox) as a client of this service, end to end.

What it proves: an EHR front end we did not write, driven in headless Chromium, can use this service as
CDS Hooks 2.0 describes, against the service's own sandbox FHIR endpoint:

1. patient-view: the sandbox discovers our services and renders every card our patient-view services
   returned (cards counted in its DOM, compared with the cards in our decision log);
2. order-sign: in its "Rx Sign" view a medication is typed (slower than its 150 ms debounce), chosen and
   signed; our warning/critical card renders;
3. accept: one of our suggestions is taken (the sandbox applies it and sends "accepted" feedback);
4. override: the order is signed again and the new card dismissed with a reason from the sandbox's own
   override menu ("overridden" feedback for that new card; a separate card because the PDCA report
   counts each card by its last outcome);
5. audit: our auditor API shows the decisions, each made for client ``https://sandbox.cds-hooks.org``
   with its JWT verified (the sandbox's public key pinned in CDS_CLIENTS, nothing fetched);
6. feedback and pdca report: our feedback table holds the acceptance and the override with its reason
   code, each tied to a decision; ``cds-service pdca report`` counts both for the rule.

The sandbox resolves only ``{{today() - N days}}`` in prefetch templates (a template in months would
reach the FHIR endpoint unresolved and be refused, and the service would fetch that key itself): the
last lines count refused queries and the data items sent as prefetch versus fetched by the service.

The sandbox's code comes from a copy the user provides (never from this repository); the script builds
it there with npm and webpack (skipped when the build is newer than package.json), serves the build on
127.0.0.1, starts ``cds-service serve --sandbox`` on a free port with its own data dir, and prints a
table (step, outcome, figure). Exit status 1 when a step fails. Needs Node/npm, Debian ``chromium`` and
``chromium-driver`` (``apt-get update && apt-get install -y chromium chromium-driver``) and Selenium
(``pip install 'cds-service[test]'``).

    git clone https://github.com/cds-hooks/sandbox /tmp/cds-hooks-sandbox
    .venv/bin/python benchmarks/official_sandbox.py --sandbox-src /tmp/cds-hooks-sandbox \
        [--port P] [--screenshots /tmp] [--rebuild] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import requests

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# A warfarin patient among the sandbox's sample charts (fhir/samples/synthea-r4): an NSAID order for
# him fires ddi-warfarin-nsaid (critical), which carries suggestions and override reasons.
PATIENT_ID = "8008b382-91cc-468f-95e5-7d6982b7ebb9"
MEDICATION = "Ibuprofen 200 MG Oral Tablet"  # RxNorm 310965, in the sandbox's own medication list
TYPE_DELAY_S = 0.4  # the sandbox debounces its medication box by 150 ms; Selenium types faster


@dataclass
class Result:
    step: str
    ok: bool
    figure: str


@dataclass
class Run:
    """What the steps share: the browser, the service, and what each step learnt."""

    driver: object
    base: str
    data_dir: Path
    auditor_token: str
    issuer: str
    screenshots: Path
    services: list[dict]  # our discovery document's services
    results: list[Result] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# --- preparing the pieces -------------------------------------------------------------------------


def check_tools() -> None:
    missing = []
    if not shutil.which("npm"):
        missing.append("npm (Node.js 18+: apt-get install -y nodejs npm)")
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        missing.append(
            "chromium + chromedriver: apt-get update && apt-get install -y chromium chromium-driver"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium: .venv/bin/python -m pip install 'selenium>=4.25'")
    if missing:
        sys.exit("missing: " + "; ".join(missing))


def build_sandbox(src: Path, rebuild: bool, timings: dict[str, float]) -> Path:
    """npm install/ci and the production webpack build, in the user's copy; returns the build folder."""
    build = src / "build"
    bundle = build / "app.bundle.js"
    if not rebuild and bundle.exists() and bundle.stat().st_mtime > (src / "package.json").stat().st_mtime:
        print(f"sandbox build is up to date: {bundle} (--rebuild to force)")
        return build
    install = ["npm", "ci"] if (src / "package-lock.json").exists() else ["npm", "install"]
    for name, cmd in (
        (" ".join(install), [*install, "--no-audit", "--no-fund"]),
        ("webpack build", ["npx", "webpack", "--config", "webpack.config.prod.js"]),
    ):
        print(f"$ {' '.join(cmd)}  (in {src})", flush=True)
        start = time.monotonic()
        done = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
        timings[name] = time.monotonic() - start
        if done.returncode != 0:
            sys.exit(f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if not bundle.exists():
        sys.exit(f"webpack finished but {bundle} is missing")
    return build


def serve_static(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    """The sandbox is a static single-page app: any file server will do."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the sandbox's 404 for styles.css is known and harmless
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _b64url(number: int, size: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(size, "big")).rstrip(b"=").decode()


def sandbox_client_entry(src: Path) -> dict:
    """The CDS_CLIENTS entry for the official sandbox, read from its own source: the issuer, kid and jku
    its JWT generator puts in every token, and the public half of the key it signs with, pinned."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    generator = (src / "src" / "retrieve-data-helpers" / "jwt-generator.js").read_text(encoding="utf-8")

    def claim(name: str) -> str:
        found = re.search(rf"\b{name}:\s*'([^']+)'", generator)
        if not found:
            sys.exit(f"cannot find {name} in the sandbox's jwt-generator.js: has its signing changed?")
        return found.group(1)

    key_import = re.search(r"import\s+\w+\s+from\s+'([^']+\.pem)'", generator)
    if not key_import:
        sys.exit("cannot find the key import in the sandbox's jwt-generator.js: has its signing changed?")
    pem_path = (src / "src" / "retrieve-data-helpers" / key_import.group(1)).resolve()
    key = load_pem_private_key(pem_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        sys.exit(f"{pem_path} is not a P-384 key: has the sandbox's signing changed?")
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-384",
        "kid": claim("kid"),
        "alg": claim("alg"),
        "use": "sig",
        "x": _b64url(numbers.x, 48),
        "y": _b64url(numbers.y, 48),
    }
    return {"iss": claim("iss"), "jku": [claim("jku")], "jwks": {"keys": [jwk]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(data_dir: Path, port: int, clients_file: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("cds-service")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cds_service.cli"]
    env = dict(os.environ, CDS_LLM="off", CDS_DATA_DIR=str(data_dir), CDS_CLIENTS=str(clients_file))
    log = (data_dir / "service.log").open("w")
    proc = subprocess.Popen(
        [*cmd, "serve", "--sandbox", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"cds-service exited ({proc.returncode}); see {data_dir / 'service.log'}")
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    proc.terminate()
    sys.exit(f"cds-service not ready after 120 s; see {data_dir / 'service.log'}")


def discover(base: str) -> list[dict]:
    """Our discovery document; with CDS_CLIENTS set it needs a client JWT, so ask our own sandbox for one."""
    aud = f"{base}/cds-services"
    token = requests.post(f"{base}/sandbox/api/token", json={"aud": aud}, timeout=10).json()["token"]
    answer = requests.get(aud, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    answer.raise_for_status()
    return answer.json()["services"]


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


# --- what the browser shows -----------------------------------------------------------------------

CARD = "[class*='decision-card']"  # CSS-module class of the sandbox's card (card-list.css)
SUGGESTION = "button.MuiButton-contained"


def wait_for(predicate, timeout: float, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def cards(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, CARD)


def indicator(card) -> str:
    found = re.search(r"alert-(info|warning|critical)", card.get_attribute("class") or "")
    return found.group(1) if found else "?"


def summary(card) -> str:
    return card.text.splitlines()[0].strip() if card.text else ""


def shot(run: Run, name: str) -> str:
    path = run.screenshots / f"official-sandbox-{name}.png"
    run.driver.save_screenshot(str(path))
    return str(path)


# --- our side: decision log and feedback ----------------------------------------------------------


def decisions(run: Run) -> list[dict]:
    """Full decision records (client included), oldest first, through the auditor API (a run makes
    about 30 in its own fresh data dir, so one page of 50 holds them all)."""
    headers = {"Authorization": f"Bearer {run.auditor_token}"}
    rows = requests.get(f"{run.base}/audit/decisions", params={"limit": 50}, headers=headers, timeout=10)
    rows.raise_for_status()
    return [
        requests.get(f"{run.base}/audit/decisions/{r['id']}", headers=headers, timeout=10).json()
        for r in rows.json()["decisions"]
    ]


def feedback_rows(run: Run) -> list[dict]:
    with sqlite3.connect(f"file:{run.data_dir / 'decision-log.sqlite3'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        query = "SELECT service_id, card_uuid, outcome, override_code, decision_id FROM feedback ORDER BY id"
        return [dict(r) for r in db.execute(query)]


# --- the steps ------------------------------------------------------------------------------------


def step_patient_view(run: Run, url: str) -> None:
    """Open the sandbox on our discovery URL and FHIR endpoint: it calls our patient-view services."""
    expected = {s["id"] for s in run.services if s["hook"] == "patient-view"}
    start = time.monotonic()
    run.driver.get(url)

    def answered() -> dict[str, int] | None:
        latest = {d["service"]["id"]: len(d["response"].get("cards") or []) for d in decisions(run)}
        return latest if expected <= latest.keys() else None

    returned = wait_for(answered, 60, every=1) or {}
    total = sum(returned.get(s, 0) for s in expected)
    shown = wait_for(lambda: len(cards(run.driver)) >= total and len(cards(run.driver)), 30) or 0
    time.sleep(1)  # a late card would show up now, failing the equality below
    shown = len(cards(run.driver))
    run.timings["patient-view"] = time.monotonic() - start
    shot(run, "patient-view")
    ok = bool(returned) and shown == total and total > 0
    run.results.append(
        Result(
            "patient-view",
            ok,
            f"{shown} card(s) rendered / {total} returned by {len(returned)} of {len(expected)} services",
        )
    )


def prescribe_and_sign(run: Run) -> tuple[list, list[dict]] | str:
    """In the Rx Sign view: type the medication slowly, choose it, press Sign Order. Returns the
    warning/critical cards rendered and the order-sign decisions made, or what went wrong."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = run.driver
    box = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "input[name='medication-input']"), 15)
    if not box:
        return "no medication box in the Rx Sign view"
    box[0].send_keys(Keys.CONTROL, "a")  # a delete suggestion leaves the old name in the box
    box[0].send_keys(Keys.BACKSPACE)
    time.sleep(TYPE_DELAY_S)  # the box shows the store's old text until the debounced update lands
    query = " ".join(MEDICATION.split()[:2]).lower()  # "ibuprofen 200"
    for char in query:
        box[0].send_keys(char)
        time.sleep(TYPE_DELAY_S)
    xpath = f"//div[contains(@class,'MuiListItemButton')][normalize-space()='{MEDICATION}']"
    option = wait_for(lambda: driver.find_elements(By.XPATH, xpath), 10)
    if not option:
        return f"'{MEDICATION}' not offered after typing '{query}'"
    option[0].click()
    before = len(decisions(run))
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign Order']").click()
    expected = {s["id"] for s in run.services if s["hook"] == "order-sign"}

    def order_sign_decisions() -> list[dict]:
        return [d for d in decisions(run)[before:] if d["hook"] == "order-sign"]

    answered = wait_for(
        lambda: {d["service"]["id"] for d in order_sign_decisions()} >= expected, 30, every=0.5
    )
    # Our log is written just before each answer leaves; give the page a moment to render the answers
    # (React reuses a card's DOM node, so an earlier card cannot be told from a new one by its element).
    time.sleep(1)
    serious = wait_for(lambda: [c for c in cards(driver) if indicator(c) in ("warning", "critical")], 10)
    signed = order_sign_decisions()
    if not answered or not serious:
        return f"no warning/critical card ({len(signed)} of {len(expected)} order-sign services answered)"
    return serious, signed


def step_order_sign(run: Run) -> None:
    """Switch to Rx Sign, prescribe and sign: our warning/critical card must render."""
    from selenium.webdriver.common.by import By

    start = time.monotonic()
    run.driver.find_element(By.XPATH, "//button[normalize-space()='Rx Sign']").click()
    outcome = prescribe_and_sign(run)
    run.timings["order-sign"] = time.monotonic() - start
    shot(run, "order-sign")
    if isinstance(outcome, str):
        run.results.append(Result("order-sign", False, outcome))
        return
    serious, signed = outcome
    shown = "; ".join(f"{indicator(c)}: {summary(c)}" for c in serious)
    figure = f"{len(signed)} services called, {len(cards(run.driver))} card(s); {shown}"
    run.results.append(Result("order-sign", True, figure))


def step_accept(run: Run) -> None:
    """Take the first suggestion shown; the sandbox applies it and posts 'accepted' feedback."""
    from selenium.webdriver.common.by import By

    start = time.monotonic()
    before = len(feedback_rows(run))
    buttons = [b for c in cards(run.driver) for b in c.find_elements(By.CSS_SELECTOR, SUGGESTION)]
    if not buttons:
        run.results.append(Result("accept", False, "no card with a suggestion"))
        return
    label = buttons[0].text
    buttons[0].click()
    new = wait_for(lambda: [r for r in feedback_rows(run)[before:] if r["outcome"] == "accepted"], 15)
    run.timings["accept"] = time.monotonic() - start
    shot(run, "accepted")
    run.results.append(Result("accept", bool(new), f"'{label}': {len(new or [])} accepted feedback row(s)"))


def step_override(run: Run) -> None:
    """Sign the order again (a new card: the PDCA report counts a card by its last outcome, so the
    accepted card is left alone) and dismiss the card with the first reason of the sandbox's menu."""
    from selenium.webdriver.common.by import By

    driver = run.driver
    start = time.monotonic()
    outcome = prescribe_and_sign(run)
    if isinstance(outcome, str):
        run.results.append(Result("override", False, f"signing again: {outcome}"))
        return
    serious, signed = outcome
    new_cards = {c["uuid"] for d in signed for c in d["response"].get("cards") or []}
    before = len(feedback_rows(run))
    menus = [
        m
        for c in serious
        for m in c.find_elements(By.CSS_SELECTOR, "button[aria-label='select dismiss reason']")
    ]
    if not menus:
        run.results.append(Result("override", False, "the new card offers no override reasons"))
        return
    shown_before = len(cards(driver))
    menus[0].click()
    item_xpath = "//li[@role='menuitem'][starts-with(normalize-space(),'Override')]"
    items = wait_for(lambda: driver.find_elements(By.XPATH, item_xpath), 5)
    if not items:
        run.results.append(Result("override", False, "the override menu did not open"))
        return
    reason = (items[0].get_attribute("textContent") or "").replace("Override:", "").strip()
    items[0].click()
    new = wait_for(lambda: [r for r in feedback_rows(run)[before:] if r["outcome"] == "overridden"], 15)
    hidden = wait_for(lambda: len(cards(driver)) == shown_before - 1, 5)  # the sandbox hides a dismissed card
    run.timings["override"] = time.monotonic() - start
    shot(run, "overridden")
    codes = ", ".join(sorted({r["override_code"] or "(no code)" for r in new or []}))
    fresh = bool(new) and all(r["card_uuid"] in new_cards for r in new)  # the re-signed order's card
    ok = fresh and all(r["override_code"] for r in new) and bool(hidden)
    figure = (
        f"'{reason}': {len(new or [])} overridden row(s), of the new card: {fresh}, reason code {codes}, "
        f"card hidden: {bool(hidden)}"
    )
    run.results.append(Result("override", ok, figure))


def step_audit(run: Run) -> None:
    """Every decision was made for the official sandbox, its JWT verified."""
    records = decisions(run)
    mine = [d for d in records if (d.get("client") or {}).get("id") == run.issuer]
    verified = [d for d in mine if d["client"].get("authenticated")]
    hooks: dict[str, int] = {}
    for d in verified:
        hooks[d["hook"]] = hooks.get(d["hook"], 0) + 1
    ok = bool(records) and len(verified) == len(records)
    by_hook = ", ".join(f"{h} {n}" for h, n in sorted(hooks.items()))
    run.results.append(
        Result(
            "audit",
            ok,
            f"{len(verified)}/{len(records)} decisions client={run.issuer} authenticated ({by_hook})",
        )
    )


def step_feedback(run: Run) -> None:
    """The feedback table: an acceptance and an override with its reason, each tied to a decision."""
    rows = feedback_rows(run)
    accepted = [r for r in rows if r["outcome"] == "accepted"]
    overridden = [r for r in rows if r["outcome"] == "overridden" and r["override_code"]]
    linked = [r for r in rows if r["decision_id"]]
    ok = bool(accepted) and bool(overridden) and len(linked) == len(rows)
    codes = ", ".join(sorted({r["override_code"] for r in overridden}))
    run.results.append(
        Result(
            "feedback",
            ok,
            f"{len(accepted)} accepted, {len(overridden)} overridden ({codes}); "
            f"{len(linked)}/{len(rows)} linked to a decision",
        )
    )


def step_pdca(run: Run) -> None:
    """`cds-service pdca report` over the same data dir: the rule's row counts the acceptance and the
    override, with the reason's display."""
    exe = Path(sys.executable).with_name("cds-service")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cds_service.cli"]
    env = dict(os.environ, CDS_LLM="off", CDS_DATA_DIR=str(run.data_dir))
    report = subprocess.run([*cmd, "pdca", "report"], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in report.stdout.splitlines() if ln.startswith("| ")]
    if report.returncode != 0 or not lines:
        run.results.append(Result("pdca report", False, f"exit {report.returncode}: {report.stderr[-200:]}"))
        return
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=False)) for ln in lines[2:]
    ]
    with_feedback = [r for r in rows if r.get("Accepted", "0") != "0" or r.get("Overridden", "0") != "0"]
    accepted = sum(int(r["Accepted"]) for r in with_feedback)
    overridden = sum(int(r["Overridden"]) for r in with_feedback)
    shown = "; ".join(
        f"{r['Rule']}: accepted {r['Accepted']}, overridden {r['Overridden']} "
        f"({r['Top override reasons'] or '-'})"
        for r in with_feedback
    )
    run.results.append(
        Result("pdca report", accepted >= 1 and overridden >= 1, shown or "no rule with feedback")
    )


def data_origins(run: Run) -> str:
    """Where each call's data came from: the sandbox's prefetch, or fetched by us from its fhirServer."""
    origins: dict[str, int] = {}
    for record in decisions(run):
        for item in record.get("data") or []:
            origins[item.get("origin", "?")] = origins.get(item.get("origin", "?"), 0) + 1
    return ", ".join(f"{n} {o}" for o, n in sorted(origins.items()))


# --- putting it together --------------------------------------------------------------------------


def print_table(results: list[Result], timings: dict[str, float]) -> None:
    width = max(len(r.step) for r in results)
    print(f"\n{'step':<{width}}  outcome  figure")
    for r in results:
        print(f"{r.step:<{width}}  {'ok' if r.ok else 'FAIL':<7}  {r.figure}")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def refused_fhir_queries(data_dir: Path) -> tuple[int, int]:
    """(queries our sandbox FHIR endpoint refused with 400, of which with an unresolved {{...}} token),
    from the service's log, which names the refused value."""
    refused = [
        line
        for line in (data_dir / "service.log").read_text(encoding="utf-8", errors="replace").splitlines()
        if "/sandbox/fhir/" in line and "-> 400" in line
    ]
    return len(refused), sum("{{" in line for line in refused)


def browser_errors(driver) -> list[str]:
    """Console errors grouped (query strings cut), minus what FACTS.md calls harmless (the sandbox's own
    public discovery URL, unreachable offline; the styles.css its build lacks) and the 400s of our FHIR
    endpoint, which are reported from the service's log instead."""
    # Its failed default discovery logs no URL; ours loaded, or the patient-view step has failed already.
    harmless = (
        "sandbox-services.cds-hooks.org",
        "Could not retrieve any services",
        "styles.css",
        "favicon.ico",
    )
    counts: dict[str, int] = {}
    for entry in driver.get_log("browser"):
        message = entry["message"]
        if "/sandbox/fhir/" in message and "status of 400" in message:
            continue
        if entry["level"] == "SEVERE" and not any(h in message for h in harmless):
            key = re.sub(r"\?\S*", "", message)[:200]
            counts[key] = counts.get(key, 0) + 1
    return [f"{n} x {m}" for m, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sandbox-src", type=Path, required=True, help="a copy of github.com/cds-hooks/sandbox"
    )
    parser.add_argument("--port", type=int, default=0, help="port for cds-service (default: a free one)")
    parser.add_argument("--screenshots", type=Path, default=Path("/tmp"))
    parser.add_argument(
        "--rebuild", action="store_true", help="run npm and webpack even if the build is current"
    )
    parser.add_argument("--keep", action="store_true", help="keep the service's data dir (log, decision log)")
    args = parser.parse_args()
    src = args.sandbox_src.resolve()
    if not (src / "package.json").is_file() or not (src / "webpack.config.prod.js").is_file():
        sys.exit(
            f"{src} does not look like a copy of cds-hooks/sandbox (package.json, webpack.config.prod.js)"
        )
    check_tools()
    timings: dict[str, float] = {}
    build = build_sandbox(src, args.rebuild, timings)
    started = time.monotonic()  # "run": everything after the build (service start, browser, steps)
    static, sandbox_url = serve_static(build)

    data_dir = Path(tempfile.mkdtemp(prefix="official-sandbox-"))
    entry = sandbox_client_entry(src)
    clients_file = data_dir / "official-sandbox-clients.json"
    clients_file.write_text(json.dumps({"clients": [entry]}, indent=2) + "\n", encoding="utf-8")
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    service = start_service(data_dir, port, clients_file)
    driver = None
    args.screenshots.mkdir(parents=True, exist_ok=True)
    try:
        services = discover(base)
        auditor_token = (data_dir / "sandbox" / "auditor-token").read_text(encoding="utf-8").strip()
        driver = open_browser()
        run = Run(
            driver, base, data_dir, auditor_token, entry["iss"], args.screenshots, services, timings=timings
        )
        query = urlencode(
            {
                "serviceDiscoveryURL": f"{base}/cds-services",
                "fhirServiceUrl": f"{base}/sandbox/fhir",
                "patientId": PATIENT_ID,
            }
        )
        print(f"sandbox: {sandbox_url}/?{query}", flush=True)
        steps = [
            ("patient-view", functools.partial(step_patient_view, run, f"{sandbox_url}/?{query}")),
            ("order-sign", functools.partial(step_order_sign, run)),
            ("accept", functools.partial(step_accept, run)),
            ("override", functools.partial(step_override, run)),
            ("audit", functools.partial(step_audit, run)),
            ("feedback", functools.partial(step_feedback, run)),
            ("pdca report", functools.partial(step_pdca, run)),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # a page that changed under us: report the step, go on with the rest
                run.results.append(
                    Result(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                )
        timings["run"] = time.monotonic() - started
        print_table(run.results, timings)
        print(f"data items of the {len(decisions(run))} decisions: {data_origins(run)}")
        refused, unresolved = refused_fhir_queries(data_dir)
        print(
            f"sandbox FHIR endpoint: {refused} queries refused (400), {unresolved} of them with an "
            "unresolved {{...}} prefetch token (the official sandbox resolves only 'today() - N days')"
        )
        errors = browser_errors(driver)
        if errors:
            print("browser console errors:\n  " + "\n  ".join(errors))
        print(f"screenshots: {args.screenshots}/official-sandbox-*.png")
        return 0 if all(r.ok for r in run.results) else 1
    finally:
        if driver is not None:
            driver.quit()
        service.terminate()
        service.wait(timeout=30)
        static.shutdown()
        if args.keep:
            print(f"kept: {data_dir} (service.log, decision-log.sqlite3)")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
