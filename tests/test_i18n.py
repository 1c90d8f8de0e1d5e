"""Every console string has a zh-CN translation; the API stays English."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from app.auth.models import User
from app.errors import Conflict
from app.extensions import db

ROOT = Path(__file__).resolve().parent.parent


def test_every_extracted_string_is_translated(tmp_path):
    pot = tmp_path / "messages.pot"
    subprocess.run([str(Path(sys.executable).with_name("pybabel")), "extract", "-F", "babel.cfg",
                    "-k", "_l", "-k", "lazy_gettext", "-o", str(pot), "."], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    with pot.open("rb") as handle:
        wanted = {m.id for m in read_po(handle) if m.id}
    with (ROOT / "app/translations/zh_Hans_CN/LC_MESSAGES/messages.po").open("rb") as handle:
        # A plural message's string is a tuple (one form in Chinese): every form must be filled in.
        have = {m.id for m in read_po(handle) if m.id and "fuzzy" not in m.flags
                and (all(m.string) if m.pluralizable else m.string)}
    assert not sorted(wanted - have, key=str), "run `make i18n-extract` and translate these"


def catalog_keys(text: str) -> list[tuple[str, str]]:
    """(msgctxt, msgid) of each entry of a .po file as written: Babel's reader keeps the last of two entries of one
    message without a word, where msgfmt refuses the file."""
    keys, fields, current = [], {}, None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if "msgid" in fields:
                keys.append((fields.get("msgctxt", ""), fields["msgid"]))
            fields, current = {}, None
        elif line.startswith(("msgctxt ", "msgid ", "msgid_plural ", "msgstr")):
            current, _, quoted = line.partition(" ")
            fields[current] = quoted[1:-1]
        elif line.startswith('"') and current:
            fields[current] += line[1:-1]
    return keys


def test_no_message_is_translated_twice():
    """A string appended again with a new translation (6914c6e) left its first entry: msgfmt refused the catalog
    as a fatal error, and which translation the console showed depended on the reader."""
    keys = catalog_keys((ROOT / "app/translations/zh_Hans_CN/LC_MESSAGES/messages.po").read_text(encoding="utf-8"))
    assert len(keys) > 700
    assert sorted({key for key in keys if keys.count(key) > 1}) == []


def test_api_errors_are_english_whatever_the_session_language(client):
    body = client.get("/api/v1/divisions/999999").get_json()
    assert body["error"]["message"].startswith("There is no division 999999")


# --- stored codes and errors shown to a Chinese reader -------------------------------------------

def _admitted_node(make_user):
    from app.admission import applications
    from app.extensions import db
    from tests.factories import node_document

    minister = make_user("approver")
    document = node_document("360000")
    application = applications.submit_by_user(document, by=minister)
    db.session.commit()
    node = applications.approve(application, by=minister)
    db.session.commit()
    return application, node


def test_node_status_flash_names_the_status_in_chinese(admin_console, make_user):
    _, node = _admitted_node(make_user)
    page = f"/nodes/{node.node_id}"
    response = admin_console.post_form(page, {"reason": "维护"}, action=f"{page}/suspend")
    html = admin_console.client.get(response.headers["Location"]).get_data(as_text=True)
    assert f"完成：节点 {node.node_id} 现为“已暂停”状态。" in html
    assert "suspended" not in html


def test_renewal_refusal_names_the_status_in_chinese_and_the_api_stays_english(admin_console, make_user):
    from app.admission import nodes
    from app.extensions import db
    from app.pki import service as pki
    from tests.factories import NodeKeys

    _, node = _admitted_node(make_user)
    serial = pki.current_certificate(node.node_id).serial
    nodes.suspend(node, "x", by=make_user("suspender"))
    db.session.commit()
    page = f"/certificates/{serial}"
    response = admin_console.post_form(page, {"csr": NodeKeys().csr}, action=f"{page}/renew")
    assert "状态为“已暂停”的节点不能更新证书。" in response.get_data(as_text=True)
    with pytest.raises(Conflict) as caught:
        pki.renew(node, NodeKeys().csr)
    assert str(caught.value.message) == "A suspended node cannot renew its certificate."


def test_an_oversized_csr_upload_is_refused_in_chinese(admin_console):
    response = admin_console.post_form("/applications/new", {
        "division_code": "360000", "csr_file": (io.BytesIO(b"x" * 70000), "big.csr")})
    assert "文件不能超过 64 KB。" in response.get_data(as_text=True)


def test_a_request_over_the_limit_gets_a_chinese_page_and_json_under_the_api(admin_console):
    body = {"csr_file": (io.BytesIO(b"x" * (1024 * 1024 + 1)), "huge.csr")}
    response = admin_console.client.post("/applications/new", data=body)
    html = response.get_data(as_text=True)
    assert response.status_code == 413 and "请求过大：控制台最多接受 1 MB。" in html
    assert "capacity limit" not in html
    # (the applications door checks its token first; the session door reads the body first)
    api = admin_console.client.post("/api/v1/session", data=b'{"csr": "' + b"x" * 1024 * 1024 + b'"}',
                                    content_type="application/json")
    assert api.status_code == 413
    assert api.get_json()["error"] == {"code": "request_entity_too_large",
                                       "message": "The body is larger than 1 MiB (1,048,576 bytes)."}


def test_an_unknown_page_is_explained_in_chinese_and_in_english_under_the_api(admin_console):
    response = admin_console.client.get("/no-such-page")
    html = response.get_data(as_text=True)
    assert response.status_code == 404 and "页面不存在" in html and "没有这个页面" in html
    assert "requested URL was not found" not in html
    api = admin_console.client.get("/api/v1/no-such-page")
    assert api.status_code == 404 and api.get_json()["error"]["code"] == "not_found"
    assert api.get_json()["error"]["message"].startswith("The requested URL was not found")


def test_the_english_console_keeps_english_error_pages(admin_console):
    admin_console.client.get("/lang/en")
    html = admin_console.client.get("/no-such-page").get_data(as_text=True)
    assert "Page not found" in html and "There is no such page." in html


def test_application_page_lists_capabilities_and_statuses_in_chinese(admin_console, make_user):
    application, node = _admitted_node(make_user)
    html = admin_console.client.get(f"/applications/{application.id}").get_data(as_text=True)
    assert "文本、图片、语音、文件" in html and "已读计数" in html and "read_count" not in html
    assert "已批准" in html


def test_revocation_reasons_and_routing_changes_have_chinese_labels(app):
    from flask import render_template_string
    from flask_babel import force_locale

    with app.test_request_context("/"), force_locale("zh_CN"):
        rendered = render_template_string(
            "{{ 'key_compromise'|revocation_reason_label }}|{{ 'active'|status_label }}|"
            "{{ 'certificate changed'|route_reason_label }}|{{ 'first table'|route_change_label }}|"
            "{{ '36000000002025000001 status up→down'|route_change_label }}|"
            "{{ '36000000002025000001 endpoint changed'|route_change_label }}|{{ 'something new'|status_label }}")
    assert rendered == ("密钥泄露|启用|证书变更|首个路由表|36000000002025000001 状态 正常→故障|"
                        "36000000002025000001 接入地址变更|something new")


def test_the_latency_chart_speaks_chinese(app):
    from datetime import UTC, datetime

    from flask_babel import force_locale

    from app.health import charts

    with force_locale("zh_CN"):
        svg = charts.latency_chart([], end=datetime.now(UTC))
    assert "无成功巡检" in svg and "24 小时前" in svg and "现在" in svg and "now" not in svg
    assert " ms<" not in svg  # no scale for a chart with no line (it read "11 ms")
    with force_locale("zh_CN"):
        drawn = charts.latency_chart([(datetime.now(UTC), 42.0)], end=datetime.now(UTC))
    assert ">46 ms<" in drawn and "无成功巡检" not in drawn


def test_every_reason_the_code_publishes_a_route_version_for_has_a_label():
    """The routes page shows a version's reason through ROUTE_REASONS; a reason missing there shows raw
    ("certificate revoked" did, in English words on the Chinese page)."""
    import re

    from app.labels import ROUTE_REASONS

    source = "\n".join(path.read_text("utf-8") for path in (ROOT / "app" / "routing").glob("*.py"))
    reasons = set(re.findall(r'publish(?:_after)?\("([^"]+)"', source))
    assert {"node admitted", "certificate revoked", "re-sign"} <= reasons  # the pattern finds them
    assert reasons - set(ROUTE_REASONS) == set()


def test_uptime_bar_tooltips_give_console_local_time(app):
    from datetime import UTC, datetime

    from flask_babel import force_locale

    from app.health import charts
    from app.health.history import Bucket

    with app.test_request_context("/"), force_locale("zh_CN"):
        svg = charts.uptime_bars([Bucket(start=datetime(2026, 11, 30, 23, 0, tzinfo=UTC), polls=0, successes=0,
                                         latency_ms=None)],
                                 label="24 小时")
    assert "<title>2026-12-01 07:00：无数据</title>" in svg  # Asia/Shanghai, as every time the console shows


def test_a_health_charts_name_counts_what_its_colours_and_line_show(app):
    """A screen reader has only the chart's name: the bars' colours counted, the line's lowest, highest and
    latest latency, in the reader's language."""
    from datetime import UTC, datetime, timedelta

    from flask_babel import force_locale

    from app.health import charts
    from app.health.history import Bucket

    start = datetime(2026, 12, 1, tzinfo=UTC)
    buckets = [Bucket(start=start + timedelta(hours=i), polls=polls, successes=ok, latency_ms=None)
               for i, (polls, ok) in enumerate([(60, 60), (60, 60), (60, 45), (60, 10), (0, 0)])]
    with app.test_request_context("/"), force_locale("zh_CN"):
        bars = charts.uptime_bars(buckets, label="24 小时")
        line = charts.latency_chart([(start, 31.0), (start + timedelta(hours=1), 12.4), (start + timedelta(hours=2),
                                                                                          18.0)],
                                   end=start + timedelta(hours=2))  # polls after the end are left out
    assert 'aria-label="24 小时：5 个时段中 2 个全程正常，1 个部分正常，1 个故障，1 个无数据"' in bars
    assert 'aria-label="延迟（最近 24 小时）：成功巡检 3 次，最低 12 ms，最高 31 ms，最近一次 18 ms"' in line


