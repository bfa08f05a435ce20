"""The sandbox page in a real headless browser (Debian's chromium through chromedriver and Selenium),
against `cds-service serve --sandbox`: the clinician's paths an integration engineer tries first.

1. Open an anticoagulated patient, write an ibuprofen order with the picker, sign it, see the critical
   interaction card, accept its suggestion (the draft goes away) and find the feedback in the database.
2. Override a card with one of the reasons it offers; the reason code is recorded.
Set CDS_SANDBOX_SCREENSHOTS=<folder> to keep a screenshot of each main screen (docs/ holds them).

`make test` installs chromium and chromium-driver with apt-get when missing (as root); elsewhere these
tests are skipped with the reason, and fail in CI.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from shared import bundled_content
from test_serve import free_port, start_serve, wait_ready

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PATIENT = "sandbox-anticoagulated"  # hand-made: warfarin for atrial fibrillation
SCREENSHOTS = os.environ.get("CDS_SANDBOX_SCREENSHOTS")

pytestmark = pytest.mark.slow


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        why = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    _browser_or_skip()
    data = tmp_path_factory.mktemp("sandbox-data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_serve(port, data, "--sandbox")
    try:
        wait_ready(base)
        yield base, data
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(sandbox):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)


def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _shot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))


def _open_patient(driver, base: str, patient_id: str, *, load: bool = True) -> None:
    if load:
        driver.get(f"{base}/sandbox/")
    _wait(driver, lambda d: _css(d, f'li[data-patient-id="{patient_id}"] button'))
    _css(driver, f'li[data-patient-id="{patient_id}"] button')[0].click()
    _wait(driver, lambda d: "Warfarin" in _css(d, "#chart")[0].text)
    # patient-view services answered (each has a status line once its call ended)
    _wait(driver, lambda d: _css(d, '.call-status li[data-hook="patient-view"]'))


def _use_services(driver, base: str, discovery_url: str, expect: str) -> None:
    """Point the page at the CDS service whose discovery URL is given, as an engineer does."""
    driver.get(f"{base}/sandbox/")
    box = _wait(
        driver, lambda d: next((x for x in _css(d, "#discovery-url") if x.get_attribute("value")), None)
    )
    box.clear()
    box.send_keys(discovery_url)
    _css(driver, "#load-services")[0].click()
    _wait(driver, lambda d: expect in _css(d, "#services-summary")[0].text)


def _wait_clicked(driver, selector: str, text: str, seconds: float = 30) -> None:
    """Click the first element matching `selector` whose text holds `text`, once there. The picker may
    re-render its list for a later keystroke's search between finding a button and clicking it (a stale
    element): then it is looked up again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def clicked(d) -> bool:
        button = next((b for b in _css(d, selector) if text in b.text), None)
        if button is None:
            return False
        button.click()
        return True

    WebDriverWait(
        driver, seconds, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    ).until(clicked)


def _sign(driver, query: str, choose: str) -> None:
    search = _css(driver, "#med-search")[0]
    search.clear()
    for ch in query:  # typed as a person types, past the picker's debounce
        search.send_keys(ch)
        time.sleep(0.05)
    _wait_clicked(driver, "#med-results button[data-code]", choose)
    _css(driver, "#add-order")[0].click()
    _wait(driver, lambda d: _css(d, "#draft-orders li[data-draft-id]"))
    _css(driver, "#sign-orders")[0].click()


def _feedback_rows(data: Path, card_uuid: str) -> list[tuple]:
    with sqlite3.connect(data / "decision-log.sqlite3") as db:
        return db.execute(
            "SELECT outcome, accepted_suggestions, override_code FROM feedback"
            " WHERE card_uuid = ? ORDER BY id",
            (card_uuid,),
        ).fetchall()


def _critical_interaction_card(driver):
    def found(d):
        cards = _css(d, 'article.card[data-indicator="critical"]')
        return next((c for c in cards if "Warfarin" in c.text and "Ibuprofen" in c.text), None)

    return _wait(driver, found)


