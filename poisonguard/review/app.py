"""``poisonguard review serve``: the review queue and each batch's quarantined rows in a browser.

A small Starlette app (Starlette comes with Prefect) over the same files and functions the CLI uses: the
batches and their counts from :mod:`poisonguard.review.batches`, rows filtered by
:mod:`poisonguard.review.filters`, decisions through :func:`poisonguard.review.decisions.decide`, which
writes the audit log, the released files and the status file.

Who may decide:

* the server binds to 127.0.0.1 unless told otherwise, and answers only requests for the host it serves;
* a reviewer logs in with a token printed when the server starts (one per reviewer); the session cookie
  is ``HttpOnly`` and ``SameSite=Strict``;
* every form carries the session's CSRF token, compared in constant time;
* with a reviewers file, each reviewer's private key signs their decisions, and the file is read again
  at every decision: a reviewer removed from it, or whose key was revoked, can no longer decide;
* pages hold no script at all (``Content-Security-Policy: default-src 'none'``), and every value from the
  data is escaped by Jinja2's autoescaping.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import numpy as np
import pandas as pd
from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from poisonguard import EXPLANATION, PVALUE_PREFIX, REASONS, ROW_ID, SCORE_PREFIX, STATUS, __version__
from poisonguard.decide.explain import detector_p_thresholds
from poisonguard.errors import ConfigError, InputError
from poisonguard.report.html import report_html_path
from poisonguard.review.audit import CONFIRM, DONE, RELEASE, UNDO, AuditLog
from poisonguard.review.batches import (
    batch_overview,
    batch_reports,
    find_batch,
    label_column,
    quarantined_rows,
    row_decisions,
    with_review_status,
)
from poisonguard.review.decisions import decide, refresh_outputs
from poisonguard.review.filters import KEYS, RowFilter, evidence_order
from poisonguard.review.reviewers import Signer, load_reviewers, signer_for
from poisonguard.write.outputs import OutputPaths

PAGE_ROWS = 50
SESSION_COOKIE = "poisonguard_review"
SESSION_SECONDS = 12 * 3600
ACTIONS = (RELEASE, CONFIRM, UNDO)
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class ReviewerLogin:
    """A reviewer the server lets decide: their name, and their key when decisions are signed."""

    name: str
    key_path: Path | None = None


@dataclass
class _Session:
    reviewer: ReviewerLogin
    csrf: str
    expires: float
    notice: str = ""


@dataclass
class ReviewServer:
    """The app's state: where the outputs are, who may log in (``tokens``) and the open sessions."""

    out_dir: Path
    reviewers_path: Path | None
    tokens: dict[str, ReviewerLogin]
    sessions: dict[str, _Session] = field(default_factory=dict)
    _rows: dict[Path, tuple[float, pd.DataFrame]] = field(default_factory=dict)

    def signer(self, login: ReviewerLogin) -> Signer | None:
        """The reviewer's signer, read against the reviewers file as it is now; :class:`ConfigError` when
        the file no longer names the key (removed or revoked)."""
        if login.key_path is None or self.reviewers_path is None:
            return None
        return signer_for(login.key_path, load_reviewers(self.reviewers_path), self.reviewers_path)

    def rows(self, batch) -> pd.DataFrame:
        """The batch's quarantined rows, read once per version of its file (it is never rewritten by review)."""
        path = batch.paths.quarantine
        stamp = path.stat().st_mtime if path.exists() else 0.0
        cached = self._rows.get(path)
        if cached is None or cached[0] != stamp:
            self._rows[path] = (stamp, quarantined_rows(batch))
        return self._rows[path][1]


def login_tokens(reviewers_path: Path | None, keys: list[Path], reviewer: str | None) -> dict[str, ReviewerLogin]:
    """One fresh login token per reviewer: each key's owner in the reviewers file (refusing a key the file
    does not name), or, without a reviewers file, the one reviewer ``reviewer`` (unsigned decisions)."""
    if reviewers_path is not None:
        if not keys:
            raise InputError("--reviewers needs at least one --key: the private key of a reviewer who decides here")
        known = load_reviewers(reviewers_path)
        logins = [ReviewerLogin(signer_for(key, known, reviewers_path).reviewer, key) for key in keys]
    else:
        if keys:
            raise InputError("give --reviewers with --key: the reviewers file names each key's owner")
        if not reviewer:
            raise InputError("give --reviewer NAME, or --reviewers FILE with --key for signed decisions")
        logins = [ReviewerLogin(reviewer)]
    return {secrets.token_urlsafe(24): login for login in logins}


