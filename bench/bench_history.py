"""The strategy history page with large versions: 50 saved versions of ~99,000 characters (2,000 lines) each.

Renders GET /admin/algo/history (one page of 10 versions, each with its diff against the current text)
through the real app and a real SQLite file, and prints the page size and p50/p95 of 20 renders.
Run: .venv/bin/python bench/bench_history.py
Goal: <= 200 ms a page, a page well under 1 MB.
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import auth, store, strategies  # noqa: E402
from core.config import Settings  # noqa: E402
from omniwise import create_app  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        data.mkdir()
        shutil.copy(ROOT / "data" / "strategy.txt", data)
        app = create_app(Settings(data_dir=data))
        with store.connect(data / "omniwise.db") as db:
            auth.set_password(db, "bench", 0)
            for n in range(50):
                rules = (f"IF MA{(n * 7 + i) % 50 + 2} > MA{(i * 13 + n) % 60 + 3} THEN BUY  # note {i}"
                         for i in range(2000))
                text = "\n".join(rules)[:99_000]
                with store.transaction(db):
                    db.execute("INSERT INTO strategy_versions(version, text, saved_at_ms) VALUES (?, ?, ?)",
                               [strategies.version_of(text), text, n])
        strategies.write_atomically(data / "strategy.txt", text[:50_000])
        browser = app.test_client()
        page = browser.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        browser.post("/login", data={"password": "bench", "csrf_token": token})
        timings_ms, size = [], 0
        for _ in range(20):
            started = time.perf_counter()
            answer = browser.get("/admin/algo/history")
            timings_ms.append((time.perf_counter() - started) * 1000)
            size = len(answer.data)
    timings_ms.sort()
    print(f"history page, 50 versions of ~99,000 characters: {size / 1024:.0f} KiB, "
          f"p50 {statistics.median(timings_ms):.1f} ms, p95 {timings_ms[18]:.1f} ms")


if __name__ == "__main__":
    main()
