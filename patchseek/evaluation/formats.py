"""Query and judgment files in the formats people already have.

Queries: ``qid<TAB>text`` lines (TSV, as in MS MARCO / BEIR's ``queries.tsv``) or BEIR JSONL
(``{"_id": "q1", "text": "..."}`` per line). Judgments: TREC qrels, ``qid 0 item relevance`` per line
(white space separated; BEIR's ``qrels/*.tsv`` with its ``query-id corpus-id score`` header is read
too). A judged *item* is a document name (``report.pdf``), a PDF page (``report.pdf#3``, 1-based as in
search hits), a time in a video (``talk.mp4@12.5``, seconds) or a unit id (``1234``); which one is
decided against the collection's document names (``JudgedItem`` here, resolved by the service).

Nothing here touches the database: it parses text and reports errors as ``InvalidInputError``s that
say which line is wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Literal

from patchseek.errors import InvalidInputError

ItemKind = Literal["document", "page", "time", "unit"]
_PAGE = re.compile(r"^(?P<name>.+)#(?P<page>[0-9]+)$")
_TIME = re.compile(r"^(?P<name>.+)@(?P<seconds>[0-9]+(?:\.[0-9]*)?)$")


class EvaluationInputError(InvalidInputError):
    """A queries or qrels file that cannot be read, or judgments that name nothing in the collection."""

    code, status_code = "invalid_evaluation_input", 422


class UnknownItemError(EvaluationInputError):
    """A judged document, page, time or unit that the collection does not hold."""

    code, status_code = "unknown_judged_item", 422


@dataclass(frozen=True)
class JudgedItem:
    """One judged item as written in a qrels file: ``kind`` and the document ``name`` it is in (None for
    a unit id), the 1-based ``page``, the video time ``seconds`` or the ``unit_id``."""

    text: str
    kind: ItemKind
    name: str | None = None
    page: int | None = None
    seconds: float | None = None
    unit_id: int | None = None


def read_queries(text: str, *, max_queries: int) -> dict[str, str]:
    """``{qid: query text}`` from TSV (``qid<TAB>text``) or BEIR JSONL (``_id`` and ``text``).

    The format is told by the first non-blank line (``{`` starts JSONL). Blank lines are skipped; a
    TSV header ``query-id<TAB>text`` / ``qid<TAB>query`` is skipped. A repeated qid, an empty text or
    more than ``max_queries`` queries is an error naming the line.
    """
    lines = [(n, line.strip("\r")) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise EvaluationInputError("the queries file is empty; give qid<TAB>text lines or BEIR JSONL")
    jsonl = lines[0][1].lstrip().startswith("{")
    out: dict[str, str] = {}
    for n, line in lines:
        if jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationInputError(f"queries line {n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("_id", row.get("id")), str | int):
                raise EvaluationInputError(f'queries line {n}: expected {{"_id": ..., "text": ...}}')
            qid, query = str(row.get("_id", row.get("id"))), row.get("text")
            if not isinstance(query, str):
                raise EvaluationInputError(f'queries line {n}: "text" must be a string')
        else:
            qid, sep, query = line.partition("\t")
            if not sep:
                raise EvaluationInputError(f"queries line {n}: expected qid<TAB>text")
            if n == lines[0][0] and qid.strip().lower() in ("qid", "query-id", "query_id", "_id", "id"):
                continue  # a header
        qid, query = qid.strip(), query.strip()
        if not qid or not query:
            raise EvaluationInputError(f"queries line {n}: the query id and the text must not be empty")
        if qid in out:
            raise EvaluationInputError(f"queries line {n}: query id {qid!r} appears twice")
        out[qid] = query
        if len(out) > max_queries:
            raise EvaluationInputError(
                f"more than {max_queries} queries (PATCHSEEK_EVAL_MAX_QUERIES); evaluate a sample"
            )
    return out


def read_qrels(text: str) -> dict[str, dict[str, int]]:
    """``{qid: {item: relevance}}`` from TREC qrels (``qid 0 item rel``) or BEIR qrels TSV
    (``qid<TAB>item<TAB>rel``, with or without its ``query-id corpus-id score`` header).

    Relevance is an integer (0 = judged not relevant). A line with another shape, a non-integer
    relevance or an item judged twice for one query is an error naming the line.
    """
    out: dict[str, dict[str, int]] = {}
    first = True
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if first and len(parts) == 3 and parts[0].lower() in ("query-id", "qid", "query_id"):
            first = False
            continue  # BEIR header
        first = False
        if len(parts) == 4:
            qid, _, item, rel = parts
        elif len(parts) == 3:
            qid, item, rel = parts
        else:
            raise EvaluationInputError(
                f"qrels line {n}: expected 'qid 0 item relevance' (TREC) or 'qid<TAB>item<TAB>relevance', "
                f"got {len(parts)} fields"
            )
        try:
            relevance = int(rel)
        except ValueError:
            raise EvaluationInputError(f"qrels line {n}: relevance {rel!r} is not an integer") from None
        if not qid or not item:
            raise EvaluationInputError(f"qrels line {n}: empty query id or item")
        judged = out.setdefault(qid, {})
        if item in judged:
            raise EvaluationInputError(f"qrels line {n}: {item!r} is judged twice for query {qid!r}")
        judged[item] = relevance
    if not out:
        raise EvaluationInputError("the qrels file has no judgments; give 'qid 0 item relevance' lines")
    return out


def parse_item(text: str, names: set[str]) -> JudgedItem:
    """What a judged item refers to, given the collection's document ``names``.

    A name of the collection wins (a file may be called ``a#1.pdf``); then ``name#page``, then
    ``name@seconds``, then a bare integer is a unit id. Anything else names no document:
    ``UnknownItemError``.
    """
    if text in names:
        return JudgedItem(text, "document", name=text)
    m = _PAGE.match(text)
    if m and m["name"] in names:
        page = int(m["page"])
        if page < 1:
            raise UnknownItemError(f"judged item {text!r}: pages are numbered from 1")
        return JudgedItem(text, "page", name=m["name"], page=page)
    m = _TIME.match(text)
    if m and m["name"] in names:
        seconds = float(m["seconds"])
        if not math.isfinite(seconds):
            raise UnknownItemError(f"judged item {text!r}: not a time in seconds")
        return JudgedItem(text, "time", name=m["name"], seconds=seconds)
    if text.isdigit() and len(text) <= 10:
        return JudgedItem(text, "unit", unit_id=int(text))
    raise UnknownItemError(
        f"judged item {text!r} names no document of the collection; use a document name, name#page, "
        "name@seconds or a unit id"
    )
