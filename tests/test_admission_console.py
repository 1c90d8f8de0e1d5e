"""Admission console pages through the test client: tokens, nodes list, resolve, dashboard."""

from __future__ import annotations

import json
import re

from app.admission import tokens
from app.admission.models import EnrollmentToken
from app.auth.models import User
from app.extensions import db
from tests.conftest import Console


def test_token_page_shows_a_new_token_once(app, make_user):
    """The raw token is in the answer to the POST that issued it, never in the session cookie (signed, not
    encrypted: anyone who sees the cookie could read it, and a copied cookie would show it again)."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    posted = console.post_form("/tokens/", {"division_code": "360000", "ttl": "7d", "note": "赣警通"})
    assert posted.status_code == 200 and "no-store" in posted.headers["Cache-Control"]
    raw = re.search(r'id="issued-token">(mpet_[^<]+)<', posted.get_data(as_text=True)).group(1)
    assert tokens.find_by_raw(raw).division_code == "360000"
    cookie = console.client.get_cookie("session").value
    assert raw not in json.dumps(app.session_interface.get_signing_serializer(app).loads(cookie))
    again = console.client.get("/tokens/").get_data(as_text=True)
    assert raw not in again and raw[:11] in again
    console.client.set_cookie("session", cookie)  # the cookie as it was after the POST, copied
    assert raw not in console.client.get("/tokens/").get_data(as_text=True)
    assert db.session.scalar(db.select(db.func.count()).select_from(EnrollmentToken)) == 1


def test_a_division_code_pasted_with_blanks_around_it_is_taken(app, make_user):
    """WTForms' Length(max=6) ran before the view's strip(): " 360000 " was refused as longer than 6 characters,
    on the token form and on the application form."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    posted = console.post_form("/tokens/", {"division_code": " 360000 ", "ttl": "7d"})
    assert re.search(r'id="issued-token">mpet_', posted.get_data(as_text=True))
    assert db.session.scalar(db.select(EnrollmentToken.division_code)) == "360000"
    from tests.factories import application_form, make_csr

    form = application_form("\t360000 ", csr=make_csr())
    answer = console.post_form("/applications/new", form)
    assert answer.status_code == 302, answer.get_data(as_text=True)[:2000]


def test_a_division_code_typed_in_full_width_digits_is_taken(app, make_user, runner):
    """A Chinese input method in full-width mode types ３６００００: the division search took it, while the token
    form, the application form, the resolve page and the user's scope refused it as "not six digits"."""
    minister = make_user("minister")
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    posted = console.post_form("/tokens/", {"division_code": "３６００００", "ttl": "7d"})
    assert re.search(r'id="issued-token">mpet_', posted.get_data(as_text=True))
    assert db.session.scalar(db.select(EnrollmentToken.division_code)) == "360000"
    from tests.factories import application_form, make_csr

    answer = console.post_form("/applications/new", application_form("３６０１０２", csr=make_csr()))
    assert answer.status_code == 302, answer.get_data(as_text=True)[:2000]
    resolved = console.client.get("/nodes/resolve?division=３６０１０２").get_data(as_text=True)
    assert "不是区划代码" not in resolved and 'value="360102"' in resolved
    admin = Console(app.test_client())
    admin.login(minister.username)
    edited = admin.post_form("/users/new", {"username": "gd-admin", "display_name": "广东省厅",
                                            "role": "provincial_admin", "scopes": "４４００００，３６００００",
                                            "password": "Guangdong-Admin-7", "active": "y"})
    assert edited.status_code == 302, edited.get_data(as_text=True)[:2000]
    assert db.session.scalar(db.select(User.scope_codes).where(User.username == "gd-admin")) == "360000,440000"
    result = runner.invoke(args=["users", "update", "gd-admin", "--scope", "４４００００"])
    assert result.exit_code == 0, result.output


def test_token_outside_scope_is_refused_in_the_form(app, make_user):
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    refused = console.post_form("/tokens/", {"division_code": "440000", "ttl": "7d"})
    html = refused.get_data(as_text=True)
    assert "不在您的管辖范围内" in html and "issued-token" not in html
    assert refused.status_code == 422  # refused, as a refused application or rejection answers


def test_auditor_sees_nodes_but_not_tokens(app, make_user):
    make_user("eye", "auditor")
    console = Console(app.test_client())
    console.login("eye")
    assert console.client.get("/nodes/").status_code == 200
    assert console.client.get("/tokens/").status_code == 403
    assert console.client.get("/applications/").status_code == 403


def test_an_auditor_reads_the_nodes_application_id_as_text_not_as_a_link_answering_403(app, make_user, admin_console):
    """The node page linked every reader to the application it was admitted with; application pages are the
    admins' (auditors have no applications list either), so an auditor's link answered 403."""
    from app.admission import applications
    from tests.factories import node_document

    minister = db.session.scalar(db.select(User).where(User.username == "minister"))
    document = node_document("360000")
    node = applications.approve(applications.submit_by_user(document, by=minister),
                                by=minister)
    db.session.commit()
    link = f'href="/applications/{node.application_id}"'
    assert link in admin_console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    make_user("eye", "auditor")
    auditor = Console(app.test_client())
    auditor.login("eye")
    page = auditor.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert link not in page and f'<code id="node-application">{node.application_id}</code>' in page
    assert auditor.client.get(f"/applications/{node.application_id}").status_code == 403