def test_health_failure_details_the_poller_writes_are_shown_in_chinese(admin_console, make_user):
    """The poller stores its own details in English ("no answer within 2 s"); the console shows them in the
    reader's language, as it does the failure reason beside them. A library's error text stays as it is."""
    from datetime import UTC, datetime

    from app.extensions import db
    from app.health.models import HealthEvent, NodeHealth

    _, node = _admitted_node(make_user)
    now = datetime.now(UTC)
    details = ["no answer within 2 s", "the server certificate does not name this node",
               "the answer is not a JSON object", "status is 'degraded'", "answered as '36000000002025000009'",
               "Cannot connect to host im.example:8443"]
    for n, detail in enumerate(details):
        db.session.add(HealthEvent(node_id=node.node_id, at=now, old_status="up" if n % 2 else "down",
                                   new_status="down" if n % 2 else "up", reason="timeout", detail=detail))
    db.session.add(NodeHealth(node_id=node.node_id, status="down", last_checked_at=now, last_failure="timeout",
                              last_detail="no answer within 2 s"))
    db.session.commit()
    events = html.unescape(admin_console.client.get("/health/events").get_data(as_text=True))
    for chinese in ("2 秒内无应答", "服务器证书未指明此节点", "应答不是 JSON 对象", "状态为 'degraded'",
                    "以 '36000000002025000009' 的身份应答", "Cannot connect to host im.example:8443"):
        assert chinese in events
    assert "no answer within" not in events and "answered as" not in events
    assert "超时：2 秒内无应答" in admin_console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    admin_console.client.get("/lang/en")
    assert "no answer within 2 s" in admin_console.client.get("/health/events").get_data(as_text=True)


