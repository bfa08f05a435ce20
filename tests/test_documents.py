"""Clinical notes and reports read as text (cds_service/ehr/documents.py): inline attachments, HTML, what
is not read and why, Binary fetches from a fake FHIR server, the limits, and imperfect EHR data."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime

import pytest
from fhir_fake import Reply

from cds_service.clinical.rule_cases import PATIENT_ID, CaseBuilder
from cds_service.ehr.documents import (
    ENTERED_IN_ERROR,
    NO_SERVER,
    NOT_BINARY,
    NOT_ON_SERVER,
    SUPERSEDED,
    DocumentText,
    document_texts,
    html_to_text,
    read_documents,
)
from cds_service.ehr.fhir_client import FetchLimits, FhirClient, ServerAllowlist, new_session
from cds_service.ehr.validation import ResourceValidator
from cds_service.errors import InvalidRequest

TOKEN = "tok-docs-3b9e-do-not-log"


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode("ascii")


def note(rid="n1", *attachments, date="2021-02-23T10:00:00Z", **extra) -> dict:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": "Patient/p1"},
        "date": date,
        "content": [{"attachment": a} for a in attachments],
        **extra,
    }


def plain(text: str, charset: str = "utf-8") -> dict:
    return {"contentType": f"text/plain; charset={charset}", "data": b64(text, charset)}


def make_client(base: str, allowed: tuple[str, ...] = (), **limits) -> FhirClient:
    return FhirClient(
        new_session(),
        base,
        access_token=TOKEN,
        allowlist=ServerAllowlist(list(allowed or (base,))),
        limits=FetchLimits(**{"connect_timeout": 1.0, "read_timeout": 1.0, **limits}),
    )


def binary(text: str, content_type: str = "text/plain") -> Reply:
    return Reply(200, {"resourceType": "Binary", "id": "b", "contentType": content_type, "data": b64(text)})


# -- inline attachments ---------------------------------------------------------------------------------


def test_text_plain_note_is_read_with_its_title_date_and_part():
    texts, unread, fetch = document_texts(
        note("n1", plain("HPI: knee pain.\r\nTakes Aleve daily.\rPlan: stop."))
    )
    assert texts == [
        DocumentText(
            ref="DocumentReference/n1",
            resource_type="DocumentReference",
            title="Progress note",
            date=datetime(2021, 2, 23, 10, tzinfo=UTC),
            text="HPI: knee pain.\nTakes Aleve daily.\nPlan: stop.",
            part="content[0].attachment",
            content_type="text/plain",
        )
    ]
    assert unread == [] and fetch == []


def test_charset_latin1_is_decoded_by_the_content_type():
    texts, unread, _ = document_texts(note("n1", plain("Allergie: pénicilline (anaphylaxie)", "latin-1")))
    assert texts[0].text == "Allergie: pénicilline (anaphylaxie)"
    assert unread == []


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", None])
def test_a_utf16_byte_order_mark_outranks_the_label(content_type):
    attachment = {"data": base64.b64encode("Takes Aleve daily.".encode("utf-16")).decode()}
    if content_type:
        attachment["contentType"] = content_type
    texts, unread, _ = document_texts(note("n1", attachment))
    assert texts[0].text == "Takes Aleve daily." and unread == []


def test_no_charset_means_utf8_and_a_bad_byte_is_replaced_not_fatal():
    data = base64.b64encode("naïve ".encode() + b"\xff ok").decode()
    texts, unread, _ = document_texts(note("n1", {"contentType": "text/plain", "data": data}))
    assert texts[0].text == "naïve \ufffd ok"
    assert unread == []


def test_unknown_charset_is_read_as_utf8_and_recorded():
    attachment = {"contentType": "text/plain; charset=x-no-such", "data": b64("Aleve daily")}
    texts, unread, _ = document_texts(note("n1", attachment))
    assert texts[0].text == "Aleve daily"
    assert [u.why for u in unread] == ["charset x-no-such could not be used: read as UTF-8"]


def test_html_is_reduced_to_text_blocks_entities_lists_and_no_script():
    html = (
        "<html><head><title>Visit</title><style>p {color: red}</style></head><body>"
        "<script>document.write('<p>takes warfarin</p>')</script>"
        "<h2>HPI</h2><p>Takes <b>Aleve</b>&nbsp;220&nbsp;mg daily &amp; ibuprofen &lt;PRN&gt;.</p>"
        "<h2>Medications</h2><ul><li>Warfarin 5 mg</li><li>Digoxin&#160;0.125 mg</li></ul>"
        "<h2>Plan</h2><ol><li>Stop Aleve<ul><li>use acetaminophen</li></ul></li><li>INR in 1 week</ol>"
        "<table><tr><th>BP</th><td>128/76</td></tr></table>"
        "<p>Caf&eacute;<br>second line</p></body></html>"
    )
    texts, unread, _ = document_texts(note("n1", {"contentType": "text/html", "data": b64(html)}))
    assert texts[0].text == (
        "Visit\nHPI\nTakes Aleve 220 mg daily & ibuprofen <PRN>.\nMedications\n- Warfarin 5 mg\n"
        "- Digoxin 0.125 mg\nPlan\n1. Stop Aleve\n- use acetaminophen\n2. INR in 1 week\nBP 128/76\nCafé\n"
        "second line"
    )
    assert texts[0].content_type == "text/html"
    assert "warfarin" not in texts[0].text  # the script's text is not the note's
    assert unread == []


def test_xhtml_and_an_unclosed_head_still_give_the_body():
    xhtml = '<div xmlns="http://www.w3.org/1999/xhtml"><head><p>Denies NSAID use.</p></div>'
    texts, _, _ = document_texts(note("n1", {"contentType": "application/xhtml+xml", "data": b64(xhtml)}))
    assert texts[0].text == "Denies NSAID use."


@pytest.mark.parametrize("content_type", ["application/pdf", "image/png", "application/rtf", "text/rtf"])
def test_other_content_types_are_not_read(content_type):
    texts, unread, fetch = document_texts(note("n1", {"contentType": content_type, "data": b64("%PDF-1.4")}))
    assert texts == [] and fetch == []
    assert [(u.part, u.content_type, u.why) for u in unread] == [
        ("content[0].attachment", content_type, f"{content_type} is not read")
    ]


def test_no_content_type_is_read_only_when_it_is_utf8_text():
    text_ok = {"data": b64("Penicillin: anaphylaxis in 2009.")}
    binary_data = {"data": base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()}
    controls = {"data": base64.b64encode(b"ab\x01\x02\x03\x04cd").decode()}
    texts, unread, _ = document_texts(note("n1", text_ok, binary_data, controls))
    assert [(t.part, t.content_type, t.text) for t in texts] == [
        ("content[0].attachment", "text/plain", "Penicillin: anaphylaxis in 2009.")
    ]
    assert [(u.part, u.why) for u in unread] == [
        ("content[1].attachment", "no contentType, and not UTF-8 text"),
        ("content[2].attachment", "no contentType, and not text"),
    ]


@pytest.mark.parametrize("field", ["status", "docStatus"])
def test_entered_in_error_notes_are_not_read(field):
    resource = note("n1", plain("Positive pregnancy test."), **{field: "entered-in-error"})
    texts, unread, fetch = document_texts(resource)
    assert texts == [] and fetch == []
    assert [(u.ref, u.part, u.why) for u in unread] == [("DocumentReference/n1", "", ENTERED_IN_ERROR)]
    documents = read_documents([resource], None)
    assert documents.texts == () and [u.why for u in documents.unread] == [ENTERED_IN_ERROR]


def test_a_superseded_note_is_not_read_but_its_replacement_is():
    old = note("v1", plain("Takes ibuprofen daily."), status="superseded")
    new = note("v2", plain("Stopped ibuprofen."))
    documents = read_documents([old, new], None)
    assert [t.ref for t in documents.texts] == ["DocumentReference/v2"]
    assert [(u.ref, u.why) for u in documents.unread] == [("DocumentReference/v1", SUPERSEDED)]


def test_diagnostic_report_conclusion_then_presented_forms():
    report = {
        "resourceType": "DiagnosticReport",
        "id": "egd1",
        "status": "final",
        "code": {"text": "Upper GI endoscopy"},
        "issued": "2021-03-02T09:00:00Z",
        "effectiveDateTime": "2021-03-01",
        "conclusion": "Duodenal ulcer\r\nwith a visible vessel.",
        "presentedForm": [
            {"contentType": "application/pdf", "data": b64("%PDF")},
            {"contentType": "text/html", "data": b64("<p>Findings: <i>clean-based</i> ulcer</p>")},
        ],
    }
    texts, unread, _ = document_texts(report)
    assert [(t.part, t.content_type, t.text) for t in texts] == [
        ("conclusion", "", "Duodenal ulcer\nwith a visible vessel."),
        ("presentedForm[1]", "text/html", "Findings: clean-based ulcer"),
    ]
    assert {(t.ref, t.title, t.date) for t in texts} == {
        ("DiagnosticReport/egd1", "Upper GI endoscopy", datetime(2021, 3, 1, tzinfo=UTC))
    }
    assert [(u.part, u.why) for u in unread] == [("presentedForm[0]", "application/pdf is not read")]
    del report["effectiveDateTime"]
    assert document_texts(report)[0][0].date == datetime(2021, 3, 2, 9, tzinfo=UTC)  # issued, else


def test_lab_panels_without_text_are_not_documents_and_take_no_place_under_the_limit():
    panels = [
        {"resourceType": "DiagnosticReport", "id": f"lab{i}", "status": "final", "issued": "2022-01-01"}
        for i in range(3)
    ]
    documents = read_documents(
        [*panels, note("n1", plain("old note"), date="2001-01-01")], None, max_documents=1
    )
    assert [t.ref for t in documents.texts] == ["DocumentReference/n1"]
    assert documents.unread == ()


def test_title_falls_back_to_description_then_category_then_a_default():
    base = note("n1", plain("x"))
    del base["type"]
    assert document_texts({**base, "description": "  ED   visit note "})[0][0].title == "ED visit note"
    assert document_texts({**base, "category": [{"text": "Clinical Note"}]})[0][0].title == "Clinical Note"
    assert document_texts({**base, "type": {"coding": 7}})[0][0].title == "Clinical note"
    assert document_texts({**base, "date": None, "context": {"period": {"start": "2020-05"}}})[0][
        0
    ].date == datetime(2020, 5, 1, tzinfo=UTC)


def test_contained_binary_is_read_without_a_fetch():
    resource = note("n1", {"contentType": "text/plain", "url": "#b1"}, {"url": "#nope"})
    resource["contained"] = [
        {"resourceType": "Binary", "id": "b1", "contentType": "text/plain", "data": b64("Hi")}
    ]
    texts, unread, fetch = document_texts(resource)
    assert [t.text for t in texts] == ["Hi"] and fetch == []
    assert [(u.part, u.why) for u in unread] == [("content[1].attachment", "url names no contained Binary")]


# -- fetching Binary attachments -----------------------------------------------------------------------


def test_binary_attachments_are_fetched_from_the_clients_server(fake_fhir):
    fake_fhir.routes["Binary/b1"] = binary("Takes ibuprofen 400 mg twice daily.")
    fake_fhir.routes["Binary/b2"] = binary("<p>Mother had a GI bleed.</p>", "text/html; charset=utf-8")
    fake_fhir.routes["Binary/pdf"] = binary("%PDF-1.4", "application/pdf")
    resource = note(
        "n1",
        {"contentType": "text/plain", "url": "Binary/b1"},
        {"url": f"{fake_fhir.base_url}/Binary/b2"},
        {"url": "Binary/pdf"},
        {"contentType": "application/pdf", "url": "Binary/never"},  # not fetched: it would not be read
    )
    documents = read_documents([resource], make_client(fake_fhir.base_url))
    assert [(t.part, t.content_type, t.text) for t in documents.texts] == [
        ("content[0].attachment", "text/plain", "Takes ibuprofen 400 mg twice daily."),
        ("content[1].attachment", "text/html", "Mother had a GI bleed."),
    ]
    assert sorted((u.part, u.why) for u in documents.unread) == [
        ("content[2].attachment", "application/pdf is not read"),
        ("content[3].attachment", "application/pdf is not read"),
    ]
    assert [s.path for s in fake_fhir.seen] == ["/fhir/Binary/b1", "/fhir/Binary/b2", "/fhir/Binary/pdf"]
    assert fake_fhir.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_missing_binary_and_urls_elsewhere_are_unread_and_only_the_server_is_asked(fake_fhir):
    resource = note(
        "n1",
        {"contentType": "text/plain", "url": "Binary/gone"},
        {"contentType": "text/plain", "url": "https://elsewhere.example/fhir/Binary/b1"},
        {"contentType": "text/plain", "url": f"{fake_fhir.base_url}-other/Binary/b1"},
        {"contentType": "text/plain", "url": "/other/Binary/b1"},
        {"contentType": "text/plain", "url": "Patient?name=smith"},
        {"contentType": "text/plain", "url": "Binary/../Patient/p1"},
    )
    documents = read_documents([resource], make_client(fake_fhir.base_url))
    assert documents.texts == ()
    assert [(u.part, u.why) for u in documents.unread] == [
        ("content[0].attachment", "fetch failed: resource not found (HTTP 404)"),
        ("content[1].attachment", NOT_ON_SERVER),
        ("content[2].attachment", NOT_ON_SERVER),
        ("content[3].attachment", NOT_ON_SERVER),
        ("content[4].attachment", NOT_BINARY),
        ("content[5].attachment", NOT_BINARY),
    ]
    assert [s.path for s in fake_fhir.seen] == ["/fhir/Binary/gone"]
    assert not any(TOKEN in u.why or "gone" in u.why for u in documents.unread)


def test_the_clients_allowlist_still_applies(fake_fhir):
    client = make_client(fake_fhir.base_url, allowed=("https://ehr.example.org/fhir",))
    documents = read_documents([note("n1", {"contentType": "text/plain", "url": "Binary/b1"})], client)
    assert [u.why for u in documents.unread] == [
        f"fetch failed: FHIR server not in CDS_FHIR_ALLOWED_SERVERS: {fake_fhir.base_url.split('/')[2]}"
    ]
    assert fake_fhir.seen == []


def test_nothing_is_fetched_once_the_deadline_has_passed(fake_fhir):
    fake_fhir.routes["Binary/b1"] = binary("x")
    client = make_client(fake_fhir.base_url, deadline=0.0)
    documents = read_documents([note("n1", {"contentType": "text/plain", "url": "Binary/b1"})], client)
    (unread,) = documents.unread
    assert unread.why.startswith("fetch failed: the call's FHIR deadline was reached")
    assert fake_fhir.seen == []


def test_a_slow_server_uses_up_the_deadline_and_later_fetches_are_not_sent(fake_fhir):
    fake_fhir.routes["Binary/slow"] = Reply(200, {"resourceType": "Binary", "data": b64("x")}, delay=0.6)
    fake_fhir.routes["Binary/next"] = binary("y")
    newer = note("new", {"contentType": "text/plain", "url": "Binary/slow"}, date="2021-02-01")
    older = note("old", {"contentType": "text/plain", "url": "Binary/next"}, date="2020-01-01")
    documents = read_documents([older, newer], make_client(fake_fhir.base_url, deadline=0.3))
    assert documents.texts == ()
    assert [u.ref for u in documents.unread] == ["DocumentReference/new", "DocumentReference/old"]
    assert all("deadline" in u.why for u in documents.unread)
    assert [s.path for s in fake_fhir.seen] == ["/fhir/Binary/slow"]  # newest first; then no time left


def test_without_a_client_nothing_is_fetched():
    documents = read_documents(
        [note("n1", plain("inline"), {"contentType": "text/plain", "url": "Binary/b1"})], None
    )
    assert [t.text for t in documents.texts] == ["inline"]
    assert [(u.part, u.why) for u in documents.unread] == [("content[1].attachment", NO_SERVER)]


# -- limits -------------------------------------------------------------------------------------------------


def test_max_documents_keeps_the_newest_and_records_the_rest(fake_fhir):
    for i in range(4):
        fake_fhir.routes[f"Binary/b{i}"] = binary(f"note {i}")
    notes = [
        note(f"n{i}", {"contentType": "text/plain", "url": f"Binary/b{i}"}, date=f"202{i}-06-01")
        for i in (1, 3, 0, 2)
    ]
    undated = note("nodate", plain("undated"), date=None)
    documents = read_documents([undated, *notes], make_client(fake_fhir.base_url), max_documents=2)
    assert [t.text for t in documents.texts] == ["note 3", "note 2"]
    assert [s.path for s in fake_fhir.seen] == ["/fhir/Binary/b3", "/fhir/Binary/b2"]  # newest first
    assert [(u.ref, u.why) for u in documents.unread] == [
        (f"DocumentReference/{rid}", "over the per-call limit of 2 documents")
        for rid in ("n1", "n0", "nodate")
    ]


def test_each_text_is_cut_at_max_chars_and_the_cut_recorded():
    long_html = "<p>" + "word " * 40_000 + "</p>"
    resource = note("n1", plain("0123456789abcdef"), {"contentType": "text/html", "data": b64(long_html)})
    documents = read_documents([resource], None, max_chars=10)
    assert [t.text for t in documents.texts] == ["0123456789", "word word "]
    assert [(u.part, u.why) for u in documents.unread] == [
        ("content[0].attachment", "larger than 10 characters: cut"),
        ("content[1].attachment", "larger than 10 characters: cut"),
    ]


def test_html_parsing_stops_soon_after_max_chars():
    class Chunks(str):  # counts the chunks html_to_text takes from the document
        taken = 0

        def __getitem__(self, key):
            Chunks.taken += 1
            return str.__getitem__(self, key)

    text, cut = html_to_text(Chunks("<p>" + "x " * 1_000_000 + "</p>"), max_chars=100, chunk=1000)
    assert cut and text == "x " * 50
    assert Chunks.taken <= 2  # of 2000


def test_the_same_document_twice_is_read_once():
    resource = note("n1", plain("once"))
    documents = read_documents([resource, dict(resource)], None)
    assert [t.text for t in documents.texts] == ["once"]


# -- imperfect data never raises ------------------------------------------------------------------------

GARBAGE = [
    None,
    "DocumentReference/1",
    42,
    {"resourceType": "DocumentReference"},
    {"resourceType": "DocumentReference", "id": 7, "content": "text"},
    {"resourceType": "DocumentReference", "id": "a", "content": {"attachment": {"data": b64("lone")}}},
    {"resourceType": "DocumentReference", "id": "b", "content": [None, 3, {"attachment": "x"}, {}]},
    {"resourceType": "DocumentReference", "id": "c", "content": [{"attachment": {"data": "not base64!"}}]},
    {"resourceType": "DocumentReference", "id": "d", "content": [{"attachment": {"data": 12}}]},
    {"resourceType": "DocumentReference", "id": "e", "content": [{"attachment": {"url": ["Binary/1"]}}]},
    {
        "resourceType": "DocumentReference",
        "id": "f",
        "content": [{"attachment": {"contentType": 5, "url": 5}}],
    },
    {"resourceType": "DocumentReference", "id": "g", "date": "2021-99-99", "type": "note", "category": "x"},
    {"resourceType": "DocumentReference", "id": "h", "date": 20210101, "context": {"period": "2021"}},
    {"resourceType": "DocumentReference", "id": "i", "content": [{"attachment": {"url": "http://[::1"}}]},
    {
        "resourceType": "DocumentReference",
        "id": "j",
        "content": [{"attachment": {"url": "#x"}}],
        "contained": 1,
    },
    {"resourceType": "DocumentReference", "id": "k", "status": ["entered-in-error"], "content": []},
    {"resourceType": "DocumentReference", "id": "l", "content": [{"attachment": plain("ok")}] * 50},
    {"resourceType": "DiagnosticReport", "id": "m", "conclusion": 5, "presentedForm": "x"},
    {"resourceType": "DiagnosticReport", "id": "n", "conclusion": "   ", "code": {"coding": "x"}},
    {
        "resourceType": "DiagnosticReport",
        "id": "o",
        "presentedForm": [{"contentType": "text/html; charset=idna"}],
    },
    {
        "resourceType": "DiagnosticReport",
        "id": "p",
        "presentedForm": [{"contentType": "text/html; charset=idna", "data": b64("<p>x</p>")}],
    },
    {"resourceType": "DiagnosticReport", "id": "q", "effectivePeriod": {"start": 3}, "conclusion": "fine"},
    {
        "resourceType": "DocumentReference",
        "id": "r",
        "content": [{"attachment": {"data": b64("<![if x]><p")}}],
    },
]


def test_garbage_never_raises_and_what_is_readable_is_read(fake_fhir):
    documents = read_documents(GARBAGE, make_client(fake_fhir.base_url))
    assert {t.text for t in documents.texts} == {"lone", "ok", "x", "fine", "<![if x]><p"}
    why = {(u.ref, u.why) for u in documents.unread}
    assert ("DocumentReference/?", "content is not a list") in why
    assert ("DocumentReference/c", "attachment data is not base64") in why
    assert ("DocumentReference/l", "over the per-document limit of 10") in why
    assert ("DiagnosticReport/n", "conclusion holds no text") in why
    assert ("DiagnosticReport/p", "charset idna could not be used: read as UTF-8") in why
    assert sum(t.ref == "DocumentReference/l" for t in documents.texts) == 10
    assert fake_fhir.seen == []
    for resource in GARBAGE:
        document_texts(resource)


# -- rule cases with notes and reports -------------------------------------------------------------------


def test_case_notes_and_reports_build_valid_fhir_that_reads_back():
    case = {
        "notes": [
            "Takes Aleve daily for knee pain.",
            {
                "text": "<p>LMP 7 weeks ago; home pregnancy test positive.</p>",
                "contentType": "text/html",
                "daysAgo": 3,
                "title": "Gynecology note",
            },
            {"text": "Wrong patient.", "status": "entered-in-error"},
        ],
        "reports": [
            {"text": "Duodenal ulcer with a visible vessel.", "title": "Upper endoscopy", "daysAgo": 20}
        ],
    }
    resources, _ = CaseBuilder(date(2026, 1, 15)).build(case)
    validator = ResourceValidator()
    validator.check([(f"case.resources[{i}]", r) for i, r in enumerate(resources)])
    notes = [r for r in resources if r["resourceType"] == "DocumentReference"]
    assert {n["subject"]["reference"] for n in notes} == {f"Patient/{PATIENT_ID}"}
    documents = read_documents(resources, None)
    assert [(t.title, t.date.date(), t.content_type, t.text) for t in documents.texts] == [
        ("Progress note", date(2026, 1, 14), "text/plain", "Takes Aleve daily for knee pain."),
        ("Gynecology note", date(2026, 1, 12), "text/html", "LMP 7 weeks ago; home pregnancy test positive."),
        ("Upper endoscopy", date(2025, 12, 26), "", "Duodenal ulcer with a visible vessel."),
    ]
    assert [u.why for u in documents.unread] == [ENTERED_IN_ERROR]
    with pytest.raises(InvalidRequest):  # the validator does check DocumentReferences: content is required
        validator.check([("note", {k: v for k, v in notes[0].items() if k != "content"})])