def test_dashboard_has_the_province_tile_map(admin_console):
    html = admin_console.client.get("/").get_data(as_text=True)
    assert html.count("data-province=") == 34 and "<svg" in html


def test_long_english_province_names_break_between_syllables_instead_of_shrinking(app):
    """A one-word English name too wide for a tile ("Heilongjiang") takes two lines, broken with a hyphen
    between pinyin syllables, at the size two-word names get; it was set at 9 px to fit one line."""
    from app.admission.tilemap import TILES, tile_label
    from app.divisions.names import ENGLISH_NAMES

    assert tile_label("Heilongjiang") == (["Heilong-", "jiang"], 12)
    assert tile_label("Guangdong") == (["Guang-", "dong"], 12)
    assert tile_label("Chongqing") == (["Chong-", "qing"], 12)
    assert tile_label("Beijing") == (["Beijing"], 14)  # fits: one line, full size
    assert tile_label("黑龙江") == (["黑龙江"], 14)
    for prefix in TILES:
        lines, size = tile_label(ENGLISH_NAMES[f"{prefix}0000"])
        assert size >= 11, (lines, size)
        assert all(line.rstrip("-") for line in lines)


def test_province_names_follow_the_console_language(admin_console):
    from app.admission import applications
    from tests.factories import node_document

    minister = db.session.scalar(db.select(User).where(User.username == "minister"))
    province, county = (node_document(code, org_name="公安厅") for code in ("440000", "440106"))
    node = applications.approve(applications.submit_by_user(province, by=minister),
                                by=minister)
    pending = applications.submit_by_user(county, by=minister)
    db.session.commit()
    client = admin_console.client
    pages = ("/", "/nodes/", f"/nodes/{node.node_id}", "/applications/?status=all", f"/applications/{pending.id}")
    client.get("/lang/en")
    english = {page: client.get(page).get_data(as_text=True) for page in pages}
    tile = r'data-province="{}"><title>[^<]*</title><rect[^>]*/><text[^>]*><tspan[^>]*>{}</tspan>'
    assert re.search(tile.format(44, "Guang-") + "<tspan[^>]*>dong</tspan>", english["/"])  # too long for a line
    assert re.search(tile.format(15, "Inner") + "<tspan", english["/"])  # two words, two lines on the tile
    assert '<option value="440000">Guangdong</option>' in english["/nodes/"]
    assert "<td>Guangdong</td>" in english["/nodes/"]
    assert "<dd>Guangdong <code>440000</code>" in english[f"/nodes/{node.node_id}"]
    assert "Guangdong <code>440000</code>" in english["/applications/?status=all"]
    # Counties keep their Chinese name, marked as Chinese for a screen reader.
    assert '<span lang="zh-CN">天河区</span> <code>440106</code>' in english["/applications/?status=all"]
    assert ('Guangdong / <span lang="zh-CN">广州市</span> / <span lang="zh-CN">天河区</span> <code>440106</code>'
            in english[f"/applications/{pending.id}"])
    assert not any("广东" in html for html in english.values())
    client.get("/lang/zh_CN")
    chinese = {page: client.get(page).get_data(as_text=True) for page in pages}
    assert re.search(tile.format(44, "广东"), chinese["/"])
    assert '<option value="440000">广东</option>' in chinese["/nodes/"] and "<td>广东省</td>" in chinese["/nodes/"]
    assert "广东省 / 广州市 / 天河区 <code>440106</code>" in chinese[f"/applications/{pending.id}"]
    assert not any("Guangdong" in html for html in chinese.values())


def test_resolve_page_explains_a_miss(admin_console):
    html = admin_console.client.get("/nodes/resolve?division=360102").get_data(as_text=True)
    assert "没有" in html or "No active node" in html



def test_resolve_links_the_serving_node_only_for_a_user_who_may_open_it(app, make_user):
    """A Jiangxi admin resolving 440103 was sent by the node id's link to "没有节点 …" (404, the node is outside
    their scope), under the line that named it; the id is plain text to them (the answer is public anyway, at
    /api/v1/resolve), and a link to whoever may open the node."""
    from tests.test_admission_review import admit

    minister = make_user("minister")
    node = admit(make_user("gd-admin", "provincial_admin", ("440000",)), minister, "440000")
    make_user("jx-admin", "provincial_admin", ("360000",))
    link = f'href="/nodes/{node.node_id}"'
    for username, may_open in (("jx-admin", False), ("gd-admin", True), ("minister", True)):
        console = Console(app.test_client())
        console.login(username)
        html = console.client.get("/nodes/resolve?division=440103").get_data(as_text=True)
        result = re.search(r'<section class="card" id="resolve-result">.*?</section>', html, re.S).group(0)
        assert f"<code>{node.node_id}</code>" in result, username
        assert (link in result) == may_open, username
        assert console.client.get(f"/nodes/{node.node_id}").status_code == (200 if may_open else 404), username


