"""Loading FHIR R4 content into a FHIR server (HAPI FHIR, Medplum, ...): `cds-service fhir load`.

Each file becomes one ``transaction`` Bundle POSTed to the server's base. A resource with an id is sent as
``PUT Type/id``: ids stay as in the file, so loading twice changes nothing and the references between
files keep working. A resource without an id but with a ``urn:uuid:`` fullUrl (what Synthea writes) gets
that uuid as its id and is PUT too; its fullUrl stays, so the server rewrites every ``urn:uuid:``
reference to ``Type/id`` while it processes the transaction (FHIR R4 http.html#trules: "the server
SHALL replace all matching links"; checked against Medplum's BatchProcessor, which maps a PUT's fullUrl to
its request url, in tests/test_fhir_load.py). A resource with neither
is POSTed (the server picks its id; loading it twice makes two). An entry the file's author sent as a
conditional create (``ifNoneExist``, Synthea's shared practitioners) stays one: idempotent by its
condition.

The answer is read entry by entry: a server that processes a transaction as a batch (Medplum without its
``transaction-bundles`` project feature) answers 200 even when some entries failed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

from ..errors import clip
from ..json_input import JsonInputError, parse_json

FHIR_JSON = "application/fhir+json"
# Bundles whose entries are the resources to load; any other Bundle (document, message) is one resource.
_CONTAINERS = {"transaction", "batch", "collection", "searchset", "history"}
_URN_UUID = "urn:uuid:"
MAX_PROBLEMS = 5  # failed entries named per file; the count says how many more


class LoadError(ValueError):
    """A file that is not FHIR content this command can send."""


@dataclass
class LoadResult:
    """What happened to one file: what was sent and what the server said."""

    name: str
    sent: int = 0
    status: str = ""  # "200 OK", or what stopped the request ("no answer within 300 s")
    succeeded: int = 0
    problems: list[str] = field(default_factory=list)
    shifted_days: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One line for the terminal: what was sent, what the server said."""
        if not self.status:
            return f"{self.name}: FAILED, nothing sent"
        moved = f", dates moved {self.shifted_days:+d} days" if self.shifted_days else ""
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"{self.name}: {count(self.sent, 'resource')}{moved} -> {self.status}, "
            f"{self.succeeded}/{self.sent} entries succeeded: {verdict}"
        )


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def read_files(paths: Iterable[Path]) -> Iterator[tuple[str, dict | LoadError]]:
    """(name, parsed JSON) per file; a directory stands for its ``*.json`` files (not recursive), sorted.
    A file that cannot be read comes back as its LoadError, so the other files still load."""
    for path in paths:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                content = parse_json(file.read_bytes(), where=file.name)
            except (OSError, JsonInputError) as exc:
                yield str(file), LoadError(f"cannot read it: {exc}")
                continue
            yield str(file), content if isinstance(content, dict) else LoadError("not a JSON object")


