"""The user study's web app (`wig serve-study`): Flask, served by waitress.

Routes (every error is a 4xx with one plain-text line, and writes nothing):

- ``GET /r/<token>``: the rating page; its script asks for the rater's state and posts answers.
- ``GET /api/<token>/state``: before consent, the instructions/consent page's text; then the
  rater's current set (the first of their plan not fully answered): prompt, reference and
  candidate image URLs in the rater's order, the questions, what of it is answered, progress; at
  the end, the completion code and return URL if the study has them. Resuming after a reload or a
  server crash is asking again.
- ``POST /api/<token>/consent`` ``{"external_id"}``: the rater agreed (once); ``external_id`` is
  the id a recruiting platform put in the link (``?PROLIFIC_PID=…``) or null.
- ``POST /api/<token>/answer`` ``{"set", "question", "choice"}``: one answer, one transaction;
  the reply is the new state (the next set once both questions are answered). ``choice`` is an
  image id of the set or ``undecided``; a replay of a stored answer changes nothing.
- ``GET /img/<id>``: an image by its opaque id.
- ``GET /admin/<admin token>``: per rater progress, platform id, attention checks and the
  exclusion rule's verdict so far, their links; ``POST /admin/<admin token>/raters`` adds raters
  (same-origin posts only); ``GET /admin/<admin token>/votes.csv`` exports the votes, resolved.

Blind by construction: the browser receives opaque ids, the prompt and pixels; the method of an
image, the study's paths and file names stay on the server (`wig.user_study.design`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from functools import lru_cache
from pathlib import Path

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_file
from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from werkzeug.exceptions import HTTPException

from wig.user_study.design import UNDECIDED, UserStudy, UserStudyError
from wig.user_study.votes import AnswerConflict, VoteStore

WEB = Path(__file__).with_name("web")
MAX_BODY = 1024  # an answer is ~100 bytes of JSON
# past this waitress refuses a body before the app runs, by its length before reading it: a huge
# upload is never buffered (between the two, Flask refuses by MAX_BODY)
SERVER_MAX_BODY = 64 * MAX_BODY
ANSWER_KEYS = {"set", "question", "choice"}
EXTERNAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a recruiting platform's participant id (Prolific's: 24 hex)


def one_line(text: str) -> bytes:
    """Every refusal's body, the app's and waitress's: ``error: <text>`` on one line."""
    return f"error: {' '.join(text.split())}\n".encode()


class OneLineErrorTask(ErrorTask):
    """waitress's own refusals (a body over ``max_request_body_size``, a malformed request, headers
    too large: answered before the app runs) as `one_line`, not waitress's three-part page."""

    def execute(self):
        error = self.request.error
        body = one_line(f"{error.reason}: {error.body}")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "text/plain; charset=utf-8"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class OneLineChannel(HTTPChannel):
    error_task_class = OneLineErrorTask


def default_db(study_dir: str | os.PathLike) -> Path:
    """Where a study's votes go unless told: beside its folder (never inside it, which the
    workflow rewrites when the study is redrawn)."""
    folder = Path(study_dir).resolve()
    return folder.parent / f"{folder.name}.votes.sqlite"