def test_resolve_names_the_level_it_matched_at_as_a_sentence_does(app, make_user):
    """The sentence reused the levels' column labels, so English read "matched at the Prefecture level"
    mid-sentence; it has level words of its own, and Chinese keeps 在地级匹配."""
    from tests.test_admission_review import admit

    minister = make_user("minister")
    applicant = make_user("gd-admin", "provincial_admin", ("440000",))
    for code in ("440000", "440100", "440103"):
        admit(applicant, minister, code)
    console = Console(app.test_client())
    console.login("minister")
    said = {}
    for language in ("zh_CN", "en"):
        console.client.get(f"/lang/{language}")
        for code in ("440103", "440104", "440200"):
            html = console.client.get(f"/nodes/resolve?division={code}").get_data(as_text=True)
            result = re.search(r'<section class="card" id="resolve-result">.*?</section>', html, re.S).group(0)
            said[language, code] = re.search(r"— ([^<]*)</p>", result).group(1)
    assert said["zh_CN", "440103"] == "在县级匹配（440103）"
    assert said["zh_CN", "440104"] == "在地级匹配（440100）"
    assert said["zh_CN", "440200"] == "在省级匹配（440000）"
    assert said["en", "440103"] == "matched at the county level (440103)"
    assert said["en", "440104"] == "matched at the prefecture level (440100)"
    assert said["en", "440200"] == "matched at the province level (440000)"

def test_revoking_a_used_token_is_refused(app, make_user):
    user = make_user("jx-admin", "provincial_admin", ("360000",))
    token, _ = tokens.create_token("360000", by=user)
    token.used_at = token.created_at
    db.session.commit()
    console = Console(app.test_client())
    console.login("jx-admin")
    response = console.post_form("/tokens/", {}, action=f"/tokens/{token.id}/revoke")
    assert response.status_code == 302
    db.session.expire_all()
    assert token.revoked_at is None and token.state() == "used"


def test_token_list_shows_a_token_whose_issuer_could_not_issue_it_as_not_usable_and_why(app, make_user):
    from app.auth import service as users

    minister = make_user("minister")
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    kept, _ = tokens.create_token("450000", by=minister)
    left, _ = tokens.create_token("360000", by=jx_admin)
    moved, _ = tokens.create_token("440100", by=gd_admin)
    db.session.commit()
    users.update_user(jx_admin, role="provincial_admin", scopes=["360000"], active=False, display_name="")
    users.update_user(gd_admin, role="provincial_admin", scopes=["450000"], active=True, display_name="")
    db.session.commit()
    console = Console(app.test_client())
    console.login("minister")
    html = console.client.get("/tokens/").get_data(as_text=True)
    rows = {prefix: row for row in html.split("<tr>") for prefix in (kept.prefix, left.prefix, moved.prefix)
            if prefix in row}
    assert "未使用" in rows[kept.prefix] and "不可用" not in rows[kept.prefix]
    assert "不可用" in rows[left.prefix] and "签发人 jx-admin 的账户已停用。" in rows[left.prefix]
    assert "不可用" in rows[moved.prefix] and "签发人 gd-admin 的管辖范围已不包含 440100。" in rows[moved.prefix]
    assert all('class="danger"' in row for row in rows.values())  # not final: an admin may still revoke them


def test_console_refuses_endpoint_port_zero_in_the_form(app, make_user):
    from app.admission.models import Application
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    form = application_form(endpoint="https://10.2.2.2:0", csr=make_csr())
    html = console.post_form("/applications/new", form).get_data(as_text=True)
    assert "65535" in html and 'value="https://10.2.2.2:0"' in html
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_console_takes_a_name_of_invisible_characters_for_no_name_as_the_api_does(app, make_user):
    """"\u200b" and "\ufeff" passed the form's DataRequired and the A.1 checks, and an application whose unit
    and contact show as nothing waited for review."""
    from app.admission.models import Application
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    form = application_form(org_name="\u200b", contact_name="\ufeff\u3000", csr=make_csr())
    html = console.post_form("/applications/new", form).get_data(as_text=True)
    assert "为必填项" in _error_at(html, "org_name") and "为必填项" in _error_at(html, "contact_name")
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_console_refuses_a_csr_with_text_around_its_pem_block_as_the_api_does(app, make_user):
    import io

    from app.admission.models import Application
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    for form in (application_form(csr=make_csr() + "\u202e\x07"),
                 application_form(csr_file=(io.BytesIO(make_csr().encode() + b"\x00"), "node.csr"))):
        html = console.post_form("/applications/new", form).get_data(as_text=True)
        assert "-----BEGIN CERTIFICATE REQUEST-----" in _error_at(html, "csr")
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_console_refuses_a_bracketed_host_that_is_no_ipv6_address_as_the_api_does(app, make_user):
    from app.admission.models import Application
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    form = application_form(endpoint="https://[v1.x]:8443/im", csr=make_csr())
    html = console.post_form("/applications/new", form).get_data(as_text=True)
    assert "IPv6" in html and 'value="https://[v1.x]:8443/im"' in html
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_an_endpoint_refusal_in_the_console_names_the_node_only_to_an_admin_who_may_see_it(app, make_user):
    from app.admission import applications
    from tests.factories import application_form, make_csr, node_document

    minister, jx = make_user("minister"), make_user("jx-admin", "provincial_admin", ("360000",))
    make_user("gd-admin", "provincial_admin", ("440000",))
    taken = node_document("360000", endpoint="https://im.jx.example")
    node = applications.approve(applications.submit_by_user(taken, by=jx), by=minister)
    waiting = node_document("360000", endpoint="https://im2.jx.example")
    application = applications.submit_by_user(waiting, by=jx)
    db.session.commit()
    for who, shown in (("jx-admin", True), ("gd-admin", False)):
        console = Console(app.test_client())
        console.login(who)
        html = console.post_form("/applications/new", application_form(
            "360000" if shown else "440000", endpoint="https://im.jx.example", csr=make_csr())).get_data(as_text=True)
        assert "已使用 https://im.jx.example" in html and (node.node_id in html) is shown, who
        html = console.post_form("/applications/new", application_form(
            "360000" if shown else "440000", endpoint="https://im2.jx.example", csr=make_csr())).get_data(as_text=True)
        assert "https://im2.jx.example" in html and "等待审核" in html and (application.id in html) is shown, who


