"""The user study's server under load: `wig serve-study` in its own process, raters simulated on
loopback — the time to the first page, and "answer + next set" requests per second with p50/p99
latency at a given concurrency.

    python benchmarks/user_study_load.py results/demo/user_study/sets [--raters 200] [--concurrency 20]

STUDY_DIR is rule user_study's folder (`make demo` draws the demo's). Each rater first agrees on
the consent page (one request, not timed with the answers). The votes go to a fresh
database in a temporary folder; each of ``--concurrency`` workers takes raters from the pool and
answers all their sets (the "next set" comes back with the answer that finishes a set).
"""

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def start(study: Path, db: Path, raters: int, threads: int):
    """The server process, the time until it printed that it listens, its address and rater tokens."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wig.cli", "serve-study", str(study), "--db", str(db), "--port", "0"]
        + ["--raters", str(raters), "--threads", str(threads)],
        stdout=subprocess.PIPE,
        text=True,
    )
    tokens = []
    for line in proc.stdout:
        if m := re.match(r"rater \d+: http://([^/]+)/r/(\w+)", line):
            host, token = m[1], m[2]
            tokens.append(token)
        if line.startswith("serving on"):
            return proc, time.perf_counter() - t0, host, tokens, t0
    raise SystemExit("serve-study exited before serving")


def request(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {payload!r}")
    return payload


def begin(conn: http.client.HTTPConnection, token: str) -> dict:
    """A rater's first state: the consent page agreed to (where the server asks), then their first set."""
    state = json.loads(request(conn, "GET", f"/api/{token}/state"))
    if state.get("consent"):
        state = json.loads(request(conn, "POST", f"/api/{token}/consent", {"external_id": None}))
    return state


def rate(host: str, token: str, seed: int, latencies: list, lock: threading.Lock) -> int:
    """Answer every set of one rater on one keep-alive connection; the answers' latencies."""
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection(host, timeout=60)
    state = begin(conn, token)
    mine = []
    while not state["done"]:
        question = next(q["key"] for q in state["questions"] if q["key"] not in state["answered"])
        choice = str(rng.choice([*[i["id"] for i in state["images"]], state["undecided"]]))
        t = time.perf_counter()
        state = json.loads(
            request(conn, "POST", f"/api/{token}/answer", {"set": state["set"], "question": question, "choice": choice})
        )
        mine.append(time.perf_counter() - t)
    conn.close()
    with lock:
        latencies.extend(mine)
    return len(mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--raters", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--threads", type=int, default=8, help="the server's request threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, listening, host, tokens, t0 = start(args.study_dir, Path(tmp) / "votes.sqlite", args.raters, args.threads)
        try:
            conn = http.client.HTTPConnection(host, timeout=60)
            request(conn, "GET", f"/r/{tokens[0]}")
            state = begin(conn, tokens[0])
            for src in [*state["references"], *(image["src"] for image in state["images"])]:
                request(conn, "GET", src)
            first_page = time.perf_counter() - t0
            conn.close()
            print(f"serve-study → listening: {listening:.2f} s; → first page, its set and images: {first_page:.2f} s")
            latencies: list[float] = []
            lock = threading.Lock()
            wall = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                answers = sum(pool.map(lambda it: rate(host, it[1], it[0], latencies, lock), enumerate(tokens)))
            wall = time.perf_counter() - wall
        finally:
            proc.terminate()
            proc.wait()
    ms = np.array(latencies) * 1000
    print(
        f"{args.raters} raters, {args.concurrency} at once, server threads {args.threads}: {answers} answers in "
        f"{wall:.1f} s = {answers / wall:.0f} answer + next set /s; latency p50 {np.percentile(ms, 50):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms"
    )


if __name__ == "__main__":
    main()