def test_one_word_keeps_its_translation_in_each_context(app):
    """Catalog tools that key translations by msgid alone gave a certificate's and a token's "Revoke" the
    node's word; app/translations/fill.py keys a message with a context by both."""
    from flask_babel import force_locale, gettext, pgettext

    with app.test_request_context(), force_locale("zh_CN"):
        assert pgettext("certificate", "Revoke") == "吊销" and pgettext("certificate", "Revoked") == "已吊销"
        assert pgettext("token", "Revoke") == "撤销" and pgettext("token", "Revoked") == "已撤销"
        assert gettext("Revoke") == "注销"


def test_the_fill_tool_keeps_contexts_apart(tmp_path, monkeypatch):
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import read_po, write_po

    from app.translations import fill

    catalog = Catalog(locale="zh_Hans_CN")
    catalog.add("Revoke")
    catalog.add("Revoke", context="certificate")
    po = tmp_path / "messages.po"
    with po.open("wb") as handle:
        write_po(handle, catalog)
    mapping = tmp_path / "zh.py"
    mapping.write_text('ZH = {"Revoke": "注销", "certificate\\x04Revoke": "吊销"}\n', "utf-8")
    monkeypatch.setattr(fill, "CATALOG", po)
    fill.main(str(mapping))
    with po.open("rb") as handle:
        filled = read_po(handle)
    assert filled.get("Revoke").string == "注销"
    assert filled.get("Revoke", context="certificate").string == "吊销"


