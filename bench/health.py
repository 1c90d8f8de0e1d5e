"""One health round over 10,000 simulated nodes: the project's poller against a bare asyncio +
aiohttp loop over the same targets, same run. Goals (issue 6): ratio ≥ 0.6 and a plain-HTTP round
of 10,000 in ≤ 5 s; the TLS figure is reported too. Nodes are served by two local server
processes on 127.0.0.1, each path answering as its own node.

A round is the poll and then its apply (`service.apply_round`: state, samples, hourly aggregates,
one transaction), so the 5 s goal is also reported for the two together (health_round_http). The
apply is timed on 10,000 seeded nodes in steady state (no status changes), against a bare Core
executemany UPDATE of their health rows and INSERT of their samples, in one transaction, same run;
on DATABASE_URL's PostgreSQL server when set (in a database of its own, BENCH_DATABASE, made and
dropped by the bench: the one DATABASE_URL names is left alone), on a throwaway SQLite file otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing
import os
import random
import resource
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fresh_app, report  # noqa: E402

NODES = 10_000
CONCURRENCY = 500
TLS_NODE = "36000000002025000001"
APPLY_ROUNDS = 5
BENCH_DATABASE = "mpim_bench_health"


def serve(port_queue, tls_files):
    from aiohttp import web

    async def health(request):
        return web.json_response({"status": "ok", "node_id": request.match_info["node"], "version": "bench",
                                  "time": "2026-01-01T00:00:00Z"})

    async def main():
        app = web.Application()
        app.router.add_get("/n/{node}/api/v1/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = None
        if tls_files:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls_files)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context, backlog=4096)
        await site.start()
        port_queue.put(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def tls_material(directory: Path) -> tuple[tuple[str, str], str]:
    """A throwaway CA and one server certificate naming TLS_NODE and 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, TLS_NODE)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.UniformResourceIdentifier(f"urn:mpim:node:{TLS_NODE}")]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return (str(directory / "leaf.pem"), str(directory / "leaf.key")), \
        ca.public_bytes(serialization.Encoding.PEM).decode()


def start_servers(count: int, tls_files=None) -> tuple[list[int], list]:
    queue = multiprocessing.Queue()
    processes = [multiprocessing.Process(target=serve, args=(queue, tls_files), daemon=True) for _ in range(count)]
    for process in processes:
        process.start()
    return [queue.get(timeout=30) for _ in processes], processes


async def bare_round(urls: list[str], context) -> int:
    import aiohttp

    gate = asyncio.Semaphore(CONCURRENCY)
    ok = 0

    async def one(session, url):
        nonlocal ok
        async with gate:
            async with session.get(url) as response:
                body = json.loads(await response.read())
                ok += body.get("status") == "ok"

    connector = aiohttp.TCPConnector(limit=CONCURRENCY, ssl=context if context else True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, url) for url in urls))
    return ok


def measure(targets, context) -> tuple[float, float, int, int]:
    from app.health import poller

    urls = [t.endpoint + "/api/v1/health" for t in targets]
    asyncio.run(bare_round(urls[:500], context))  # warm both paths
    best_bare = best_project = float("inf")
    ok_bare = ok_project = 0
    for _ in range(3):  # alternate, keep the best of each: the machine is noisy
        started = time.perf_counter()
        ok_bare = asyncio.run(bare_round(urls, context))
        best_bare = min(best_bare, time.perf_counter() - started)
        started = time.perf_counter()
        results = poller.poll_once(targets, ssl_context=context, timeout=10, concurrency=CONCURRENCY)
        best_project = min(best_project, time.perf_counter() - started)
        ok_project = sum(r.ok for r in results)
    return best_bare, best_project, ok_bare, ok_project


def bench_database(drop: bool = False) -> str | None:
    """The URL of BENCH_DATABASE, made afresh on DATABASE_URL's server (or dropped); None without DATABASE_URL."""
    import sqlalchemy as sa

    from app.config import database_url

    if not os.environ.get("DATABASE_URL"):
        return None
    url = sa.make_url(database_url(Path(".")))
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        if not drop:
            connection.exec_driver_sql(f"CREATE DATABASE {BENCH_DATABASE}")
    engine.dispose()
    return url.set(database=BENCH_DATABASE).render_as_string(hide_password=False)


def seeded_apply_app():
    """A fresh app with NODES active nodes."""
    from app.admission.models import Application, Node
    from app.extensions import db
    from app.pki import lifecycle

    config = {"MPIM_CA_PASSPHRASE": "bench-passphrase"}
    if (url := bench_database()) is not None:
        config["SQLALCHEMY_DATABASE_URI"] = url
    app = fresh_app("health", **config)
    with app.app_context():
        apps, nodes = [], []
        for index in range(NODES):
            common = dict(division_code="360000", org_name=f"bench {index}", system_name="bench", vendor="v",
                          endpoint=f"https://n{index}.example", contact_name="n", contact_phone="0791-1234567",
                          contact_email="a@b.cn", capabilities=["text"])
            apps.append({"id": f"{index:032x}", "kind": "admission", "status": "approved", **common})
            nodes.append({"node_id": f"36000000002025{index + 1:06d}", "province_prefix": "36", "status": "active",
                          "application_id": f"{index:032x}", "approved_by": "bench", **common})
        db.session.execute(Application.__table__.insert(), apps)
        db.session.execute(Node.__table__.insert(), nodes)
        lifecycle.initialise(actor="bench")  # the rounds that bring the nodes up publish a route table
        db.session.commit()
    return app