def test_a_csr_both_pasted_and_uploaded_is_refused_rather_than_guessed(app, make_user):
    import io

    from app.admission.models import Application
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    form = application_form(csr=make_csr(), csr_file=(io.BytesIO(make_csr().encode()), "node.csr"))
    html = console.post_form("/applications/new", form).get_data(as_text=True)
    assert "不能同时" in html and 'value="赣警通"' in html
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_revoking_another_provinces_token_reads_as_no_such_token(app, make_user):
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    token, _ = tokens.create_token("440000", by=gd_admin)
    db.session.commit()
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    def flash_after_revoking(token_id):
        response = console.post_form("/tokens/", {}, action=f"/tokens/{token_id}/revoke")
        html = console.client.get(response.headers["Location"]).get_data(as_text=True)
        return re.search(r'class="flash error"[^>]*>([^<]*)<', html).group(1)

    foreign, missing = flash_after_revoking(token.id), flash_after_revoking(999999)
    assert foreign == missing and "440000" not in foreign
    db.session.expire_all()
    assert token.state() == "active"


def test_node_search_treats_percent_and_underscore_as_characters(app, make_user):
    from app.admission import applications
    from tests.factories import node_document

    minister = make_user("minister")
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    for org_name in ("江西省公安厅", "100%_网络"):
        document = node_document(org_name=org_name)
        applications.approve(applications.submit_by_user(document, by=jx_admin), by=minister)
    db.session.commit()
    console = Console(app.test_client())
    console.login("minister")
    for term, expected in (("%", 1), ("_", 1), ("%_", 1), ("0%", 1), ("公安", 1)):
        html = console.client.get("/nodes/", query_string={"q": term}).get_data(as_text=True)
        assert html.count('href="/nodes/3600') == expected, term
    for capability, expected in (("%", 0), ("text", 2)):  # the capability filter takes known names only
        html = console.client.get("/nodes/", query_string={"capability": capability}).get_data(as_text=True)
        assert html.count('href="/nodes/3600') == expected, capability
    # The audit log's target and action filters, and the divisions search, take % and _ as typed too.
    for query, some in (({"target": "%"}, False), ({"action": "_"}, False), ({"target": "jx-admin"}, True)):
        html = console.client.get("/audit/", query_string=query).get_data(as_text=True)
        assert ("<tr><td>" in html) is some, query
    html = console.client.get("/divisions/", query_string={"q": "%"}).get_data(as_text=True)
    assert "东湖区" not in html and "北京市" not in html


def test_asking_for_a_suspension_says_so_and_the_ministry_dashboard_counts_it(app, make_user, admin_console):
    from app.admission import applications
    from tests.factories import node_document

    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    document = node_document()
    node = applications.approve(applications.submit_by_user(document, by=jx_admin),
                                by=db.session.scalar(db.select(User).where(User.username == "minister")))
    db.session.commit()
    console = Console(app.test_client())
    console.login("jx-admin")
    response = console.post_form(f"/nodes/{node.node_id}", {"reason": "looks hacked"},
                                 action=f"/nodes/{node.node_id}/request-suspension")
    html = console.client.get(response.headers["Location"]).get_data(as_text=True)
    flash = re.search(r'class="flash success"[^>]*>([^<]*)<', html).group(1)
    assert node.node_id in flash and "启用" not in flash and "active" not in flash
    dashboard = admin_console.client.get("/").get_data(as_text=True)
    link = re.search(r'<a href="([^"]+)" id="suspension-requests">([^<]*)<', dashboard)
    assert link and link.group(2) == "1 个暂停申请等待决定"
    admin_console.client.get("/lang/en")
    english = admin_console.client.get("/").get_data(as_text=True)
    assert "1 suspension request waiting for a decision" in english and "0 applications waiting" in english
    admin_console.client.get("/lang/zh_CN")
    listed = admin_console.client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert node.node_id in listed


def test_a_page_number_past_any_offset_shows_the_first_page_of_an_empty_list(admin_console):
    """An old or typed link: page 10**30 of a list with nothing in it was an offset no database holds."""
    for path in ("/nodes/", "/applications/", "/tokens/", "/health/events"):
        response = admin_console.client.get(path, query_string={"page": str(10**30)})
        assert response.status_code == 200, path


def test_revoking_a_token_number_no_column_holds_reads_as_no_such_token(app, make_user, runner):
    """2**31 is past PostgreSQL's integer and 10**30 past SQLite's: each answered 500 in the console and
    ended in a traceback from `flask tokens revoke`."""
    make_user("minister")
    console = Console(app.test_client())
    console.login("minister")
    for token_id in (2**31, 10**30):
        response = console.post_form("/tokens/", {}, action=f"/tokens/{token_id}/revoke")
        assert response.status_code == 302, token_id
        html = console.client.get(response.headers["Location"]).get_data(as_text=True)
        assert "没有该接入令牌" in html, token_id
        result = runner.invoke(args=["tokens", "revoke", str(token_id), "--user", "minister"])
        assert result.exit_code == 1 and result.output.startswith("error: No such enrollment token"), result.output