# --- switching language on a page a refused form left --------------------------------------------

def _refused_form(case: str, make_user) -> tuple[str, str, dict]:
    """(page, action, form): a form the console refuses back onto its page, at the form's POST-only address."""
    from app.admission import applications, nodes
    from app.extensions import db
    from app.pki import service as pki
    from tests.factories import NodeKeys, node_document

    application, node = _admitted_node(make_user)
    page = f"/nodes/{node.node_id}"
    if case == "suspend":
        return page, f"{page}/suspend", {"reason": ""}
    if case == "maintenance":
        return page, f"/health/{node.node_id}/maintenance", {"hours": "100000", "note": ""}
    if case == "renew":
        serial = pki.current_certificate(node.node_id).serial
        nodes.suspend(node, "x", by=make_user("suspender"))
        db.session.commit()
        return f"/certificates/{serial}", f"/certificates/{serial}/renew", {"csr": NodeKeys().csr}
    document = node_document("360000")
    pending = applications.submit_by_user(document, by=make_user("applicant"))
    db.session.commit()
    return f"/applications/{pending.id}", f"/applications/{pending.id}/reject", {"reason": ""}


@pytest.mark.parametrize("case", ["suspend", "maintenance", "renew", "reject"])
def test_switching_language_on_a_refused_form_returns_to_its_page_in_that_language(admin_console, make_user, case):
    """The refused form's page is shown at the form's own address, which answers POST only: the language link
    brings the reader back to the page itself, not to a 405 there."""
    import re

    page, action, form = _refused_form(case, make_user)
    refused = admin_console.post_form(page, form, action=action)
    assert refused.status_code == 422
    link = html.unescape(re.search(r'href="([^"]*/lang/en[^"]*)"', refused.get_data(as_text=True)).group(1))
    switched = admin_console.client.get(link, headers={"Referer": f"http://localhost{action}"})
    assert switched.status_code == 302 and switched.headers["Location"] == page
    landed = admin_console.client.get(page)
    assert landed.status_code == 200 and '<html lang="en">' in landed.get_data(as_text=True)
    # A link without the page's address (a tab opened before it carried one): the Referer is the form's address.
    back = admin_console.client.get("/lang/zh_CN", headers={"Referer": f"http://localhost{action}"})
    assert back.status_code == 302 and back.headers["Location"] == page


def test_the_language_switch_goes_back_only_to_this_consoles_pages(admin_console):
    for target in ("https://evil.example/nodes/", "//evil.example/nodes/", "/\\evil.example/", "/no-such-page"):
        response = admin_console.client.get("/lang/en", query_string={"next": target})
        assert response.headers["Location"] == "/", target
    on_page = admin_console.client.get("/lang/en", query_string={"next": "/nodes/?status=active"})
    assert on_page.headers["Location"] == "/nodes/?status=active"


