"""Benchmark of conversations as data: search over many messages, export throughput, import.

Unlike `bench/run.py` (which measures a running server over HTTP), this one needs the data in
place first, far faster than turns could make it: it bulk-inserts a space's messages directly
(PostgreSQL `COPY`, SQLite `executemany`), then measures through the real Django stack in
process (the REST routes, through Django's test client):

- `search`: `GET /spaces/{id}/search` for a rare word, a common word, two words, and the next
  page of the common word; median and p95 latency of `--repeat` calls each;
- `export`: `GET /spaces/{id}/export` streamed to nowhere: lines and MB per second, and how much
  the process's peak RSS grew (bounded memory: it must not grow with the space);
- `import`: `POST /spaces/import` of that export: messages per second.

    DATABASE_URL=postgresql://…/stello_bench .venv/bin/python bench/data.py --messages 1000000

It migrates the database it is given, makes a user `bench-data`, and deletes its space at the
end unless `--keep`. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stello_project.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from sessions_app.models import Record, Session  # noqa: E402
from spaces.apikeys import apikey_create  # noqa: E402
from spaces.models import Space  # noqa: E402

# A Zipf-ish vocabulary: a few very common words, many rare ones.
VOCABULARY = [f"w{i}" for i in range(20_000)]
COMMON, RARE = "w0", "zyzzyva"  # RARE: in one message of every RARE_EVERY
RARE_EVERY = 50_000


def sentence(rng: random.Random) -> str:
    words = [VOCABULARY[min(int(rng.paretovariate(1.1)) - 1, len(VOCABULARY) - 1)]
             for _ in range(rng.randint(8, 40))]
    return " ".join(words)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill(space_id: str, sessions: list[str], messages: int, seed: int) -> float:
    """Insert `messages` records spread over `sessions`; seconds taken."""
    rng = random.Random(seed)
    start = time.perf_counter()
    base = datetime(2025, 1, 1, tzinfo=UTC)
    batch = 10_000
    done = 0
    while done < messages:
        rows = []
        for i in range(done, min(messages, done + batch)):
            sid = sessions[i % len(sessions)]
            text = sentence(rng) + (f" {RARE}" if i % RARE_EVERY == 7 else "")
            rows.append((sid, "user" if i % 2 == 0 else "assistant", text,
                         base + timedelta(seconds=i)))
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor, cursor.cursor.copy(
                    "COPY records (session_id, role, content, timestamp) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            with connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO records (session_id, role, content, timestamp) "
                    "VALUES (%s, %s, %s, %s)",
                    [(uuid.UUID(s).hex, role, text, ts.strftime("%Y-%m-%d %H:%M:%S.%f"))
                     for s, role, text, ts in rows])
        done += len(rows)
    for sid in sessions:
        Session.objects.filter(pk=sid).update(record_count=Record.objects.filter(
            session_id=sid).count())
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return time.perf_counter() - start


def timed(client: Client, path: str, repeat: int, **params) -> dict:
    samples, body = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, params)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content
        body = response.json()
    samples.sort()
    return {"medianMs": round(statistics.median(samples), 2),
            "p95Ms": round(samples[int(0.95 * (len(samples) - 1))], 2),
            "hits": len(body["results"]), "nextCursor": body["nextCursor"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20, help="calls per search query")
    parser.add_argument("--phases", default="search,export,import")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the space afterwards")
    args = parser.parse_args()
    phases = set(args.phases.split(","))

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    user, _ = get_user_model().objects.get_or_create(username="bench-data")
    _, key = apikey_create(user=user, name="bench data")
    client = Client(HTTP_X_API_KEY=key)
    response = client.post("/spaces", {"label": "bench data"}, content_type="application/json")
    space_id = response.json()["id"]
    root = str(Session.objects.get(space_id=space_id, role="main").id)
    sessions = [root]
    for i in range(args.sessions - 1):
        response = client.post(f"/spaces/{space_id}/sessions/{root}/fork", {"label": f"s{i}"},
                               content_type="application/json")
        sessions.append(response.json()["id"])
    report: dict = {"database": connection.vendor, "messages": args.messages,
                    "sessions": args.sessions}
    made = [space_id]
    try:
        report["fillSeconds"] = round(fill(space_id, sessions, args.messages, args.seed), 1)
        if "search" in phases:
            path = f"/spaces/{space_id}/search"
            common = timed(client, path, args.repeat, q=COMMON)
            report["search"] = {
                "rareWord": timed(client, path, args.repeat, q=RARE),
                "commonWord": common,
                "twoWords": timed(client, path, args.repeat, q=f"{COMMON} w1"),
                "commonNextPage": timed(client, path, args.repeat, q=COMMON,
                                        cursor=common["nextCursor"]),
            }
            for figures in report["search"].values():
                figures.pop("nextCursor")
        body = b""
        if "export" in phases or "import" in phases:
            before = rss_mb()
            started = time.perf_counter()
            response = client.get(f"/spaces/{space_id}/export")
            sink = io.BytesIO() if "import" in phases else None
            size = lines = 0
            for chunk in response.streaming_content:
                size += len(chunk)
                lines += chunk.count(b"\n")
                if sink is not None:
                    sink.write(chunk)
            seconds = time.perf_counter() - started
            report["export"] = {"seconds": round(seconds, 2), "lines": lines,
                                "linesPerSec": round(lines / seconds),
                                "mbPerSec": round(size / seconds / 1e6, 1),
                                "mb": round(size / 1e6, 1),
                                "peakRssGrowthMb": round(rss_mb() - before, 1),
                                "peakRssGrowthIncludesTheBufferedFile": sink is not None}
            body = sink.getvalue() if sink is not None else b""
        if "import" in phases:
            from django.conf import settings
            settings.STELLO = {**settings.STELLO, "IMPORT_MAX_BYTES": len(body) + 1}
            started = time.perf_counter()
            response = client.generic("POST", "/spaces/import", body,
                                      content_type="application/x-ndjson")
            seconds = time.perf_counter() - started
            assert response.status_code == 201, response.content[:500]
            made.append(response.json()["id"])
            report["import"] = {"seconds": round(seconds, 2),
                                "messagesPerSec": round(args.messages / seconds)}
    finally:
        if not args.keep:
            Space.objects.filter(pk__in=made).delete()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