def test_an_unknown_capability_is_refused_in_the_readers_language_and_the_form_kept(app, make_user):
    """WTForms' refusal of a value its checkboxes do not offer is English on the Chinese console."""
    from app.admission.models import Application
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    form = application_form(csr=make_csr(), capabilities=["text", "teleport"])
    html = console.post_form("/applications/new", form).get_data(as_text=True)
    assert "未知功能：teleport" in html and "not a valid choice" not in html and 'value="赣警通"' in html
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_the_dashboard_names_a_few_nodes_on_retired_codes_and_the_nodes_list_pages_through_all(app, make_user,
                                                                                                 admin_console):
    """A GB/T 2260 revision can retire the codes of many nodes at once: the dashboard listed every one of them."""
    from app.admission import applications
    from app.divisions.models import Division
    from tests.factories import node_document

    minister = db.session.scalar(db.select(User).where(User.username == "minister"))
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    codes = [code for code in db.session.scalars(db.select(Division.code).where(
        Division.code.like("36__%"), Division.level == "county", Division.retired.is_(False))
        .order_by(Division.code).limit(12))]
    admitted = []
    for number, code in enumerate(codes):
        document = node_document(code, endpoint=f"https://n{number}.jx.example")
        admitted.append(applications.approve(applications.submit_by_user(document,
                                                                         by=jx_admin), by=minister).node_id)
    for division in db.session.scalars(db.select(Division).where(Division.code.in_(codes))):
        division.retired, division.retired_in = True, "2099"
    db.session.commit()
    dashboard = admin_console.client.get("/").get_data(as_text=True)
    named = [node_id for node_id in admitted if f'href="/nodes/{node_id}"' in dashboard]
    assert len(named) == 10
    link = re.search(r'<a href="([^"]+)" id="retired-division-nodes">([^<]*)<', dashboard)
    assert link and link.group(2) == "全部 12 个，见节点列表"
    listed = admin_console.client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert sum(f'href="/nodes/{node_id}"' in listed for node_id in admitted) == 12


def test_a_provincial_admins_tile_map_marks_the_provinces_outside_their_divisions_as_such(app, make_user):
    """For a provincial admin every other province was grey, which the legend calls "no node", though Beijing
    and others had nodes; and each was a link to a nodes list that could only be empty for them."""
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    html = console.client.get("/").get_data(as_text=True)
    assert html.count("data-province=") == 34
    assert re.search(r'<a href="/nodes/\?province=3600" data-province="36">', html)
    beijing = re.search(r'<g data-province="11" class="outside">\s*<title>([^<]*)</title>', html)
    assert beijing and beijing.group(1) == "北京：不在您的管辖范围", html[html.find('data-province="11"') - 80:][:300]
    assert 'href="/nodes/?province=1100"' not in html
    assert "虚线：不在您的管辖范围。" in html
    make_user("minister", "ministry_admin")
    minister = Console(app.test_client())
    minister.login("minister")
    everything = minister.client.get("/").get_data(as_text=True)
    assert "虚线" not in everything and 'class="outside"' not in everything


def _requested_node(make_user, jx_admin_name="jx-admin"):
    from app.admission import applications, nodes
    from tests.factories import node_document

    jx_admin = make_user(jx_admin_name, "provincial_admin", ("360000",))
    document = node_document()
    node = applications.approve(applications.submit_by_user(document, by=jx_admin),
                                by=db.session.scalar(db.select(User).where(User.username == "minister")))
    nodes.request_suspension(node, "looks hacked", by=jx_admin)
    db.session.commit()
    return node


def _action_form(html, node_id, action):
    found = re.search(rf'<form [^>]*action="/nodes/{node_id}/{action}"[^>]*>', html)
    return found.group(0) if found else None


def test_the_ministry_declines_a_suspension_request_from_the_node_page_and_the_requester_sees_it(
        app, make_user, admin_console):
    """The dashboard's link led to a page offering only suspend and revoke: nothing declined a request."""
    from app.admission.models import Node
    from app.audit.models import AuditRecord

    node = _requested_node(make_user)
    page = admin_console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    form = _action_form(page, node.node_id, "decline-suspension")
    assert form and 'data-confirm="' in form  # asks before it acts, as every other state change
    no_token = admin_console.client.post(f"/nodes/{node.node_id}/decline-suspension", data={"reason": "x"})
    assert no_token.status_code == 400  # CSRF
    response = admin_console.post_form(f"/nodes/{node.node_id}", {"reason": "没有证据"},
                                       action=f"/nodes/{node.node_id}/decline-suspension")
    assert response.status_code == 302
    html = admin_console.client.get(response.headers["Location"]).get_data(as_text=True)
    flash = re.search(r'class="flash success"[^>]*>([^<]*)<', html).group(1)
    assert node.node_id in flash and "已驳回" in flash
    assert _action_form(html, node.node_id, "decline-suspension") is None
    dashboard = admin_console.client.get("/").get_data(as_text=True)
    assert 'id="suspension-requests"' not in dashboard or "0 个暂停申请" in dashboard
    db.session.expire_all()
    assert not db.session.get(Node, node.node_id).suspension_requested
    assert db.session.scalar(db.select(AuditRecord.actor).where(AuditRecord.action == "node.decline_suspension")) \
        == "minister"
    requester = Console(app.test_client())
    requester.login("jx-admin")
    seen = requester.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    declined = re.search(r'<dt>暂停申请已驳回</dt><dd>([^<]*)</dd>', seen)
    assert declined and "minister" in declined.group(1) and "没有证据" in declined.group(1)
    audit = admin_console.client.get("/audit/", query_string={"target": node.node_id}).get_data(as_text=True)
    assert "暂停申请已驳回" in audit