def create_app(
    study_dir: str | os.PathLike, db: str | os.PathLike | None = None, public_url: str | None = None
) -> Flask:
    """The app over ``study_dir``'s study and its votes database. ``public_url``: where raters reach
    the server (``https://study.example.org`` behind a proxy): the admin page's links, and the only
    origin besides the request's own its form accepts posts from."""
    study = UserStudy.load(study_dir)
    public_url = public_url.rstrip("/") if public_url else None
    store = VoteStore(db or default_db(study_dir), study.sha256)
    app = Flask(__name__, template_folder=str(WEB), static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["wig_study"] = study
    app.extensions["wig_votes"] = store

    @lru_cache(maxsize=4096)
    def plan(rater: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple((s, tuple(images)) for s, images in study.plan(rater))

    def rater_of(token: str) -> int:
        rater = store.rater_of(token) if len(token) <= 64 else None
        if rater is None:
            abort(404, "unknown rater token")
        return rater

    agreed: set[int] = set()  # raters known to have consented (never revoked: no query per answer once seen)

    def consented(rater: int) -> bool:
        if rater not in agreed and store.consented(rater):
            agreed.add(rater)
        return rater in agreed

    def state(rater: int, answers: dict | None = None) -> dict:
        order = plan(rater)
        if not consented(rater):
            return {"done": False, "consent": True, "instructions": study.instructions, "index": 0, "total": len(order)}
        answers = store.answers_of(rater) if answers is None else answers
        for index, (set_id, images) in enumerate(order):
            answered = {q: answers[(set_id, q)] for q in study.questions if (set_id, q) in answers}
            if len(answered) < len(study.questions):
                s = study.sets[set_id]
                return {
                    "done": False,
                    "index": index + 1,
                    "total": len(order),
                    "set": set_id,
                    "prompt": s["prompt"],
                    "references": [f"/img/{i}" for i in s["references"]],
                    "images": [{"id": i, "src": f"/img/{i}"} for i in images],
                    "questions": [{"key": k, "text": t} for k, t in study.questions.items()],
                    "undecided": UNDECIDED,
                    "answered": answered,
                }
        return {"done": True, "index": len(order), "total": len(order), "completion": study.completion}

    @app.errorhandler(HTTPException)
    def refused(err: HTTPException):
        return Response(one_line(str(err.description or err.name)), status=err.code, mimetype="text/plain")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the page's URL
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self'; style-src 'self'"
        if request.path.startswith(("/api/", "/admin/", "/r/")):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/r/<token>")
    def page(token: str):
        rater_of(token)
        return render_template("rate.html")

    @app.get("/static/<name>")
    def static_file(name: str):
        if name not in ("rate.js", "study.css"):
            abort(404, "no such file")
        return send_file(WEB / name, max_age=3600)

    @app.get("/api/<token>/state")
    def get_state(token: str):
        return jsonify(state(rater_of(token)))

    @app.post("/api/<token>/consent")
    def consent(token: str):
        rater = rater_of(token)
        body = request.get_json(silent=True)
        external = body.get("external_id") if isinstance(body, dict) and set(body) == {"external_id"} else False
        if external is False or not (
            external is None or (isinstance(external, str) and EXTERNAL_ID.fullmatch(external))
        ):
            abort(400, 'the body must be {"external_id": null or up to 64 letters, digits, _ or -}')
        store.consent(rater, external)
        return jsonify(state(rater))

    @app.post("/api/<token>/answer")
    def answer(token: str):
        rater = rater_of(token)
        if not consented(rater):
            abort(409, "agree to the instructions first")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or set(body) != ANSWER_KEYS or not all(isinstance(v, str) for v in body.values()):
            abort(400, 'the body must be a JSON object {"set", "question", "choice"} of strings')
        order = dict(plan(rater))
        if body["set"] not in order:
            abort(404, "no such set")
        if body["question"] not in study.questions:
            abort(400, f"question must be one of {', '.join(study.questions)}")
        if body["choice"] != UNDECIDED and body["choice"] not in order[body["set"]]:
            abort(400, "choice must be an image id of this set or undecided")
        answers = store.answers_of(rater)
        if (body["set"], body["question"]) not in answers and body["set"] != state(rater, answers).get("set"):
            abort(409, "answer the sets in order: this is not the current set")
        try:
            store.record(rater, body["set"], body["question"], body["choice"])
        except AnswerConflict as err:
            abort(409, str(err))
        answers.setdefault((body["set"], body["question"]), body["choice"])
        return jsonify(state(rater, answers))

    @app.get("/img/<image_id>")
    def image(image_id: str):
        path = study.image_files.get(image_id)
        if path is None:
            abort(404, "no such image")
        # the bytes alone: no Last-Modified or ETag (the file's metadata), no Content-Disposition
        # (a file name); private, so no shared cache links one rater's ids to another's
        response = Response(path.read_bytes(), mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    def admin_check(token: str) -> None:
        if not secrets.compare_digest(token.encode(), store.admin_token.encode()):
            abort(404, "unknown admin token")

    def base_url() -> str:
        return public_url or request.host_url.rstrip("/")

    def same_origin() -> None:
        """A form post from this server's own page (or the public URL's): a page elsewhere that
        knows the admin link cannot add raters through the admin's browser."""
        origin = request.headers.get("Origin") or request.headers.get("Referer", "")
        allowed = {request.host_url.rstrip("/"), *([public_url] if public_url else [])}
        if not any(origin == a or origin.startswith(a + "/") for a in allowed):
            abort(403, "cross-origin post refused: use the admin page's own form")

    @app.get("/admin/<token>")
    def admin(token: str):
        from wig.user_study.analysis import rater_table, vote_frame

        admin_check(token)
        done = store.progress()
        total = 2 * len(study.sets)
        external = store.external_ids()
        checks = rater_table(vote_frame(study, store.rows()), study, list(done)).rows_by_key("rater", named=True)
        rows = []
        for r, t in store.raters():
            check = checks[r][0]
            rows.append(
                {
                    "rater": r,
                    "link": f"{base_url()}/r/{t}",
                    "answers": done.get(r, 0),
                    "total": total,
                    "external": external.get(r) or "",
                    "consented": r in external,
                    "alike": f"{check['agreed']}/{check['checks']}" if check["checks"] else "–",
                    "verdict": check["reason"] or "kept",
                }
            )
        return render_template("admin.html", rows=rows, token=token, sets=len(study.sets))

    @app.get("/admin/<token>/votes.csv")
    def export(token: str):
        import polars as pl

        from wig.user_study.analysis import vote_frame

        admin_check(token)
        frame = vote_frame(study, store.rows())
        external = store.external_ids()
        frame = frame.with_columns(external_id=pl.Series([external.get(r) for r in frame["rater"]], dtype=pl.String))
        response = Response(frame.write_csv(), mimetype="text/csv")
        response.headers["Content-Disposition"] = "attachment; filename=votes.csv"
        return response

    @app.post("/admin/<token>/raters")
    def add_raters(token: str):
        admin_check(token)
        same_origin()
        try:
            n = int(request.form.get("n", "1"))
        except ValueError:
            n = 0
        if not 1 <= n <= 100:
            abort(400, "n must be an integer in [1, 100]")
        store.add_raters(n)
        return redirect(f"/admin/{token}", code=303)

    @app.route("/", defaults={"rest": ""})
    @app.route("/<path:rest>")
    def nothing(rest: str):
        abort(404, "nothing here: open your rater link")

    return app


def serve_study(
    study_dir: str | os.PathLike,
    db: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    raters: int = 0,
    threads: int = 8,
    public_url: str | None = None,
) -> None:
    """Serve the study until interrupted; print the admin link and every rater's link once the
    socket listens (``port`` 0: a free one), under ``public_url`` where raters reach it (behind a
    proxy). ``raters``: make sure at least that many exist."""
    # waitress warns at every request queued behind busy threads: noise at a study's peak, not news
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    if public_url is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", public_url):
        raise UserStudyError(
            f"--public-url {public_url!r}: give the address raters open, e.g. https://study.example.org"
        )
    app = create_app(study_dir, db, public_url)
    store: VoteStore = app.extensions["wig_votes"]
    missing = raters - len(store.raters())
    if missing > 0:
        store.add_raters(missing)
    server = create_server(app, host=host, port=port, threads=threads, max_request_body_size=SERVER_MAX_BODY)
    server.channel_class = OneLineChannel
    base = public_url.rstrip("/") if public_url else f"http://{host}:{server.effective_port}"
    print(f"wig serve-study: {len(app.extensions['wig_study'].sets)} sets, votes in {store.path}", flush=True)
    if public_url is None and host in ("0.0.0.0", "::", ""):
        print(
            f"note: listening on all addresses ({host}) without --public-url: the links below name {host}, which "
            "no rater can open; pass --public-url with the address raters use (your proxy's https://…)",
            flush=True,
        )
    print(f"admin: {base}/admin/{store.admin_token}", flush=True)
    for number, token in store.raters():
        print(f"rater {number}: {base}/r/{token}", flush=True)
    print(f"serving on {base}", flush=True)
    server.run()
