"""The votes database: SQLite in WAL mode, one transaction per answer.

Schema (``SCHEMA``; `VoteStore` creates it):

``meta(key, value)``
    ``study_sha256``: the sha256 of the study folder's ``study.json`` the votes belong to (a
    database opened with another study is refused: a redrawn study would misread every vote);
    ``admin_token``; ``created_at``; ``schema``: its version.
``raters(id, token, created_at)``
    ``id`` is the rater's number: with the study's seed it fixes the rater's order of sets and
    images (`wig.user_study.design.rater_plan`). ``token``: the secret in the rater's link.
``consents(rater, consented_at, external_id)``
    A rater's agreement to the instructions/consent page, before their first set, and the id a
    recruiting platform gave them (Prolific's ``PROLIFIC_PID`` in the link), if any.
``answers(id, rater, set_id, question, choice, answered_at)``
    One row per rater × set × question (``UNIQUE``): a double click or a replayed request never
    counts twice. ``choice`` is an image id of the set or ``undecided``; which method an image
    shows is not in the database (the study folder says, `export`). ``answered_at``: UTC, ISO 8601.

``synchronous=FULL``: an answer the server acknowledged is on disk, whatever happens to the
process (or the machine) after.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from wig.user_study.design import UserStudyError

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS consents (
    rater INTEGER PRIMARY KEY REFERENCES raters(id),
    consented_at TEXT NOT NULL,
    external_id TEXT
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    rater INTEGER NOT NULL REFERENCES raters(id),
    set_id TEXT NOT NULL,
    question TEXT NOT NULL,
    choice TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    UNIQUE (rater, set_id, question)
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AnswerConflict(UserStudyError):
    """The question was answered before, differently: the first answer stands."""


class VoteStore:
    """The votes of one study (its ``study.json`` sha256). A connection per call: safe from any
    thread of the server."""

    def __init__(self, path: str | os.PathLike, study_sha256: str):
        self.path = Path(path)
        self.study_sha256 = study_sha256
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # writers of this process queue here rather than in SQLite's busy handler, which sleeps in
        # growing steps (p99 of an answer at 20 raters: 0.2 s → see benchmarks/user_study_load.py)
        self._write = threading.Lock()
        try:
            with self._connect() as db:
                self._refuse_foreign(db)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                db.execute("BEGIN IMMEDIATE")
                for key, value in (
                    ("study_sha256", study_sha256),
                    ("admin_token", secrets.token_hex(16)),
                    ("created_at", _now()),
                    ("schema", SCHEMA_VERSION),
                ):
                    db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
                db.execute("COMMIT")
                bound = dict(db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as err:
            raise UserStudyError(f"{self.path}: not a votes database ({err})") from None
        if bound["study_sha256"] != study_sha256:
            raise UserStudyError(
                f"{self.path} holds the votes of another study (study.json sha256 {bound['study_sha256'][:12]}…, "
                f"this one {study_sha256[:12]}…): give the study its own database"
            )
        self.admin_token = bound["admin_token"]

    def _refuse_foreign(self, db: sqlite3.Connection) -> None:
        """A database with tables is a votes database or is left alone: the schema is never
        written into another program's file (an empty file is a new database)."""
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return
        missing = sorted({"meta", "raters", "answers"} - tables)
        if missing:
            raise UserStudyError(f"{self.path}: not a votes database (no table {', '.join(missing)})")
        if db.execute("SELECT 1 FROM meta WHERE key = 'study_sha256'").fetchone() is None:
            raise UserStudyError(f"{self.path}: not a votes database (its meta table names no study_sha256)")

    @contextmanager
    def _connect(self):
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db

    def add_raters(self, n: int) -> list[tuple[int, str]]:
        """``n`` new raters: (number, token) each."""
        with self._write, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            made = []
            for _ in range(n):
                token = secrets.token_hex(16)
                cursor = db.execute("INSERT INTO raters (token, created_at) VALUES (?, ?)", (token, _now()))
                made.append((cursor.lastrowid, token))
            db.execute("COMMIT")
        return made

    def raters(self) -> list[tuple[int, str]]:
        with self._connect() as db:
            return list(db.execute("SELECT id, token FROM raters ORDER BY id"))

    def rater_of(self, token: str) -> int | None:
        with self._connect() as db:
            row = db.execute("SELECT id FROM raters WHERE token = ?", (token,)).fetchone()
        return None if row is None else row[0]

    def answers_of(self, rater: int) -> dict[tuple[str, str], str]:
        """{(set id, question): choice} of one rater."""
        with self._connect() as db:
            rows = db.execute("SELECT set_id, question, choice FROM answers WHERE rater = ?", (rater,))
            return {(s, q): c for s, q, c in rows}

    def record(self, rater: int, set_id: str, question: str, choice: str) -> bool:
        """Store one answer in its own transaction; True if it is new, False if the same answer
        was stored before (a replay). A different earlier answer raises `AnswerConflict`."""
        with self._write, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "INSERT INTO answers (rater, set_id, question, choice, answered_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (rater, set_id, question) DO NOTHING",
                    (rater, set_id, question, choice, _now()),
                )
                if cursor.rowcount == 1:
                    db.execute("COMMIT")
                    return True
                (before,) = db.execute(
                    "SELECT choice FROM answers WHERE rater = ? AND set_id = ? AND question = ?",
                    (rater, set_id, question),
                ).fetchone()
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
        if before != choice:
            raise AnswerConflict("this question of this set was answered before; the first answer stands")
        return False

    def consent(self, rater: int, external_id: str | None = None) -> None:
        """Record the rater's consent (once: a second call keeps the first, id included)."""
        with self._write, self._connect() as db:
            db.execute(
                "INSERT INTO consents (rater, consented_at, external_id) VALUES (?, ?, ?) "
                "ON CONFLICT (rater) DO NOTHING",
                (rater, _now(), external_id),
            )

    def consented(self, rater: int) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM consents WHERE rater = ?", (rater,)).fetchone() is not None

    def external_ids(self) -> dict[int, str | None]:
        """{rater: the platform's id} of the raters who consented."""
        with self._connect() as db:
            return dict(db.execute("SELECT rater, external_id FROM consents"))

    def progress(self) -> dict[int, int]:
        """{rater: answers stored}."""
        with self._connect() as db:
            counts = dict(db.execute("SELECT rater, COUNT(*) FROM answers GROUP BY rater"))
            return {r: counts.get(r, 0) for (r,) in db.execute("SELECT id FROM raters ORDER BY id")}

    def rows(self) -> list[tuple]:
        """Every answer: (rater, set_id, question, choice, answered_at), in the order stored."""
        with self._connect() as db:
            return list(db.execute("SELECT rater, set_id, question, choice, answered_at FROM answers ORDER BY id"))


def read_store(path: str | os.PathLike) -> tuple[str, list[tuple], list[int]]:
    """A votes database read without writing to it: (its study's sha256, `VoteStore.rows`, the
    raters' numbers)."""
    path = Path(path)
    if not path.is_file():
        raise UserStudyError(f"{path}: no votes database there")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            rows = list(db.execute("SELECT rater, set_id, question, choice, answered_at FROM answers ORDER BY id"))
            raters = [r for (r,) in db.execute("SELECT id FROM raters ORDER BY id")]
    except sqlite3.DatabaseError as err:
        raise UserStudyError(f"{path}: not a votes database ({err})") from None
    if "study_sha256" not in meta:
        raise UserStudyError(f"{path}: not a votes database (its meta table names no study_sha256)")
    return meta["study_sha256"], rows, raters