def test_a_provincial_admin_withdraws_a_suspension_request_and_cannot_decline_it(app, make_user, admin_console):
    from app.admission.models import Node
    from app.audit.models import AuditRecord

    node = _requested_node(make_user)
    requester = Console(app.test_client())
    requester.login("jx-admin")
    page = requester.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert _action_form(page, node.node_id, "decline-suspension") is None
    form = _action_form(page, node.node_id, "withdraw-suspension")
    assert form and 'data-confirm="' in form
    assert _action_form(admin_console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True), node.node_id,
                        "withdraw-suspension") is None  # the ministry declines instead
    refused = requester.post_form(f"/nodes/{node.node_id}", {"reason": "x"},
                                  action=f"/nodes/{node.node_id}/decline-suspension")
    assert refused.status_code == 403
    response = requester.post_form(f"/nodes/{node.node_id}", {"reason": ""},
                                   action=f"/nodes/{node.node_id}/withdraw-suspension")  # no reason needed
    assert response.status_code == 302
    html = requester.client.get(response.headers["Location"]).get_data(as_text=True)
    flash = re.search(r'class="flash success"[^>]*>([^<]*)<', html).group(1)
    assert node.node_id in flash and "已撤回" in flash
    assert _action_form(html, node.node_id, "request-suspension")  # may ask again
    db.session.expire_all()
    assert not db.session.get(Node, node.node_id).suspension_requested
    assert db.session.scalar(db.select(AuditRecord.actor).where(AuditRecord.action == "node.withdraw_suspension")) \
        == "jx-admin"
    again = requester.post_form(f"/nodes/{node.node_id}", {"reason": ""},
                                action=f"/nodes/{node.node_id}/withdraw-suspension")
    assert again.status_code == 422 and "没有等待决定的暂停申请" in again.get_data(as_text=True)


def test_a_ministry_admin_posting_a_withdrawal_is_refused_and_the_request_stands(app, make_user, admin_console):
    """The node page offers the ministry no Withdraw button; a hand-made POST is refused as the service refuses
    it, with the way out (decline) said beside the form."""
    from app.admission.models import Node

    node = _requested_node(make_user)
    refused = admin_console.post_form(f"/nodes/{node.node_id}", {"reason": "done here"},
                                      action=f"/nodes/{node.node_id}/withdraw-suspension")
    assert refused.status_code == 403
    html = refused.get_data(as_text=True)
    assert "部级管理员应驳回暂停申请并说明理由" in html and 'value="done here"' in html
    db.session.expire_all()
    assert db.session.get(Node, node.node_id).suspension_requested


def test_a_provincial_admin_of_another_province_cannot_withdraw_a_suspension_request(app, make_user, admin_console):
    from app.admission.models import Node

    node = _requested_node(make_user)
    make_user("gd-admin", "provincial_admin", ("440000",))
    outsider = Console(app.test_client())
    outsider.login("gd-admin")
    token_page = outsider.client.get("/nodes/").get_data(as_text=True)
    from tests.conftest import csrf_token

    response = outsider.client.post(f"/nodes/{node.node_id}/withdraw-suspension",
                                    data={"reason": "", "csrf_token": csrf_token(token_page)})
    assert response.status_code == 404  # as a node outside its divisions always answers
    db.session.expire_all()
    assert db.session.get(Node, node.node_id).suspension_requested


def _error_at(html: str, field: str) -> str:
    """The text of the first refusal the page shows at `field` (macros.html: id="<field>-error-1")."""
    found = re.search(rf'id="{field}-error-1">([^<]*)<', html)
    assert found, f"no error at {field}"
    return found.group(1)


def test_one_submit_of_the_application_form_shows_every_fields_refusal_at_its_field(app, make_user):
    """A browser walk needed six round trips for six wrong fields: the form showed one refusal per submit."""
    from app.admission.models import Application
    from tests.factories import application_form

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    form = application_form(division="999999", org_name="", endpoint="http://im.jx.example", contact_phone="abc",
                            contact_email="not-an-email", capabilities=[], csr="garbage")
    response = console.post_form("/applications/new", form)
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    for field in ("division_code", "org_name", "contact_phone", "contact_email", "endpoint", "capabilities", "csr"):
        assert _error_at(html, field), field
    assert "https://" in _error_at(html, "endpoint")
    for typed in ('value="http://im.jx.example"', 'value="abc"', 'value="not-an-email"', 'value="赣警通"'):
        assert typed in html, typed
    assert "garbage</textarea>" in html
    assert 'class="flash error"' not in html
    assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_the_application_forms_refusals_come_once_per_field(app, make_user):
    """A field WTForms refuses (empty) is not refused a second time by the A.1 parser."""
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    html = console.post_form("/applications/new", application_form(org_name="", contact_phone="abc",
                                                                   csr=make_csr())).get_data(as_text=True)
    assert _error_at(html, "org_name") and _error_at(html, "contact_phone")
    assert 'id="org_name-error-2"' not in html and 'id="csr-error-1"' not in html