def test_sign_an_interacting_order_see_the_warning_accept_its_suggestion(sandbox, browser):
    base, data = sandbox
    _open_patient(browser, base, PATIENT)
    _shot(browser, "sandbox-patient-view")
    _sign(browser, "ibuprofen 200", "Ibuprofen 200 MG Oral Tablet")
    card = _critical_interaction_card(browser)
    assert "bleeding" in card.text.lower()
    _wait(browser, lambda d: _css(d, "details.call[data-hook='order-sign']"))
    _shot(browser, "sandbox-order-sign")
    drafts_before = len(_css(browser, "#draft-orders li[data-draft-id]"))
    suggestion = next(
        b for b in card.find_elements("css selector", "[data-suggestion-uuid]") if "Remove" in b.text
    )
    suggestion_uuid = suggestion.get_attribute("data-suggestion-uuid")
    suggestion.click()
    _wait(browser, lambda d: "recorded" in card.find_element("css selector", ".feedback-status").text.lower())
    # the suggestion's delete action was applied to the draft orders
    assert len(_css(browser, "#draft-orders li[data-draft-id]")) == drafts_before - 1
    rows = _feedback_rows(data, card.get_attribute("data-card-uuid"))
    assert [r[0] for r in rows] == ["accepted"] and suggestion_uuid in rows[0][1]
    # the call inspector lays the call open: request, response, the decision entry read as an auditor
    entry = _css(browser, "details.call[data-hook='order-sign'][data-service-id='medication-order-check']")[0]
    assert entry.get_attribute("data-decision-id")
    browser.execute_script("arguments[0].open = true; arguments[0].scrollIntoView();", entry)
    _wait(
        browser,
        lambda d: '"hookInstance"' in entry.text and entry.get_attribute("data-decision-id") in entry.text,
    )
    _shot(browser, "sandbox-call-inspector")


def test_override_a_card_with_a_reason_it_offers_with_no_prefetch_sent(sandbox, browser):
    base, data = sandbox
    _open_patient(browser, base, PATIENT)
    _css(browser, "#send-prefetch")[0].click()  # off: the service fetches from the sandbox FHIR server
    assert not _css(browser, "#send-prefetch")[0].is_selected()
    _sign(browser, "ibuprofen 200", "Ibuprofen 200 MG Oral Tablet")
    card = _critical_interaction_card(browser)
    entry = _wait(
        browser,
        lambda d: _css(d, "details.call[data-hook='order-sign'][data-service-id='medication-order-check']"),
    )[0]
    browser.execute_script("arguments[0].open = true;", entry)
    _wait(browser, lambda d: "not sent: fetched by the service" in entry.text)
    request_body = next(
        p.text for p in entry.find_elements("css selector", "pre") if '"hookInstance"' in p.text
    )
    assert '"fhirServer"' in request_body and '"prefetch"' not in request_body  # the request carried none
    card.find_element("css selector", "button.override").click()
    dialog = _wait(
        browser, lambda d: next((x for x in _css(d, "#override-dialog") if x.is_displayed()), None)
    )
    reason = dialog.find_elements("css selector", "input[name=override-reason]")[0]
    code = reason.get_attribute("value")
    reason.click()
    _shot(browser, "sandbox-override-reason")
    browser.find_element("css selector", "#override-submit").click()
    _wait(browser, lambda d: "recorded" in card.find_element("css selector", ".feedback-status").text.lower())
    rows = _feedback_rows(data, card.get_attribute("data-card-uuid"))
    assert [(r[0], r[2]) for r in rows] == [("overridden", code)]


def test_pdca_and_trust_views(sandbox, browser):
    base, _ = sandbox
    browser.get(f"{base}/sandbox/")
    _wait(browser, lambda d: _css(d, "#tab-pdca"))
    _css(browser, "#tab-pdca")[0].click()
    frame = _wait(browser, lambda d: next((f for f in _css(d, "#pdca-frame") if f.is_displayed()), None))
    browser.switch_to.frame(frame)
    _wait(browser, lambda d: "rule" in d.find_element("css selector", "body").text.lower())
    assert browser.find_elements("css selector", "img[src^='data:image/png']")  # the PDCA chart
    browser.switch_to.default_content()
    _shot(browser, "sandbox-pdca")
    _css(browser, "#tab-trust")[0].click()
    clients = _wait(browser, lambda d: next((x for x in _css(d, "#trust-clients") if x.text.strip()), None))
    assert f"{base}/sandbox/.well-known/jwks.json" in clients.text
    _shot(browser, "sandbox-trust")


def test_a_patients_example_order_is_signed_as_written_and_the_opioid_guideline_answers(sandbox, browser):
    """The example orders carry what outpatient rules read (community category, days supply): an opioid for
    an opioid-naive sprain reaches the CDC opioid services from the page."""
    base, _ = sandbox
    browser.get(f"{base}/sandbox/")
    _wait(browser, lambda d: _css(d, 'li[data-patient-id="sandbox-opioid-naive-ankle-sprain"] button'))
    _css(browser, 'li[data-patient-id="sandbox-opioid-naive-ankle-sprain"] button')[0].click()
    _wait(browser, lambda d: _css(d, "#try-orders button[data-try-code]"))
    offers = _css(browser, "#try-orders button[data-try-code]")
    for offer in offers:  # a 5-day and a 10-day oxycodone supply
        offer.click()
    assert len(_css(browser, "#draft-orders li[data-draft-id]")) == len(offers) == 2
    _css(browser, "#sign-orders")[0].click()
    # rec 1 (non-opioid therapy first) and rec 6 (acute pain: three days or less), each from its service
    _wait(browser, lambda d: _css(d, 'article.card[data-service-id="opioidcds-01"]'))
    _wait(browser, lambda d: _css(d, 'article.card[data-service-id="opioidcds-06"]'))