@pytest.mark.parametrize("broken", ["//[x]", "//x]", "http://[::1", "http://[x]/"])
def test_the_language_switch_with_a_broken_host_in_next_or_referer_goes_to_the_dashboard(client, broken):
    """urlsplit raises ValueError on an unclosed or stray bracket in the host: the switch answered 500."""
    by_next = client.get("/lang/zh_CN", query_string={"next": broken})
    assert by_next.status_code == 302 and by_next.headers["Location"] == "/"
    by_referer = client.get("/lang/zh_CN", headers={"Referer": broken})
    assert by_referer.status_code == 302 and by_referer.headers["Location"] == "/"


def test_the_language_switch_rebuilds_the_address_so_no_other_host_can_be_named(admin_console):
    """The router ignores repeated slashes: "//login" matched /login, and given back as it came it sent the
    browser to a host named "login" (`next` needs no sign-in). The address is now built from the route it
    matched; a link back to the switch itself, which would redirect to itself for ever, goes to the dashboard."""
    for target, expected in (("http://localhost//login", "/login"), ("///nodes/", "/nodes/"),
                             ("http://localhost//nodes/?status=active", "/nodes/?status=active"),
                             ("http://localhost//api/v1/resolve?x=1", "/"),  # the API is no console page
                             ("/lang/en?next=/lang/en", "/"), ("//login", "/")):
        response = admin_console.client.get("/lang/en", query_string={"next": target})
        assert response.headers["Location"] == expected, target


# --- counts, sentence joins and names as each language writes them ---------------------------------

def _expiry_warnings_at(app, now, locale: str) -> list[str]:
    from flask_babel import force_locale

    from app.pki import own_keys

    with app.test_request_context("/"), force_locale(locale):
        return [str(warning) for warning in own_keys.expiry_warnings(now=now)]


def test_a_certificate_or_the_root_crl_a_day_or_less_from_its_end_is_counted_in_words(app, admin_console):
    """"expires in 1 days", and "in 0 days" for its last day; the Chinese line read "路由签名 证书", a space
    between Chinese words where a label met the word 证书."""
    import re
    from datetime import timedelta

    from app.extensions import db
    from app.i18n import local_time
    from app.pki import service as pki
    from app.pki.models import ROOT_CRL, CRLState

    end = pki.authority().route_signer_certificate.not_valid_after_utc
    shown_end = local_time(end, "%Y-%m-%d %H:%M")
    for before, english, chinese in ((timedelta(days=1, hours=1), "in 1 day", "将在 1 天后"),
                                     (timedelta(hours=2), "within a day", "将在一天内")):
        now = end - before
        db.session.get(CRLState, ROOT_CRL).next_update = end
        db.session.commit()
        warnings = _expiry_warnings_at(app, now, "en")
        assert f"The route signer certificate expires {english} ({shown_end})." in warnings, warnings
        assert any(w.startswith(f"The root CRL runs out {english} ({shown_end}): run ") for w in warnings), warnings
        assert not any(" days" in w or " 0 day" in w for w in warnings), warnings
        shown = _expiry_warnings_at(app, now, "zh_CN")
        assert f"路由签名证书{chinese}（{shown_end}）到期。" in shown, shown
        assert any(w.startswith(f"根 CA 的证书吊销列表{chinese}（{shown_end}）失效：") for w in shown), shown
        assert not any(re.search(r"[\u4e00-\u9fff] 证书", w) for w in shown), shown  # "管理节点 TLS 证书" is right