def test_one_good_submit_of_the_application_form_reads_its_csr_once(app, make_user, monkeypatch):
    """The form's checks and then the service each parsed and checked the CSR: a good submit read it three times
    and applied the key policy twice. A new application and a change request with a new CSR alike."""
    from app.admission import applications
    from app.admission.models import Application
    from tests.factories import application_form, count_csr_reads, make_csr

    make_user("minister")
    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    reads = count_csr_reads(monkeypatch)
    response = console.post_form("/applications/new", application_form(csr=make_csr()))
    assert response.status_code == 302
    assert reads == {"load_csr": 1, "check_csr": 1}

    application = db.session.scalar(db.select(Application))
    node = applications.approve(application, by=db.session.scalar(db.select(User).where(User.username == "minister")))
    db.session.commit()
    reads.update(load_csr=0, check_csr=0)
    response = console.post_form(f"/nodes/{node.node_id}/change", application_form(
        endpoint="https://im-new.jx.example", csr=make_csr()))
    assert response.status_code == 302
    assert reads == {"load_csr": 1, "check_csr": 1}


def test_the_review_page_names_a_few_nodes_of_the_division_and_links_the_nodes_list_of_it(app, make_user,
                                                                                          admin_console):
    """The review page listed every node of the division: with dozens, the decision card was buried under them."""
    from app.admission import applications
    from tests.factories import node_document

    minister = db.session.scalar(db.select(User).where(User.username == "minister"))
    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    admitted = [applications.approve(applications.submit_by_user(
        node_document("360100", endpoint=f"https://n{number}.nc.example"), by=jx_admin), by=minister).node_id
        for number in range(12)]
    elsewhere = applications.approve(applications.submit_by_user(
        node_document("360200", endpoint="https://jdz.example"), by=jx_admin), by=minister).node_id
    waiting = applications.submit_by_user(node_document("360100", endpoint="https://n99.nc.example"), by=jx_admin)
    db.session.commit()
    page = admin_console.client.get(f"/applications/{waiting.id}").get_data(as_text=True)
    assert sum(f'href="/nodes/{node_id}"' in page for node_id in admitted) == 10
    link = re.search(r'<a href="([^"]+)" id="division-nodes">([^<]*)<', page)
    assert link and link.group(2) == "全部 12 个，见节点列表", page[page.find("该区划已有的节点"):][:600]
    assert page.find('id="division-nodes"') < page.find('id="approve"')
    listed = admin_console.client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert sum(f'href="/nodes/{node_id}"' in listed for node_id in admitted) == 12
    assert f'href="/nodes/{elsewhere}"' not in listed and 'value="360100"' in listed
    # A revoked node of the division is not shown above the decision, but the list linked has it: the link's
    # figure is the list's ("all 12" had led to 13).
    from app.admission import nodes

    nodes.revoke(nodes.get(admitted[-1]), "drill", by=minister)
    db.session.commit()
    page = admin_console.client.get(f"/applications/{waiting.id}").get_data(as_text=True)
    assert sum(f'href="/nodes/{node_id}"' in page for node_id in admitted) == 10
    link = re.search(r'<a href="([^"]+)" id="division-nodes">([^<]*)<', page)
    listed = admin_console.client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert link.group(2) == "全部 12 个，见节点列表"
    assert sum(f'href="/nodes/{node_id}"' in listed for node_id in admitted) == 12


def test_a_provincial_admins_dashboard_counts_the_applications_of_their_divisions_waiting_for_review(app, make_user):
    """Only the ministry's dashboard said how many applications wait: a provincial admin had to open the list to
    learn whether one of theirs was still waiting."""
    from app.admission import applications
    from tests.factories import node_document

    jx_admin = make_user("jx-admin", "provincial_admin", ("360000",))
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    theirs = [applications.submit_by_user(node_document(code), by=jx_admin).id for code in ("360100", "360200")]
    other = applications.submit_by_user(node_document("440100", endpoint="https://im.gd.example"), by=gd_admin).id
    db.session.commit()
    console = Console(app.test_client())
    console.login("jx-admin")
    html = console.client.get("/").get_data(as_text=True)
    link = re.search(r'<a href="([^"]+)" id="pending-applications">([^<]*)<', html)
    assert link and link.group(2) == "您辖区的 2 个申请待审核", html[html.find("class=\"tiles\""):][:800]
    listed = console.client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert all(f'href="/applications/{number}"' in listed for number in theirs)
    assert f'href="/applications/{other}"' not in listed


def test_the_declined_request_is_read_from_the_log_as_stored(app, make_user, admin_console):
    """The node page read the decline as an ORM object, newest number first: a decline whose time was edited into
    no time answered 500 (SQLite's DateTime and PostgreSQL's driver refuse it), and on SQLite an older request
    whose number was edited into text sorted above the decline and hid it. The page reads the log as `verify`
    does (`app.audit.stored`), newest whole-numbered record first, and shows what the database holds."""
    from app.admission import nodes
    from app.audit.models import AuditRecord
    from tests.test_audit import edit_unguarded

    node = _requested_node(make_user)
    nodes.decline_suspension(node, "没有证据", by=db.session.scalar(db.select(User).where(User.username == "minister")))
    db.session.commit()
    request_seq = db.session.scalar(db.select(AuditRecord.seq).where(AuditRecord.action == "node.request_suspension"))
    no_time = "infinity" if db.engine.dialect.name == "postgresql" else "no time"
    edits = [f"UPDATE audit_records SET at = '{no_time}' WHERE action = 'node.decline_suspension'"]
    if db.engine.dialect.name == "sqlite":  # PostgreSQL's integer column refuses text
        edits.append(f"UPDATE audit_records SET seq = '{request_seq}a' WHERE seq = {request_seq}")
    edit_unguarded(edits)
    requester = Console(app.test_client())
    requester.login("jx-admin")
    page = requester.client.get(f"/nodes/{node.node_id}")
    assert page.status_code == 200
    declined = re.search(r'<dt>暂停申请已驳回</dt><dd>(.*?)</dd>', page.get_data(as_text=True))
    assert declined and "minister" in declined.group(1) and "没有证据" in declined.group(1)
    assert f'<code class="stored">{no_time}</code>' in declined.group(1)