def test_the_page_calls_a_cds_service_at_another_url(sandbox, browser, tmp_path):
    """Like the public CDS Hooks Sandbox, the page can drive any CDS service by its discovery URL: here a
    second instance of this service (another port, no sandbox, no client trust: CORS is what lets it answer
    a page from another origin), sent the prefetch the sandbox resolved."""
    base, _ = sandbox
    port = free_port()
    other = f"http://127.0.0.1:{port}"
    server = start_serve(port, tmp_path / "other")
    try:
        wait_ready(other)
        services = len(bundled_content().services)  # the other instance serves the same content
        _use_services(browser, base, f"{other}/cds-services", f"{services} services")
        _open_patient(browser, base, PATIENT, load=False)
        _sign(browser, "ibuprofen 200", "Ibuprofen 200 MG Oral Tablet")
        _critical_interaction_card(browser)
        entry = _wait(browser, lambda d: _css(d, "details.call[data-service-id='medication-order-check']"))[0]
        browser.execute_script("arguments[0].open = true;", entry)
        assert f"{other}/cds-services/medication-order-check" in entry.text
    finally:
        server.terminate()
        server.wait(timeout=30)


HOSTILE_CARD = {
    "uuid": "0b7c1f3e-9d2a-4c55-8a61-3f0e2d9b7a10",
    "summary": "<b>not bold</b> <img src=x onerror=window.__pwned=1>",
    "indicator": "warning",
    "detail": 'Text **kept**. <img src=x onerror="window.__pwned=2"> <script>window.__pwned=3</script> '
    "[a script link](javascript:window.__pwned=4)",
    "source": {"label": "a hostile source", "url": "javascript:window.__pwned=5"},
    "links": [{"label": "hostile link", "url": "javascript:window.__pwned=6", "type": "absolute"}],
}


def _hostile_cds_service():
    """A CDS service at another origin whose patient-view card tries every way into the page."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_OPTIONS(self):  # the CORS preflight
            self._send({})

        def do_GET(self):
            self._send({"services": [{"hook": "patient-view", "id": "hostile", "description": "x"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send({"cards": [HOSTILE_CARD]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_card_from_another_service_cannot_run_script_in_the_page(sandbox, browser):
    base, _ = sandbox
    hostile = _hostile_cds_service()
    try:
        _use_services(browser, base, f"http://127.0.0.1:{hostile.server_port}/cds-services", "1 service")
        _open_patient(browser, base, PATIENT, load=False)
        card = _wait(
            browser,
            lambda d: next(iter(_css(d, f'article.card[data-card-uuid="{HOSTILE_CARD["uuid"]}"]')), None),
        )
        for link in card.find_elements("css selector", "a"):
            link.click()  # whatever is clickable: none may run script
        time.sleep(0.5)
        assert browser.execute_script("return window.__pwned") is None
        assert "<b>not bold</b>" in card.text  # the summary is text, never markup
        assert "kept" in card.find_element("css selector", "strong").text  # markdown still renders
        hrefs = [a.get_attribute("href") or "" for a in card.find_elements("css selector", "a")]
        assert not any(h.lower().startswith("javascript:") for h in hrefs)
        assert not card.find_elements("css selector", "script, img[onerror]")
    finally:
        hostile.shutdown()


def test_choosing_an_order_calls_the_order_select_services_before_signing(sandbox, browser):
    """CDS Hooks order-select from the page: adding a benzodiazepine for a patient on an opioid calls the
    order-select services with that draft as `selections`, and the caution arrives before anyone signs."""
    base, _ = sandbox
    browser.get(f"{base}/sandbox/")
    patient = "sandbox-opioid-benzodiazepine"
    _wait(browser, lambda d: _css(d, f'li[data-patient-id="{patient}"] button'))
    _css(browser, f'li[data-patient-id="{patient}"] button')[0].click()
    _wait(browser, lambda d: _css(d, "#try-orders button[data-try-code]"))
    offer = next(b for b in _css(browser, "#try-orders button[data-try-code]") if "alprazolam" in b.text)
    offer.click()
    _wait(browser, lambda d: _css(d, 'article.card[data-service-id="opioidcds-11-order-select"]'))
    assert not _css(browser, "details.call[data-hook='order-sign']")  # nothing was signed
    entry = _css(
        browser, "details.call[data-hook='order-select'][data-service-id='opioidcds-11-order-select']"
    )[0]
    browser.execute_script("arguments[0].open = true;", entry)
    draft_id = _css(browser, "#draft-orders li[data-draft-id]")[0].get_attribute("data-draft-id")
    _wait(browser, lambda d: f'"MedicationRequest/{draft_id}"' in entry.text and '"selections"' in entry.text)