def test_an_uptime_bar_counts_one_poll_as_one(app):
    from dataclasses import replace
    from datetime import UTC, datetime

    from flask_babel import force_locale

    from app.health import charts
    from app.health.history import Bucket

    bucket = Bucket(start=datetime(2026, 11, 30, 23, 0, tzinfo=UTC), polls=1, successes=1, latency_ms=None)
    with app.test_request_context("/"), force_locale("en"):
        assert "100.0% of 1 poll<" in charts.uptime_bars([bucket], label="24 hours")
        assert "100.0% of 2 polls<" in charts.uptime_bars([replace(bucket, polls=2, successes=2)], label="24 hours")
    with app.test_request_context("/"), force_locale("zh_CN"):
        assert "1 次巡检中 100.0% 成功<" in charts.uptime_bars([bucket], label="24 小时")


def test_a_banners_sentences_run_on_without_a_space_in_chinese(app, admin_console):
    """Two translated sentences joined with a space read "…已停止。 节点…" on the Chinese console."""
    from tests.test_scheduler_liveness import banners_seen, beat

    beat(300)
    seen = banners_seen(admin_console)
    assert "已停止。节点健康巡检" in seen and "。 " not in seen, seen
    admin_console.client.get("/lang/en")
    assert "has stopped. Health polling" in banners_seen(admin_console)


def test_the_ca_unusable_banner_runs_on_without_a_space_in_chinese(app, admin_console):
    app.extensions.pop("mpim_authority", None)  # as a process starting now
    app.config["MPIM_CA_PASSPHRASE"] = "not-the-ca-passphrase"
    page = html.unescape(admin_console.client.get("/").get_data(as_text=True))
    assert "。在运维人员纠正之前" in page and "。 在运维人员纠正之前" not in page


def test_sentences_are_joined_as_the_readers_language_writes_them(app):
    from flask_babel import force_locale

    from app.i18n import sentences

    with app.test_request_context("/"):
        with force_locale("zh_CN"):
            assert sentences("甲已停止。", "乙正在运行。") == "甲已停止。乙正在运行。"
        with force_locale("en"):
            assert sentences("A stopped.", "B runs.") == "A stopped. B runs."


def test_a_retirement_is_dated_by_its_revision_in_chinese(app):
    """"已于 2023 撤销" read as a year; a GB/T 2260 revision is named as one (版)."""
    from flask import render_template_string
    from flask_babel import force_locale

    with app.test_request_context("/"), force_locale("zh_CN"):
        rendered = render_template_string("{{ _('Retired in %(rev)s', rev='2023') }}|"
                                          "{{ _('code %(code)s was retired in %(rev)s', code='130521', rev='2023') }}")
    assert rendered == "已于 2023 版撤销|代码 130521 已于 2023 版撤销"


@pytest.mark.parametrize(("setting", "value", "said"), [
    ("MPIM_IDLE_SECONDS", 60, "after 1 minute without activity"),
    ("MPIM_IDLE_SECONDS", 120, "after 2 minutes without activity"),
    ("PERMANENT_SESSION_LIFETIME", 3600, "ended 1 hour after it began"),
    ("PERMANENT_SESSION_LIFETIME", 5400, "ended 1.5 hours after it began"),
    ("PERMANENT_SESSION_LIFETIME", 7200, "ended 2 hours after it began"),
    # Not a whole number of half hours: "0.333333 hours" and "0.0166667 hours"; said in minutes.
    ("PERMANENT_SESSION_LIFETIME", 1200, "ended 20 minutes after it began"),
    ("PERMANENT_SESSION_LIFETIME", 60, "ended 1 minute after it began"),
])
def test_a_sign_in_ended_at_a_limit_counts_its_minutes_or_hours(app, setting, value, said):
    from flask_babel import force_locale

    from app.auth import idle

    app.config[setting] = value
    reason = "idle" if setting == "MPIM_IDLE_SECONDS" else "session_limit"
    with app.test_request_context("/"), force_locale("en"):
        assert said in idle._ended_message(reason)
    with app.test_request_context("/"), force_locale("zh_CN"):
        said_in_hours = reason == "session_limit" and value % 1800 == 0
        assert ("分钟无操作" if reason == "idle" else "小时，已自动退出" if said_in_hours else "分钟，已自动退出") \
            in idle._ended_message(reason)