def test_an_application_form_without_a_capability_asks_for_one_in_the_readers_words(app, make_user, client):
    """The form said "capabilities must be a non-empty list.", the API's words about its JSON key. The API keeps
    them, with its field and code; a change request's form, the same form, asks as the new application's does."""
    from app.admission import applications
    from tests.factories import application_form, make_csr, node_document

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    html = console.post_form("/applications/new", application_form(capabilities=[], csr=make_csr())).get_data(
        as_text=True)
    assert _error_at(html, "capabilities") == "请至少选择一项支持功能。"
    assert 'id="capabilities-error-2"' not in html and "required" not in re.search(
        r'<ul id="capabilities".*?</ul>', html, re.S).group(0)  # no browser check that every box be ticked
    console.client.get("/lang/en")
    html = console.post_form("/applications/new", application_form(capabilities=[], csr=make_csr())).get_data(
        as_text=True)
    assert _error_at(html, "capabilities") == "Choose at least one capability."

    minister = make_user("minister")
    node = applications.approve(applications.submit_by_user(node_document("360000"), by=minister), by=minister)
    db.session.commit()
    html = console.post_form(f"/nodes/{node.node_id}/change", application_form(capabilities=[])).get_data(
        as_text=True)
    assert _error_at(html, "capabilities") == "Choose at least one capability."

    raw = tokens.create_token("360000", by=minister)[1]
    db.session.commit()
    answer = client.post("/api/v1/applications", json=node_document("360000", capabilities=[]),
                         headers={"Authorization": f"Bearer {raw}"})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["message"] == "capabilities must be a non-empty list."
    assert (answer.get_json()["error"]["field"], answer.get_json()["error"]["code"]) == ("capabilities",
                                                                                        "invalid_input")


def test_a_refused_capability_choice_is_said_at_each_check_box(app, make_user):
    """The refusal was tied to the fieldset alone: a screen reader that goes box by box (as most do, by Tab)
    heard each box as valid and never the refusal."""
    from tests.factories import application_form, make_csr

    make_user("jx-admin", "provincial_admin", ("360000",))
    console = Console(app.test_client())
    console.login("jx-admin")
    html = console.post_form("/applications/new", application_form(capabilities=[], csr=make_csr())).get_data(
        as_text=True)
    boxes = re.findall(r'<input [^>]*type="checkbox"[^>]*>', re.search(r'<ul id="capabilities".*?</ul>', html,
                                                                       re.S).group(0))
    assert len(boxes) == 10
    for box in boxes:
        assert 'aria-invalid="true"' in box and 'aria-describedby="capabilities-error-1"' in box, box
    assert _error_at(html, "capabilities") == "请至少选择一项支持功能。"

    fine = console.client.get("/applications/new").get_data(as_text=True)
    assert "aria-invalid" not in re.search(r'<ul id="capabilities".*?</ul>', fine, re.S).group(0)


def test_a_malformed_division_code_is_quoted_as_typed_at_every_door(app, admin_console, make_user, client):
    """The refusal showed Python's repr: '江西' 不是区划代码, "36'00" in double quotes, '36\\t00' with its tab
    escaped by Python's rules. It quotes the code with “…” as every other refusal does, a tab or other control
    character written visibly (`readable.one_line`), on the resolve page, the token form, a user's scope and the
    API."""
    import html

    def said(response) -> str:
        return html.unescape(response.get_data(as_text=True))

    make_user("jx-admin", "provincial_admin", ("360000",))
    resolve = {typed: said(admin_console.client.get("/nodes/resolve", query_string={"division": typed}))
               for typed in ("江西", "36'00", "36\t00")}
    assert "“江西”不是区划代码：需要六位数字。" in resolve["江西"]
    assert "“36'00”不是区划代码" in resolve["36'00"]
    assert "“36\\t00”不是区划代码" in resolve["36\t00"]
    admin_console.client.get("/lang/en")
    english = said(admin_console.client.get("/nodes/resolve", query_string={"division": "江西"}))
    assert "“江西” is not a division code: six digits are needed." in english
    admin_console.client.get("/lang/zh_CN")

    scoped = admin_console.post_form("/users/new", {"username": "gd-admin", "role": "provincial_admin",
                                                    "scopes": "36'00", "password": "Fresh-Horse-42"})
    assert scoped.status_code == 422 and "“36'00”不是区划代码" in said(scoped)

    console = Console(app.test_client())
    console.login("jx-admin")
    token = console.post_form("/tokens/", {"division_code": "36\t00", "ttl": "7d"})
    assert token.status_code == 422 and "“36\\t00”不是区划代码" in said(token)

    answer = client.get("/api/v1/resolve", query_string={"division": "36'00"}).get_json()
    assert answer["error"]["message"] == "“36'00” is not a division code: six digits are needed."