def resources_of(content: dict) -> list[tuple[dict, dict]]:
    """(resource, its source entry or {}) for every resource a file holds."""
    if not isinstance(content.get("resourceType"), str):
        raise LoadError("not a FHIR resource (no resourceType)")
    if content["resourceType"] != "Bundle" or content.get("type") not in _CONTAINERS:
        return [(content, {})]
    out = []
    for i, entry in enumerate(content.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None:
            continue  # a DELETE or GET entry: nothing to load
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise LoadError(f"entry[{i}].resource is not a FHIR resource")
        if (entry.get("search") or {}).get("mode") == "outcome":
            continue  # a searchset's warnings about the search, not content
        out.append((resource, entry))
    return out


def transaction_entry(resource: dict, source: dict) -> dict:
    """One entry of the transaction that stores `resource` (see the module docstring for the choice)."""
    rtype = resource["resourceType"]
    full_url = source.get("fullUrl")
    # Only a urn is a placeholder the server resolves; an absolute URL names another server's copy, and
    # a relative one is not a valid fullUrl (R4 Bundle.entry.fullUrl).
    full_url = (
        full_url if isinstance(full_url, str) and full_url.startswith(("urn:uuid:", "urn:oid:")) else None
    )
    if_none_exist = (source.get("request") or {}).get("ifNoneExist")
    if not resource.get("id") and full_url and full_url.startswith(_URN_UUID) and not if_none_exist:
        resource = {**resource, "id": full_url[len(_URN_UUID) :]}
    if if_none_exist or not resource.get("id"):
        request = {"method": "POST", "url": rtype}
        if if_none_exist:
            request["ifNoneExist"] = if_none_exist
    else:
        request = {"method": "PUT", "url": f"{rtype}/{resource['id']}"}
    entry = {"fullUrl": full_url} if full_url else {}
    return {**entry, "resource": resource, "request": request}


def as_transaction(content: dict) -> dict:
    """The transaction Bundle that stores every resource of a file's content (a copy: shifting its dates
    leaves `content` as it was)."""
    entries = [transaction_entry(r, e) for r, e in resources_of(copy.deepcopy(content))]
    if not entries:
        raise LoadError("no resources in it")
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def shift_to_yesterday(transaction: dict, today: date) -> int:
    """Move every date of the transaction's resources so the newest clinical one is yesterday, the way the
    sandbox moves its own sample charts; returns the days moved."""
    from .samples import days_to_yesterday, shift_dates

    resources = [e["resource"] for e in transaction["entry"]]
    days = days_to_yesterday(resources, today)
    shift_dates(resources, days)
    return days


def created_anew(transaction: dict) -> int:
    """Entries the server stores under an id of its own choosing: each load adds them again."""
    return sum(
        1 for e in transaction["entry"] if e["request"] == {"method": "POST", "url": e["request"]["url"]}
    )


def public_url(url: str) -> str:
    """`url` without user info or query, for printing (a credential in a URL must not reach a log)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def outcome_text(body: object) -> str:
    """What an OperationOutcome says (diagnostics, else details.text, else the code), one line."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    said = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
            if text:
                said.append(str(text))
    return clip("; ".join(said), 500)


class FhirLoader:
    """POSTs transaction Bundles to one FHIR server's base, with one session (kept-alive connection)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 300.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = (min(10.0, timeout), timeout)  # connect, read: a large transaction takes a while
        self.session = requests.Session()
        self.session.headers.update({"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def load(self, name: str, transaction: dict) -> LoadResult:
        result = LoadResult(name, sent=len(transaction["entry"]))
        try:
            # No redirects: requests would resend a POST as a GET (and drop the token for another host).
            response = self.session.post(
                self.base_url,
                data=json.dumps(transaction).encode(),
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            result.status = f"no answer within {self.timeout[1]:g} s"
            result.problems.append(result.status)
            return result
        except requests.RequestException as exc:
            result.status = f"not reached ({type(exc).__name__})"
            result.problems.append(f"{result.status}: {clip(str(exc), 300)}")
            return result
        result.status = f"{response.status_code} {response.reason or ''}".strip()
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.ok or response.is_redirect:
            said = outcome_text(body) or clip(response.text.strip(), 300) or "no body"
            where = f" (Location: {response.headers['Location']})" if response.is_redirect else ""
            result.problems.append(f"{result.status}{where}: {said}")
            return result
        self._read_entries(result, body, transaction["entry"])
        return result

    @staticmethod
    def _read_entries(result: LoadResult, body: object, sent: list[dict]) -> None:
        """Count the transaction-response's successful entries; name the failed ones."""
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            result.problems.append(f"the answer is not a Bundle: {clip(json.dumps(body), 200)}")
            return
        entries = body.get("entry") or []
        failed = []
        for i, entry in enumerate(entries):
            response = (entry or {}).get("response") or {}
            status = str(response.get("status", ""))
            if status.startswith("2"):
                result.succeeded += 1
            else:
                request = sent[i]["request"] if i < len(sent) else {}
                said = outcome_text(response.get("outcome"))
                failed.append(
                    f"entry[{i}] {request.get('method')} {request.get('url')}: {status or 'no status'}"
                    + (f": {said}" if said else "")
                )
        if len(entries) != result.sent:
            result.problems.append(f"the answer has {len(entries)} entries for {result.sent} sent")
        result.problems.extend(failed[:MAX_PROBLEMS])
        if len(failed) > MAX_PROBLEMS:
            result.problems.append(f"... and {len(failed) - MAX_PROBLEMS} more failed entries")