def test_a_password_a_day_old_is_counted_as_one_day(app):
    from flask_babel import force_locale

    from app.auth import password_due

    with app.test_request_context("/"), force_locale("en"):
        assert "more than 1 day old:" in password_due.reason_text("expired", 1)
        assert "more than 90 days old:" in password_due.reason_text("expired", 90)
    with app.test_request_context("/"), force_locale("zh_CN"):
        assert "已超过 1 天未更换" in password_due.reason_text("expired", 1)


def test_a_chinese_name_on_the_english_console_is_marked_as_chinese(app, admin_console):
    """A prefecture or a county keeps its Chinese name on the English console, inside <html lang="en">: a
    screen reader read it with English rules. The filter marks it; a name the English console has in English,
    and every name on the Chinese console, is left as it is, and the name is escaped."""
    from types import SimpleNamespace

    from flask import render_template_string
    from flask_babel import force_locale

    from app.divisions.names import display_name

    shown = "{{ d|division_name }}"
    with app.test_request_context("/"):
        with force_locale("en"):
            assert render_template_string(shown, d=SimpleNamespace(code="360100", name="南昌市")) == \
                '<span lang="zh-CN">南昌市</span>'
            assert render_template_string(shown, d=SimpleNamespace(code="360000", name="江西省")) == "Jiangxi"
            assert render_template_string(shown, d=SimpleNamespace(code="360101", name="<b>&")) == \
                '<span lang="zh-CN">&lt;b&gt;&amp;</span>'
            assert display_name("360100", "南昌市") == "南昌市"  # as text: the tile map's SVG, the province filter
        with force_locale("zh_CN"):
            assert render_template_string(shown, d=SimpleNamespace(code="360100", name="南昌市")) == "南昌市"
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/divisions/360000").get_data(as_text=True)
    assert '<a href="/divisions/360100"><span lang="zh-CN">南昌市</span></a>' in page
    assert "/ <a href=\"/divisions/360000\">Jiangxi</a>" in page


def test_lists_are_joined_as_the_readers_language_writes_them(app):
    """Chinese separates a list's items with the enumeration comma (、), English with a comma and a space."""
    from flask import render_template_string
    from flask_babel import force_locale

    from app.i18n import join_list

    template = "{{ ['甲', '乙']|join_list }}|{{ list_separator() }}"
    with app.test_request_context("/"):
        with force_locale("zh_CN"):
            assert join_list(["360000", "440000"]) == "360000、440000"
            assert render_template_string(template) == "甲、乙|、"
        with force_locale("en"):
            assert join_list(["360000", "440000"]) == "360000, 440000"
            assert render_template_string(template) == "甲, 乙|, "


def test_the_users_page_lists_scopes_and_locked_addresses_as_the_reader_writes_lists(app, make_user, admin_console):
    from datetime import timedelta

    from app.auth.models import LoginThrottle
    from app.database import utcnow

    make_user("two-provinces", "provincial_admin", ("360000", "440000"))
    db.session.add_all(LoginThrottle(key=f"addr:{address}", failures=9, first_failure_at=utcnow(),
                                     locked_until=utcnow() + timedelta(minutes=15))
                       for address in ("10.1.0.1", "10.1.0.2"))
    db.session.commit()
    page = admin_console.client.get("/users/").get_data(as_text=True)
    assert "<td>360000、440000</td>" in page and re.search(r"\)、<code>10\.1\.0\.2</code>", page), page
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/users/").get_data(as_text=True)
    assert "<td>360000, 440000</td>" in page and re.search(r"\), <code>10\.1\.0\.2</code>", page), page

    response = admin_console.post_form("/users/", {}, action="/users/address-locks/clear")
    assert "10.1.0.1, 10.1.0.2" in admin_console.client.get(response.headers["Location"]).get_data(as_text=True)
    admin_console.client.get("/lang/zh_CN")
    db.session.add_all(LoginThrottle(key=f"addr:{address}", failures=9, first_failure_at=utcnow(),
                                     locked_until=utcnow() + timedelta(minutes=15))
                       for address in ("10.1.0.1", "10.1.0.2"))
    db.session.commit()
    response = admin_console.post_form("/users/", {}, action="/users/address-locks/clear")
    assert "10.1.0.1、10.1.0.2" in admin_console.client.get(response.headers["Location"]).get_data(as_text=True)


