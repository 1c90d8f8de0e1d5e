"""The console's nodes list with 10,000 nodes against the same page with 100 nodes, same run.

Goal (issue 3): time(10,000) / time(100) ≤ 2. The list pages with an indexed ORDER BY and a
COUNT, so its cost should not grow with the table. Prints one JSON line at the end.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fresh_app, median_seconds, report  # noqa: E402

from app.admission.models import CAPABILITIES, Application, Node  # noqa: E402
from app.auth import service as users  # noqa: E402
from app.extensions import db  # noqa: E402

VENDORS = ["Vendor A", "Vendor B", "Vendor C", "Vendor D"]


def seeded_app(count: int):
    app = fresh_app(f"nodes{count}")
    rng = random.Random(count)
    with app.app_context():
        users.create_user(users.UserDraft(username="minister", password="Bench-Password-1", role="ministry_admin",
                                          must_change_password=False))  # the page, not the first-sign-in form
        provinces = [d for d in ("110000", "360000", "440000", "510000", "650000", "330000")]
        apps, nodes = [], []
        for index in range(count):
            division = provinces[index % len(provinces)]
            node_id = f"{division}0000202{5}{index + 1:06d}"
            application_id = f"{index:032x}"
            common = dict(division_code=division, org_name=f"公安厅 {index}", system_name=f"系统 {index}",
                          vendor=rng.choice(VENDORS), endpoint=f"https://n{index}.example", contact_name="张三",
                          contact_phone="0791-1234567", contact_email="ops@example.cn",
                          capabilities=list(CAPABILITIES))
            apps.append({"id": application_id, "kind": "admission", "status": "approved", **common})
            nodes.append({"node_id": node_id, "province_prefix": division[:2], "status": "active",
                          "application_id": application_id, "approved_by": "minister", **common})
        db.session.execute(Application.__table__.insert(), apps)
        db.session.execute(Node.__table__.insert(), nodes)
        db.session.commit()
    client = app.test_client()
    client.post("/login", data={"username": "minister", "password": "Bench-Password-1"})
    assert client.get("/nodes/").status_code == 200
    return client


def main() -> None:
    small, large = seeded_app(100), seeded_app(10_000)

    def page(client, query=""):
        return lambda: client.get(f"/nodes/{query}").get_data()

    for client in (small, large):  # warm caches and the template
        median_seconds(page(client), 5)
    results = {}
    for query in ("", "?status=active&sort=org_name", "?province=360000"):
        results[query] = (median_seconds(page(large, query), 40), median_seconds(page(small, query), 40))
    value, baseline = results[""]
    for query, (lv, sv) in results.items():
        print(f"nodes list {query or '(default)'}: 10,000 nodes {lv * 1000:.1f} ms, 100 nodes {sv * 1000:.1f} ms,"
              f" ratio {lv / sv:.2f}")
    report("console_nodes", value, baseline, 2, unit="seconds per page, median; ratio = 10,000 nodes / 100 nodes",
           worst_ratio=round(max(lv / sv for lv, sv in results.values()), 3))


if __name__ == "__main__":
    main()
