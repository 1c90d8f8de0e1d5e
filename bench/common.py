"""Shared by the benchmarks: a migrated throwaway database and the closing JSON line."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def fresh_app(name: str, **config):
    """A new app on its own migrated SQLite file (or DATABASE_URL's database if set by the caller)."""
    from flask_migrate import upgrade

    from app import create_app
    from app.divisions import service as divisions
    from app.extensions import db

    directory = Path(tempfile.mkdtemp(prefix=f"mpim-bench-{name}-"))
    app = create_app({"MPIM_INSTANCE_PATH": str(directory), "SECRET_KEY": "bench",
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{directory / 'bench.db'}",
                      "SESSION_COOKIE_SECURE": False, "WTF_CSRF_ENABLED": False, **config})
    with app.app_context():
        upgrade()
        divisions.import_revision(divisions.DEFAULT_FILE.read_bytes(), divisions.DEFAULT_REVISION, actor="bench")
        db.session.commit()
    return app


def median_seconds(function, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def report(bench: str, value: float, baseline: float, goal: float, **extra) -> dict:
    line = {"bench": bench, "value": round(value, 6), "baseline": round(baseline, 6),
            "ratio": round(value / baseline, 3) if baseline else None, "goal": goal, **extra}
    print(json.dumps(line))
    return line