def test_a_csrs_requested_names_are_listed_as_the_reader_writes_lists(app, make_user, admin_console):
    from cryptography import x509

    from app.admission import applications
    from tests.factories import make_csr, node_document

    sans = x509.SubjectAlternativeName([x509.DNSName("a.example"), x509.DNSName("b.example")])
    csr = make_csr(extensions=[(sans, False)])
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    application = applications.submit_by_user(node_document("360000", csr=csr), by=jx_admin)
    db.session.commit()
    address = f"/applications/{application.id}"
    assert "DNS:a.example、DNS:b.example" in admin_console.client.get(address).get_data(as_text=True)
    admin_console.client.get("/lang/en")
    assert "DNS:a.example, DNS:b.example" in admin_console.client.get(address).get_data(as_text=True)


def test_the_certificates_of_one_key_are_listed_as_the_reader_writes_lists(app, make_user, admin_console):
    from app.admission import applications
    from app.pki import service as pki
    from tests.factories import NodeKeys, node_document

    minister = db.session.scalar(db.select(User).where(User.username == "minister"))
    keys = NodeKeys()
    node = applications.approve(applications.submit_by_user(
        node_document("360000", csr=keys.csr), by=make_user("jx-admin", "provincial_admin", ("360000",))),
        by=minister)
    first = pki.current_certificate(node.node_id)
    second = pki.renew(node, keys.csr, by=minister)
    third = pki.renew(node, keys.csr, by=minister)
    db.session.commit()
    address = f"/certificates/{first.serial}"
    listed = {second.serial, third.serial}
    page = html.unescape(admin_console.client.get(address).get_data(as_text=True))
    assert any(f"{a}、{b}" in page for a in listed for b in listed - {a}), page
    admin_console.client.get("/lang/en")
    page = html.unescape(admin_console.client.get(address).get_data(as_text=True))
    assert any(f"{a}, {b}" in page for a in listed for b in listed - {a}), page


def test_unknown_capabilities_are_listed_in_the_language_the_refusal_is_read_in(app):
    """The refusal is a lazy translation, read in the console's Chinese, the API's English and the log's English:
    its list is joined when it is read, not when it is raised."""
    from flask_babel import force_locale

    from app.admission import information
    from app.errors import ValidationFailed
    from app.i18n import english

    with app.test_request_context("/"), force_locale("zh_CN"):
        with pytest.raises(ValidationFailed) as refused:
            information.capabilities(["text", "teleport", "telepathy"])
        assert str(refused.value.message) == "未知功能：teleport、telepathy。"
        assert english(refused.value.message) == "Unknown capability: teleport, telepathy."


def test_the_dashboard_counts_one_of_a_kind_in_the_singular(app, make_user, admin_console):
    """"1 provinces, 1 prefectures, 1 counties" and "1 / valid node certificates" on the English dashboard."""
    from sqlalchemy import update

    from app.admission import applications
    from app.divisions.models import Division
    from tests.factories import node_document

    minister = db.session.scalar(db.select(User).where(User.username == "minister"))
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    applications.approve(applications.submit_by_user(node_document("360000"), by=jx_admin), by=minister)
    db.session.commit()
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert re.search(r"\d\d provinces, \d{3} prefectures, \d{4} counties<", page), page
    assert "<p>valid node certificate</p>" in page, page

    kept = {level: db.session.scalar(db.select(Division.code).where(
        Division.level == level, Division.code.like("36%"), Division.retired.is_(False)).order_by(Division.code))
        for level in ("province", "prefecture", "county")}
    db.session.execute(update(Division).where(Division.code.not_in(kept.values()), Division.retired.is_(False))
                       .values(retired=True, retired_in="2099"))
    db.session.commit()
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "1 province, 1 prefecture, 1 county<" in page, page
    admin_console.client.get("/lang/zh_CN")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "1 个省级、1 个地级、1 个县级<" in page and "<p>个有效的节点证书</p>" in page, page