def create_app(out_dir: Path, tokens: dict[str, ReviewerLogin], reviewers_path: Path | None = None,
               hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Starlette:
    """The review app over ``out_dir`` (a scan output directory); ``tokens`` from :func:`login_tokens`;
    ``hosts``: the host names requests may address (the served host)."""
    server = ReviewServer(Path(out_dir), reviewers_path, dict(tokens))
    templates = Environment(
        loader=ChoiceLoader([PackageLoader("poisonguard.review", "templates"),
                             PackageLoader("poisonguard.report", "templates")]),
        autoescape=select_autoescape(["html", "j2"], default=True), trim_blocks=True, lstrip_blocks=True,
    )

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(version=__version__, **context)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def session_of(request: Request) -> _Session | None:
        session = server.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is None or session.expires < time.time():
            return None
        return session

    async def login(request: Request) -> Response:
        token = request.query_params.get("token")
        if request.method == "POST":
            token = (await _form(request)).get("token", [""])[0]
        if token is None:
            return page("login.html.j2")
        login_as = next((who for known, who in server.tokens.items() if hmac.compare_digest(known, token)), None)
        if login_as is None:
            return page("login.html.j2", status=403, error="That token is not valid for this server.")
        session_id = secrets.token_urlsafe(32)
        server.sessions[session_id] = _Session(login_as, secrets.token_urlsafe(32), time.time() + SESSION_SECONDS)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, max_age=SESSION_SECONDS, httponly=True, samesite="strict")
        return response

    async def queue(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        datasets = sorted({report["dataset"] for report in batch_reports(server.out_dir)})
        batches = {dataset: batch_overview(server.out_dir, dataset) for dataset in datasets}
        return page("queue.html.j2", reviewer=session.reviewer.name, batches=batches, csrf=session.csrf)

    async def batch_page(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        found = _batch(server, request)
        view = _batch_view(server, found, _filter_of(request.query_params), request.query_params)
        notice, session.notice = session.notice, ""
        return page("batch.html.j2", reviewer=session.reviewer.name, csrf=session.csrf, batch=found,
                    notice=notice, actions=ACTIONS, drift=(found.report.get("batch_drift") or {}).get("message"),
                    **view)

    async def decide_rows(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return PlainTextResponse("log in first", status_code=401)
        form = await _form(request)
        if not hmac.compare_digest(form.get("csrf", [""])[0], session.csrf):
            return PlainTextResponse("the form's CSRF token does not match this session; reload the page",
                                     status_code=403)
        found = _batch(server, request)
        # The decision's reason has a name of its own: "reason" is a filter key (a reason code).
        action, reason = form.get("action", [""])[0], form.get("decision_reason", [""])[0]
        back = f"/batch/{found.dataset}/{found.batch_id}"
        try:
            if action not in ACTIONS:
                raise InputError(f"unknown action {action!r}")
            row_filter = _filter_of({k: v[0] for k, v in form.items()})
            back += "?" + _query(row_filter, {})
            if form.get("scope", [""])[0] == "matching":
                row_ids, where = None, row_filter
            else:
                row_ids = [int(value) for value in form.get("row", [])]
                if not row_ids:
                    raise InputError("select rows, or choose 'every row matching the filter'")
                where = None
            signer = server.signer(session.reviewer)
            decision = decide(server.out_dir, found.batch_id, action, row_ids=row_ids, where=where, reason=reason,
                              reviewer=session.reviewer.name, dataset=found.dataset, signer=signer,
                              reviewers=load_reviewers(server.reviewers_path) if server.reviewers_path else None)
        except (InputError, ConfigError, ValueError) as error:
            session.notice = f"Not decided: {error}"
            return RedirectResponse(back, status_code=303)
        warnings = refresh_outputs(server.out_dir, decision)
        session.notice = (f"{len(decision.row_ids):,} row(s) {DONE[action]} by {decision.entry['reviewer']} "
                          f"(audit seq {decision.entry['seq']}). " + " ".join(warnings))
        return RedirectResponse(back, status_code=303)

    async def report(request: Request) -> Response:
        if session_of(request) is None:
            return RedirectResponse("/login", status_code=303)
        found = _batch(server, request)
        path = report_html_path(server.out_dir, found.dataset, found.batch_id)
        if not path.exists():
            return PlainTextResponse("this batch has no HTML report", status_code=404)
        return FileResponse(path, headers=_SECURITY_HEADERS)

    async def logout(request: Request) -> Response:
        session = session_of(request)
        form = await _form(request)
        if session is not None and hmac.compare_digest(form.get("csrf", [""])[0], session.csrf):
            server.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        return RedirectResponse("/login", status_code=303)

    routes = [
        Route("/", queue),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/batch/{dataset}/{batch_id}", batch_page),
        Route("/batch/{dataset}/{batch_id}/decide", decide_rows, methods=["POST"]),
        Route("/report/{dataset}/{batch_id}", report),
    ]
    async def refused(request: Request, error: Exception) -> Response:
        # A hand-made URL (a dataset name that could leave the output area, no such batch) or a bad filter
        # is the visitor's mistake: 400 with the reason, for any route.
        session = session_of(request)
        return page("error.html.j2", status=400, error=str(error), reviewer=session.reviewer.name if session else "")

    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))],
                    exception_handlers={InputError: refused})
    app.state.server = server
    return app