def polled(node_ids: list[str], rng: random.Random) -> list:
    """One round's results, every node answering, as the poller makes them."""
    from app.health import poller

    now = dt.datetime.now(dt.UTC)
    return [poller.PollResult(node_id, f"https://n{index}.example", True, round(rng.uniform(1, 40), 2), None, "",
                              None, now) for index, node_id in enumerate(node_ids)]


def bare_write(results) -> None:
    """What a round must write at least: each node's health row and its sample, Core executemany, one commit."""
    from sqlalchemy import bindparam, insert, update

    from app.extensions import db
    from app.health.models import HealthSample, NodeHealth

    health, samples = NodeHealth.__table__, HealthSample.__table__
    with db.engine.begin() as connection:
        connection.execute(update(health).where(health.c.node_id == bindparam("b_node_id")), [
            {"b_node_id": r.node_id, "status": "up", "consecutive_failures": 0, "consecutive_successes": 10,
             "last_checked_at": r.checked_at, "last_ok_at": r.checked_at, "last_latency_ms": r.latency_ms,
             "last_failure": None, "last_detail": r.detail, "cert_matches": r.cert_matches} for r in results])
        connection.execute(insert(samples), [{"node_id": r.node_id, "at": r.checked_at, "ok": r.ok,
                                              "latency_ms": r.latency_ms, "failure": None} for r in results])


def measure_apply() -> tuple[float, float, str]:
    """Median seconds of a steady-state apply_round of NODES results, and of `bare_write`, alternated."""
    from app.extensions import db
    from app.health import service

    app = seeded_apply_app()
    rng = random.Random(6)
    with app.app_context():
        node_ids = [f"36000000002025{index + 1:06d}" for index in range(NODES)]
        for _ in range(2):  # unknown → up: the state is steady after these
            service.apply_round(polled(node_ids, rng))
        applied, bare = [], []
        for _ in range(APPLY_ROUNDS):
            results = polled(node_ids, rng)
            started = time.perf_counter()
            outcome = service.apply_round(results)
            applied.append(time.perf_counter() - started)
            assert outcome.ok == NODES and not outcome.changes and not outcome.skipped, outcome.summary()
            results = polled(node_ids, rng)
            started = time.perf_counter()
            bare_write(results)
            bare.append(time.perf_counter() - started)
        dialect = db.engine.dialect.name
        db.session.remove()
        db.engine.dispose()
    bench_database(drop=True)
    return statistics.median(applied), statistics.median(bare), dialect


def main() -> None:
    from app.health import poller

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    ports, processes = start_servers(2)
    targets = [poller.PollTarget(f"{36000000002025000000 + i}", f"http://127.0.0.1:{ports[i % 2]}/n/"
                                 f"{36000000002025000000 + i}") for i in range(NODES)]
    bare, project, ok_bare, ok_project = measure(targets, None)
    for process in processes:
        process.terminate()
    print(f"plain HTTP: bare {NODES / bare:.0f}/s ({bare:.2f} s, {ok_bare} ok), "
          f"poller {NODES / project:.0f}/s ({project:.2f} s, {ok_project} ok)")
    report("health_poll_http", NODES / project, NODES / bare, 0.6, round_seconds=round(project, 3),
           round_goal_seconds=5, ok=ok_project)
    apply_seconds, write_seconds, dialect = measure_apply()
    print(f"apply ({dialect}): {apply_seconds:.2f} s for {NODES} results (median of {APPLY_ROUNDS}), bare "
          f"UPDATE + INSERT {write_seconds:.2f} s; round: poll {project:.2f} s + apply {apply_seconds:.2f} s "
          f"= {project + apply_seconds:.2f} s")
    report("health_round_http", NODES / (project + apply_seconds), NODES / (bare + write_seconds), 0.6,
           unit="nodes per second through a whole round (plain-HTTP poll + apply); baseline: bare aiohttp round + "
                "bare executemany UPDATE + INSERT",
           round_seconds=round(project + apply_seconds, 3), round_goal_seconds=5,
           poll_seconds=round(project, 3), apply_seconds=round(apply_seconds, 3),
           apply_baseline_seconds=round(write_seconds, 3), apply_ratio=round(write_seconds / apply_seconds, 3),
           database=dialect)

    directory = Path(tempfile.mkdtemp(prefix="mpim-bench-tls-"))
    tls_files, ca_pem = tls_material(directory)
    ports, processes = start_servers(2, tls_files)
    context = ssl.create_default_context(cadata=ca_pem)
    targets = [poller.PollTarget(TLS_NODE, f"https://127.0.0.1:{ports[i % 2]}/n/{TLS_NODE}") for i in range(NODES)]
    bare, project, ok_bare, ok_project = measure(targets, context)
    for process in processes:
        process.terminate()
    print(f"TLS: bare {NODES / bare:.0f}/s ({bare:.2f} s), poller {NODES / project:.0f}/s ({project:.2f} s, "
          f"{ok_project} ok)")
    report("health_poll_tls", NODES / project, NODES / bare, 0.6, round_seconds=round(project, 3), ok=ok_project)


if __name__ == "__main__":
    main()
