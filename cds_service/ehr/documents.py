"""Clinical notes and reports as plain text, for the note extractor to find mentions in.

Reads FHIR R4 DocumentReference (each ``content[].attachment``) and DiagnosticReport (``conclusion`` and
each ``presentedForm[]``). An attachment's ``data`` is read inline; a ``url`` is fetched only from the
call's own FHIR server, and only as a ``Binary/<id>`` read (the client's allowlist and deadline apply).
Text is read from text/plain and from HTML (reduced to text with the standard library's parser); other
types (PDF, images, RTF ...) are not read.

This data comes from EHRs and is imperfect, so nothing here raises on it: every part that is not read
(or is read only in part) is an `UnreadPart` with the reason, for the decision record. Work is bounded:
at most `max_documents` documents per call (newest first), `MAX_PARTS` attachments per document, and
each text cut at `max_chars`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from urllib.parse import urlsplit

from ..clinical.facts import parse_datetime, texts_of
from ..errors import clip
from .fhir_client import FhirAccessError, FhirClient, ServerAllowlist

DOCUMENT_TYPES = ("DocumentReference", "DiagnosticReport")
MAX_PARTS = 10  # attachments read per document: a malformed resource may list thousands
HTML_TYPES = ("text/html", "application/xhtml+xml")
ENTERED_IN_ERROR = "entered-in-error: not read"
SUPERSEDED = "superseded by a newer version: not read (the newer one is)"
NO_SERVER = "no fhirServer to fetch from"
NOT_ON_SERVER = "url not on the allowlisted FHIR server"
NOT_BINARY = "url is not a Binary read on the FHIR server"


@dataclass(frozen=True)
class DocumentText:
    ref: str  # "DocumentReference/<id>" or "DiagnosticReport/<id>"
    resource_type: str
    title: str  # a readable name: DocumentReference.type / description, DiagnosticReport.code
    date: datetime | None  # DocumentReference.date (else context.period.start); report effective/issued
    text: str  # plain text, newlines normalised to "\n"
    part: str  # where in the resource: "content[0].attachment", "conclusion", "presentedForm[1]"
    content_type: str  # "text/plain", "text/html", "application/xhtml+xml", or "" for a conclusion


@dataclass(frozen=True)
class UnreadPart:
    ref: str
    part: str  # as DocumentText.part; "" for the whole document
    content_type: str | None
    why: str  # "application/pdf is not read", "fetch failed: <reason>", "larger than N characters: cut" ...


@dataclass(frozen=True)
class Documents:
    texts: tuple[DocumentText, ...]
    unread: tuple[UnreadPart, ...]


# -- one document, no I/O ---------------------------------------------------------------------------------


def document_texts(
    resource: dict, *, max_chars: int = 100_000
) -> tuple[list[DocumentText], list[UnreadPart], list[tuple[str, str, str]]]:
    """The texts readable inline, the parts not read (with why), and the attachments to fetch as
    (part, url, contentType or ""). Not a DocumentReference or DiagnosticReport: nothing."""
    if not isinstance(resource, dict) or resource.get("resourceType") not in DOCUMENT_TYPES:
        return [], [], []
    ref = ref_of(resource)
    if not_current(resource):
        return [], [UnreadPart(ref, "", None, not_current(resource))], []
    doc = _Doc(ref, resource["resourceType"], _title(resource), document_date(resource), max_chars)
    if resource["resourceType"] == "DiagnosticReport":
        conclusion = resource.get("conclusion")
        if isinstance(conclusion, str) and conclusion.strip():
            doc.add_text("conclusion", "", _normalise_newlines(conclusion))
        elif conclusion is not None:
            doc.unread.append(UnreadPart(ref, "conclusion", None, "conclusion holds no text"))
        attachments = _listed(doc, resource.get("presentedForm"), "presentedForm")
        parts = [(f"presentedForm[{i}]", a) for i, a in attachments]
    else:
        if resource.get("content") in (None, []):
            doc.unread.append(UnreadPart(ref, "content", None, "no content"))
        contents = _listed(doc, resource.get("content"), "content")
        parts = []
        for i, content in contents:
            attachment = content.get("attachment") if isinstance(content, dict) else None
            if isinstance(attachment, dict):
                parts.append((f"content[{i}].attachment", attachment))
            else:
                doc.unread.append(UnreadPart(ref, f"content[{i}]", None, "no attachment"))
    for part, attachment in parts:
        if not isinstance(attachment, dict):
            doc.unread.append(UnreadPart(ref, part, None, "not an attachment"))
            continue
        content_type = attachment.get("contentType")
        content_type = content_type if isinstance(content_type, str) else None
        data, url = attachment.get("data"), attachment.get("url")
        if data is not None:  # inline data wins over a url (it is the same content)
            doc.add_bytes(part, content_type, data)
        elif isinstance(url, str) and url.startswith("#"):
            doc.add_contained(part, content_type, url[1:], resource.get("contained"))
        elif isinstance(url, str) and url:
            if _media_type(content_type)[0] in ("", "text/plain", *HTML_TYPES):
                doc.fetch.append((part, url, content_type or ""))
            else:  # no point fetching what will not be read
                doc.unread.append(UnreadPart(ref, part, content_type, _not_read(content_type)))
        else:
            doc.unread.append(UnreadPart(ref, part, content_type, "attachment has neither data nor url"))
    return doc.texts, doc.unread, doc.fetch


def ref_of(resource: dict) -> str:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid if isinstance(rid, str) and rid else '?'}"


def entered_in_error(resource: dict) -> bool:
    return "entered-in-error" in (resource.get("status"), resource.get("docStatus"))


def not_current(resource: dict) -> str | None:
    """Why a document is not read at all: entered in error, or superseded (its replacement is read)."""
    if entered_in_error(resource):
        return ENTERED_IN_ERROR
    if resource.get("resourceType") == "DocumentReference" and resource.get("status") == "superseded":
        return SUPERSEDED
    return None


def document_date(resource: dict) -> datetime | None:
    """DocumentReference.date, else context.period.start; DiagnosticReport effective[x], else issued."""
    if resource.get("resourceType") == "DiagnosticReport":
        candidates = [resource.get("effectiveDateTime"), _get(resource, "effectivePeriod", "start")]
        candidates.append(resource.get("issued"))
    else:
        candidates = [resource.get("date"), _get(resource, "context", "period", "start")]
    return next((d for d in map(parse_datetime, candidates) if d is not None), None)


class _Doc:
    """What is read from one document so far."""

    def __init__(self, ref: str, rtype: str, title: str, date: datetime | None, max_chars: int):
        self.ref, self.rtype, self.title, self.date, self.max_chars = ref, rtype, title, date, max_chars
        self.texts: list[DocumentText] = []
        self.unread: list[UnreadPart] = []
        self.fetch: list[tuple[str, str, str]] = []

    def add_text(self, part: str, content_type: str, text: str, cut: bool = False) -> None:
        if len(text) > self.max_chars:
            text, cut = text[: self.max_chars], True
        if cut:  # a cut text is still read: the record says it was cut
            why = f"larger than {self.max_chars} characters: cut"
            self.unread.append(UnreadPart(self.ref, part, content_type or None, why))
        if text.strip():
            self.texts.append(
                DocumentText(self.ref, self.rtype, self.title, self.date, text, part, content_type)
            )
        elif not cut:
            self.unread.append(UnreadPart(self.ref, part, content_type or None, "no text in it"))

    def add_bytes(self, part: str, content_type: str | None, data) -> None:
        raw = _base64(data)
        if raw is None:
            self.unread.append(UnreadPart(self.ref, part, content_type, "attachment data is not base64"))
            return
        outcome = decode_text(raw, content_type, self.max_chars)
        if isinstance(outcome, str):
            self.unread.append(UnreadPart(self.ref, part, content_type, outcome))
            return
        media, text, cut, note = outcome
        if note:
            self.unread.append(UnreadPart(self.ref, part, content_type, note))
        self.add_text(part, media, text, cut)

    def add_contained(self, part: str, content_type: str | None, rid: str, contained) -> None:
        """An attachment whose url names a Binary contained in the document itself (``#id``)."""
        binary = next(
            (
                r
                for r in (contained if isinstance(contained, list) else [])
                if isinstance(r, dict) and r.get("resourceType") == "Binary" and r.get("id") == rid
            ),
            None,
        )
        if binary is None:
            self.unread.append(UnreadPart(self.ref, part, content_type, "url names no contained Binary"))
            return
        self.add_binary(part, content_type, binary)

    def add_binary(self, part: str, content_type: str | None, binary: dict) -> None:
        """A Binary resource's content (its own contentType, else the attachment's)."""
        own = binary.get("contentType")
        content_type = own if isinstance(own, str) and own else content_type
        if binary.get("data") is None:
            self.unread.append(UnreadPart(self.ref, part, content_type, "Binary holds no data"))
        else:
            self.add_bytes(part, content_type, binary["data"])


def _listed(doc: _Doc, value, name: str) -> list[tuple[int, object]]:
    """(position, item) of a list element, at most MAX_PARTS; a lone object is read as a one-item list."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        doc.unread.append(UnreadPart(doc.ref, name, None, f"{name} is not a list"))
        return []
    if len(value) > MAX_PARTS:
        doc.unread.append(
            UnreadPart(doc.ref, f"{name}[{MAX_PARTS}:]", None, f"over the per-document limit of {MAX_PARTS}")
        )
    return list(enumerate(value[:MAX_PARTS]))


def _get(node, *keys):
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _concept_name(concept) -> str | None:
    if not isinstance(concept, dict):
        return None
    coding = concept.get("coding")  # texts_of iterates it: only a list of codings is safe to hand on
    names = texts_of({"text": concept.get("text"), "coding": coding if isinstance(coding, list) else []})
    names = [n.strip() for n in names if n.strip()]
    return names[0] if names else None


def _title(resource: dict) -> str:
    if resource["resourceType"] == "DiagnosticReport":
        title = _concept_name(resource.get("code")) or "Report"
    else:
        description = resource.get("description")
        categories = resource.get("category")
        categories = categories if isinstance(categories, list) else []
        title = (
            _concept_name(resource.get("type"))
            or (description.strip() if isinstance(description, str) and description.strip() else None)
            or next(filter(None, map(_concept_name, categories)), None)
            or "Clinical note"
        )
    return clip(" ".join(title.split()), 200)


# -- bytes to text ------------------------------------------------------------------------------------------


def _media_type(content_type: str | None) -> tuple[str, str | None]:
    """("type/subtype" lower-cased, charset or None) of e.g. 'text/plain; charset=ISO-8859-1'."""
    if not content_type:
        return "", None
    media, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').strip("'"):
            charset = value.strip().strip('"').strip("'")
    return media.strip().lower(), charset


def _not_read(content_type: str | None) -> str:
    media = _media_type(content_type)[0]
    return f"{clip(media or content_type or 'this content type', 80)} is not read"


def _base64(data) -> bytes | None:
    if not isinstance(data, str):
        return None
    text = "".join(data.split())  # MIME-style line breaks are common
    text += "=" * (-len(text) % 4)  # so is missing padding
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_text(raw: bytes, content_type: str | None, max_chars: int) -> tuple[str, str, bool, str] | str:
    """(media type read as, text, cut, a note for the record or "") or, when it is not read, why not."""
    media, charset = _media_type(content_type)
    note = ""
    if not media:  # no type: text only if it is UTF-8 and looks like text
        try:
            utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
            text = raw.decode("utf-16" if utf16 else "utf-8-sig")
        except UnicodeDecodeError:
            return "no contentType, and not UTF-8 text"
        if not _looks_like_text(text):
            return "no contentType, and not text"
        head = text.lstrip()[:20].lower()
        media = "text/html" if head.startswith(("<!doctype html", "<html")) else "text/plain"
    elif media == "text/plain" or media in HTML_TYPES:
        utf8 = (charset or "utf-8").lower().replace("_", "-") in ("utf-8", "utf8")
        encoding = "utf-8-sig" if utf8 else charset  # -sig: a byte-order mark is no part of the text
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = "utf-16"  # a byte-order mark outranks the label (WHATWG Encoding, "BOM sniff")
        try:
            text = raw.decode(encoding, errors="replace")
        except (LookupError, ValueError):  # unknown charset, not a text codec, or one refusing "replace"
            text = raw.decode("utf-8", errors="replace")
            note = f"charset {clip(charset, 40)} could not be used: read as UTF-8"
    else:
        return _not_read(content_type)
    if media in HTML_TYPES:
        reduced = html_to_text(text, max_chars)
        if reduced is None:
            return "HTML could not be parsed"
        text, cut = reduced
    else:
        text, cut = _normalise_newlines(text), False
    return media, text, cut, note


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _looks_like_text(text: str) -> bool:
    sample = text[:65_536]
    controls = sum(1 for c in sample if unicodedata.category(c) == "Cc" and c not in "\t\n\r\f")
    return "\x00" not in sample and controls <= len(sample) // 100


# -- HTML to text -------------------------------------------------------------------------------------------

_BLOCKS = frozenset(
    "address article aside blockquote body caption dd div dl dt fieldset figcaption figure footer form h1 h2 "
    "h3 h4 h5 h6 header hr html li main nav ol p pre section table tbody tfoot thead title tr ul".split()
)
_DROPPED = frozenset({"script", "style", "template"})  # not <head>: notes often leave it unclosed
_CELLS = frozenset({"td", "th"})


class _TextExtractor(HTMLParser):
    """Text of an HTML document: block elements start new lines, list items are marked, table cells are
    spaced, script and style are dropped, entities are unescaped (convert_charrefs)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []  # finished lines
        self.line: list[str] = []  # the line being built
        self.size = 0
        self.dropping = 0  # depth inside script/style/...
        self.pre = 0
        self.lists: list[int | None] = []  # per open list: the last item number (<ol>) or None (<ul>)

    def handle_starttag(self, tag, attrs):
        if tag in _DROPPED:
            self.dropping += 1
        elif tag == "br":
            self._break()
        elif tag in _BLOCKS:
            self._break()
            if tag == "pre":
                self.pre += 1
            elif tag in ("ol", "ul"):
                self.lists.append(0 if tag == "ol" else None)
            elif tag == "li":
                number = self.lists[-1] if self.lists else None
                if number is None:
                    self.line.append("- ")
                else:
                    self.lists[-1] = number + 1
                    self.line.append(f"{number + 1}. ")
        elif tag in _CELLS:
            self.line.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag not in _DROPPED:  # <script/> opens nothing
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in _DROPPED:
            self.dropping = max(0, self.dropping - 1)
        elif tag in _BLOCKS:
            self._break()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            elif tag in ("ol", "ul") and self.lists:
                self.lists.pop()
        elif tag in _CELLS:
            self.line.append(" ")

    def handle_data(self, data):
        if self.dropping:
            return
        if self.pre:
            first, *rest = data.split("\n")
            self.line.append(first)
            for piece in rest:
                self._break(keep_empty=True)
                self.line.append(piece)
        else:
            self.line.append(data)  # whitespace is collapsed per line, in _break
        self.size += len(data.strip())

    def _break(self, keep_empty: bool = False):
        text = "".join(self.line).rstrip() if self.pre else " ".join("".join(self.line).split())
        self.line = []
        if text or keep_empty:
            self.lines.append(text)

    def text(self) -> str:
        self._break()
        return "\n".join(self.lines).strip("\n")


def html_to_text(html: str, max_chars: int = 100_000, chunk: int = 32_768) -> tuple[str, bool] | None:
    """(text, cut) of an HTML document, parsed only until `max_chars` of text are out; None if the parser
    gave up on it."""
    parser = _TextExtractor()
    cut = False
    try:
        for start in range(0, len(html), chunk):
            parser.feed(html[start : start + chunk])
            if parser.size > max_chars:
                cut = start + chunk < len(html)
                break
        parser.close()
    except (AssertionError, AttributeError, ValueError):  # html.parser's reaction to some malformed input
        return None
    text = parser.text()
    if len(text) > max_chars:
        text, cut = text[:max_chars], True
    return text, cut


# -- many documents, with fetching ------------------------------------------------------------------------


def read_documents(
    resources: Iterable[dict],
    client: FhirClient | None,
    *,
    max_documents: int = 50,
    max_chars: int = 100_000,
) -> Documents:
    """The text of every DocumentReference and DiagnosticReport in `resources`, newest first.

    Attachments given by url are fetched from the client's server only (a relative ``Binary/<id>``, or an
    absolute URL under ``client.base_url``), newest document first, within the client's deadline;
    without a client nothing is fetched. Each part not read is an `UnreadPart` saying why."""
    documents, unread, seen = [], [], set()
    for r in resources or ():
        if not isinstance(r, dict) or r.get("resourceType") not in DOCUMENT_TYPES or not _has_text(r):
            continue
        ref = ref_of(r)
        if ref in seen:  # the same document sent twice (prefetch and a fetch) is read once
            continue
        if not ref.endswith("/?"):
            seen.add(ref)
        if not_current(r):
            unread.append(UnreadPart(ref, "", None, not_current(r)))
        else:
            documents.append(r)
    oldest = datetime.min.replace(tzinfo=UTC)
    documents.sort(key=lambda r: document_date(r) or oldest, reverse=True)  # stable: ties keep their order
    over = f"over the per-call limit of {max_documents} documents"
    unread += [UnreadPart(ref_of(r), "", None, over) for r in documents[max_documents:]]

    texts: list[DocumentText] = []
    for r in documents[:max_documents]:
        inline, not_read, fetch = document_texts(r, max_chars=max_chars)
        doc = _Doc(ref_of(r), r["resourceType"], _title(r), document_date(r), max_chars)
        for part, url, content_type in fetch:
            _fetch(doc, client, part, url, content_type or None)
        texts.extend(sorted(inline + doc.texts, key=lambda t: _part_order(t.part)))
        unread.extend(not_read + doc.unread)
    return Documents(tuple(texts), tuple(unread))


def _has_text(resource: dict) -> bool:
    """A report with neither conclusion nor presentedForm (a lab panel) is no document to read: it must
    not take a place under the per-call limit."""
    if resource["resourceType"] == "DiagnosticReport":
        return resource.get("conclusion") is not None or resource.get("presentedForm") is not None
    return True


def _part_order(part: str) -> tuple[int, int]:
    number = part.partition("[")[2].partition("]")[0]
    return (part != "conclusion", int(number) if number.isdigit() else 0)


def _fetch(doc: _Doc, client: FhirClient | None, part: str, url: str, content_type: str | None) -> None:
    if client is None:
        doc.unread.append(UnreadPart(doc.ref, part, content_type, NO_SERVER))
        return
    relative, why = _binary_read(url, client.base_url)
    if relative is None:  # nothing is sent for a url elsewhere, or for anything but a Binary read
        doc.unread.append(UnreadPart(doc.ref, part, content_type, why))
        return
    try:
        resources, _, _ = client.get(relative)
    except FhirAccessError as exc:  # its message names the host at most: never the path or the token
        doc.unread.append(UnreadPart(doc.ref, part, content_type, f"fetch failed: {exc}"))
        return
    binary = resources[0] if resources else None
    if not isinstance(binary, dict) or binary.get("resourceType") != "Binary":
        doc.unread.append(UnreadPart(doc.ref, part, content_type, "fetch failed: the answer is not a Binary"))
        return
    doc.add_binary(part, content_type, binary)


def _binary_read(url: str, base_url: str) -> tuple[str | None, str]:
    """(``Binary/<id>``, "") when `url` reads a Binary on the server at `base_url` (relative, or absolute
    under it with the same scheme, host and port), else (None, why not)."""
    try:
        parts = urlsplit(url)
        if parts.scheme or parts.netloc:
            if not ServerAllowlist([base_url]).permits(url):
                return None, NOT_ON_SERVER
            path = parts.path[len(urlsplit(base_url).path.rstrip("/")) :]
        elif parts.path.startswith("/"):  # host-relative: it may lie outside the FHIR base
            return None, NOT_ON_SERVER
        else:
            path = parts.path
    except ValueError:  # a malformed url, or a client base that is no http(s) URL
        return None, NOT_ON_SERVER
    segments = path.strip("/").split("/")
    rid = segments[-1]
    if (
        parts.query
        or parts.fragment
        or len(segments) != 2
        or segments[0] != "Binary"
        or not 0 < len(rid) <= 64
        or not all(c.isascii() and (c.isalnum() or c in "-.") for c in rid)
    ):
        return None, NOT_BINARY
    return f"Binary/{rid}", ""