async def _form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (all the pages send; no file uploads, so the standard
    library's parser is all it takes and Starlette needs no ``python-multipart``)."""
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


def _batch(server: ReviewServer, request: Request):
    dataset, batch_id = request.path_params["dataset"], request.path_params["batch_id"]
    try:
        OutputPaths.for_batch(server.out_dir, dataset, batch_id)  # refuses names that could leave the output area
    except (ValueError, ConfigError) as error:
        raise InputError(str(error)) from None
    return find_batch(server.out_dir, batch_id, dataset)


def _filter_of(params) -> RowFilter:
    fields = {key: params.get(key) or None for key in KEYS}
    column, value = params.get("column") or "", params.get("value") or ""
    return RowFilter(**fields, columns=((column, value),) if column else ())


def _query(row_filter: RowFilter, extra: dict[str, Any]) -> str:
    params = {key: getattr(row_filter, key) for key in KEYS if getattr(row_filter, key)}
    if row_filter.columns:
        params["column"], params["value"] = row_filter.columns[0]
    return urlencode({**params, **{k: v for k, v in extra.items() if v not in (None, "")}})


def _batch_view(server: ReviewServer, found, row_filter: RowFilter, params) -> dict[str, Any]:
    """The rows the page shows (filtered, sorted, one page) and what the filter form offers."""
    label = label_column(found.report)
    rows = with_review_status(server.rows(found),
                              row_decisions(AuditLog(server.out_dir).entries(), found.dataset, found.batch_id))
    matched = rows[row_filter.mask(rows, label)]
    sort = params.get("sort") or "evidence"
    if sort == "evidence":
        ordered = matched.iloc[evidence_order(matched)]
    elif sort in matched.columns:
        ordered = matched.sort_values(sort, ascending=params.get("order") != "desc", kind="stable")
    else:
        raise InputError(f"sort={sort!r}: no such column")
    pages = max(1, -(-len(ordered) // PAGE_ROWS))
    number = min(max(_int(params.get("page"), 1), 1), pages)
    shown = ordered.iloc[(number - 1) * PAGE_ROWS: number * PAGE_ROWS]
    data_columns = [c for c in rows.columns if not c.startswith("_") and c != label]
    p_columns = [c for c in rows.columns if c.startswith(PVALUE_PREFIX)]
    score_columns = [c for c in rows.columns if c.startswith(SCORE_PREFIX)]
    predicted = [c for c in rows.columns if c.startswith("_predicted_")]
    return {
        "label": label,
        "rows": [_row_view(record, label, data_columns, p_columns, score_columns, predicted)
                 for record in shown.to_dict("records")],
        "data_columns": data_columns,
        "matched": len(matched),
        "total": len(rows),
        "counts": rows[STATUS].value_counts().to_dict(),
        "page": number,
        "pages": pages,
        "filter": row_filter,
        "sort": sort,
        "order": params.get("order") or "asc",
        "query": _query(row_filter, {"sort": params.get("sort"), "order": params.get("order")}),
        "reasons": sorted(found.report.get("reasons") or {}),
        "detectors": sorted(found.report.get("detectors") or {}),
        "thresholds": detector_p_thresholds(found.report.get("calibration") or {}, found.report.get("detectors") or {}),
        "sortable": ["evidence", ROW_ID, *([label] if label else []), *score_columns, *p_columns, *data_columns],
    }


def _row_view(record: dict[str, Any], label: str | None, data_columns: list[str], p_columns: list[str],
              score_columns: list[str], predicted: list[str]) -> dict[str, Any]:
    return {
        "id": int(record[ROW_ID]),
        "status": record[STATUS],
        "label": _text(record.get(label)) if label else "",
        "predicted": ", ".join(_text(record[c]) for c in predicted if _text(record[c])),
        "reasons": list(record[REASONS]) if record.get(REASONS) is not None else [],
        "why": _text(record.get(EXPLANATION)),
        "evidence": [(c[len(PVALUE_PREFIX):], _text(record[c])) for c in p_columns if _text(record[c])]
                    or [(c[len(SCORE_PREFIX):], _text(record[c])) for c in score_columns if _text(record[c])],
        "cells": [_text(record[c]) for c in data_columns],
        "reviewer": _text(record.get("_reviewer")),
        "review_reason": _text(record.get("_review_reason")),
    }


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default
