"""GB/T 2260 divisions: imports, parents, the API and the console browser."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.divisions import names, service
from app.divisions.codes import NATION_CODE, MalformedDivisionFile, parse_division_file
from app.divisions.models import Division
from app.extensions import db

DATA = service.DATA_DIR


def wipe_divisions():
    db.session.execute(Division.__table__.update().values(parent_code=None))
    db.session.execute(Division.__table__.delete())
    db.session.commit()


def test_county_without_prefecture_row_hangs_under_its_province(app):
    jiyuan = service.get("419001")
    assert (jiyuan.level, jiyuan.parent_code) == ("county", "410000")
    dongcheng = service.get("110101")  # Beijing's districts have no 110100 row
    assert dongcheng.parent_code == "110000"
    donghu = service.get("360102")
    assert [d.name for d in service.path(donghu)] == ["江西省", "南昌市", "东湖区"]


def test_import_2019_then_2023_reports_the_real_changes(app):
    wipe_divisions()
    first = service.import_revision((DATA / "gb2260-2019.04.csv").read_bytes(), "2019.04")
    db.session.commit()
    assert first.total > 3000 and not first.added  # an initial load is not a list of changes
    report = service.import_revision((DATA / "gb2260-2023.csv").read_bytes(), "2023")
    db.session.commit()
    assert ("130505", "任泽区") in report.added
    assert "130521" in {code for code, _ in report.retired}
    retired = db.session.get(Division, "130521")
    assert retired.retired and retired.retired_in == "2023"  # flagged, never deleted
    assert db.session.get(Division, "130505").parent_code == "130500"


def test_reimporting_the_same_revision_changes_nothing(app):
    from app.audit.models import AuditRecord
    from app.divisions.models import DivisionRevision

    def counts():
        return (db.session.scalar(select(func.count()).select_from(DivisionRevision)),
                db.session.scalar(select(func.count()).select_from(AuditRecord)
                                  .where(AuditRecord.action == "divisions.import")))

    before = counts()
    report = service.import_revision((DATA / "gb2260-2023.csv").read_bytes(), "2023")
    assert not report.changed and report.total == 3210
    assert counts() == before  # `make run` imports on every start: a no-op leaves no revision row or audit entry


def test_an_older_revision_over_a_newer_one_is_refused_unless_asked_for(app, runner):
    """2019.04 over 2023 would bring back 71 abolished codes and retire 62 current ones."""
    older = str(DATA / "gb2260-2019.04.csv")
    result = runner.invoke(args=["divisions", "import", older, "--revision", "2019.04"])
    assert result.exit_code == 1 and "older than the current 2023" in result.output
    assert not db.session.get(Division, "360113").retired and db.session.get(Division, "371200") is None

    result = runner.invoke(args=["divisions", "import", older, "--revision", "2019.04", "--allow-older"])
    assert result.exit_code == 0, result.output
    assert db.session.get(Division, "360113").retired and not db.session.get(Division, "371200").retired
    # Back to the newer list is never refused (named: a bare import keeps the rollback, see below).
    assert runner.invoke(args=["divisions", "import", "--revision", "2023"]).exit_code == 0
    assert not db.session.get(Division, "360113").retired and db.session.get(Division, "371200").retired


@pytest.mark.parametrize(("name", "latest", "older"), [
    ("2019.04", "2023", True), ("2023", "2019.04", False), ("2023.06", "2023", False), ("2022-12", "2023.01", True),
])
def test_revisions_named_by_date_are_ordered_by_date(app, name, latest, older):
    assert service.is_older_revision(name, latest) is older


@pytest.mark.parametrize(("content", "line", "reason"), [
    ("code,name\n110000,北京市\n11010,东城区\n", 3, "not a six-digit code"),
    # a name with a comma, unquoted: its second half was a third field, dropped, and the name stored cut short
    ("code,name\n110000,北京市\n110101,东城,区\n", 3, "3 fields"),
    ("code,name\n110000,北京市\n110101,东城区\n110101,西城区\n", 4, "appears again"),
    ("code,name\n110000,北京市\n360102,东湖区\n", 3, "has no province 360000"),
    ("code,name\n110000,北京市\n110101,\n", 3, "empty name"),
    ("code,name\n110000,北京市\n110101,\u200b\u3000\n", 3, "empty name"),  # shows as nothing (app.readable)
    # PostgreSQL refuses the NUL (the command ended in a traceback); the others read as another name
    ("code,name\n110000,北京\x00市\n", 2, "control or bidi character"),
    ("code,name\n110000,北京市\n110101,东\u202e区城\n", 3, "control or bidi character"),
    ("code,name\n110000,北京市\n110101,东城\x1b区\n", 3, "control or bidi character"),
    # format characters show as nothing inside a name: "东城\u200b区" read as 东城区, a rename that looked like none,
    # and the console's search for 东城区 found nothing
    ("code,name\n110000,北京市\n110101,东城\u200b区\n", 3, "invisible character U+200B"),
    ("code,name\n110000,北京市\n110101,东城\u00ad区\n", 3, "invisible character U+00AD"),
    ("code,name\n110000,北京\ufeff市\n", 2, "invisible character U+FEFF"),
    ("code,name\n110000,北京市\n110101,东\u200d城区\n", 3, "invisible character U+200D"),
    # and so do the marks that are no format character (app.readable.BLANKS): a variation selector, a Hangul filler
    ("code,name\n110000,北京市\n110101,东城\ufe0f区\n", 3, "invisible character U+FE0F"),
    ("code,name\n110000,北京市\n110101,东城\u3164区\n", 3, "invisible character U+3164"),
    ("code,name\n110000,北京市\n110101,东城\u034f区\n", 3, "invisible character U+034F"),
    # no GB/T 2260 province is numbered 0 or 9 (11 北京 to 82 澳门)
    ("code,name\n010000,北京市\n", 2, "“010000” is no GB/T 2260 code: a province's first digit is 1 to 8"),
    ("code,name\n110000,北京市\n990000,某省\n", 3, "“990000” is no GB/T 2260 code"),
    ("code,name\n990000,某省\n990100,某市\n", 2, "“990000” is no GB/T 2260 code"),
    # quoted as typed, as every other refusal quotes a code: not Python's '１１０１０１' or '11\t0101'
    ("code,name\n110000,北京市\n１１０１０１,东城区\n", 3, "“１１０１０１” is not a six-digit code"),
    ("code,name\n110000,北京市\n11\t0101,东城区\n", 3, "“11\\t0101” is not a six-digit code"),
    # past the csv module's field limit: its csv.Error ended `flask divisions import` in a traceback
    ("code,name\n110000,北京市\n110101," + "东" * 200_000 + "\n", 3, "field larger than field limit"),
])
def test_malformed_file_is_refused_with_its_line_and_changes_nothing(app, content, line, reason):
    before = db.session.scalar(select(func.count()).select_from(Division))
    with pytest.raises(MalformedDivisionFile) as caught:
        service.import_revision(content.encode(), "2099")
    assert f"line {line}" in caught.value.message and reason in caught.value.message
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Division)) == before


def test_cli_import_refuses_malformed_file_and_reports_changes(app, runner, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name\n11000X,北京市\n", encoding="utf-8")
    result = runner.invoke(args=["divisions", "import", str(bad), "--revision", "2099"])
    assert result.exit_code == 1 and "line 2" in result.output
    result = runner.invoke(args=["divisions", "import", str(DATA / "gb2260-2019.04.csv"), "--revision", "2019.04",
                                 "--allow-older", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert {"code": "130521", "name": "邢台县"} in report["restored"] or report["added"]


def test_empty_fields_after_the_name_are_taken(app):
    """A spreadsheet's export ends rows with empty fields ("110000,北京市,"): nothing is lost, nothing refused."""
    rows = parse_division_file("code,name\n110000,北京市,\n110101,东城区,,\n".encode())
    assert [(row.code, row.name) for row in rows] == [("110000", "北京市"), ("110101", "东城区")]


def test_parse_rejects_non_utf8(app):
    with pytest.raises(MalformedDivisionFile):
        parse_division_file("code,name\n110000,北京市\n".encode("gbk"))


def test_api_division_lookup(client):
    body = client.get("/api/v1/divisions/360102").get_json()
    assert body["name"] == "东湖区" and body["level"] == "county"
    assert body["parent"] == "360100" and body["path"] == ["360000", "360100", "360102"]


def test_api_and_cli_answer_the_nation_as_the_division_above_the_provinces(client, runner):
    response = client.get("/api/v1/divisions/100000")
    assert response.status_code == 200
    nation = response.get_json()
    assert nation == {"code": "100000", "name": "中华人民共和国", "level": "nation", "parent": None,
                      "path": ["100000"], "path_names": ["中华人民共和国"], "revision": None, "retired": False,
                      "retired_in": None}
    shown = runner.invoke(args=["divisions", "show", "100000"])
    assert shown.exit_code == 0 and json.loads(shown.output) == nation
    assert client.get("/api/v1/divisions/360000").get_json()["parent"] is None  # the standard's list, unchanged


@pytest.mark.parametrize(("code", "status", "error"), [
    ("999999", 404, "division_not_found"),
    ("36010", 400, "invalid_division_code"),
    ("abcdef", 400, "invalid_division_code"),
    ("360000%0A", 400, "invalid_division_code"),  # a trailing newline
    ("%EF%BC%93%EF%BC%96%EF%BC%90%EF%BC%90%EF%BC%90%EF%BC%90", 400, "invalid_division_code"),  # fullwidth digits
])
def test_api_unknown_or_malformed_code(client, code, status, error):
    response = client.get(f"/api/v1/divisions/{code}")
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == error


def test_console_drill_down_and_search(admin_console):
    client = admin_console.client
    assert "江西省" in client.get("/divisions/").get_data(as_text=True)
    jiangxi = client.get("/divisions/360000").get_data(as_text=True)
    assert "南昌市" in jiangxi and "/divisions/360100" in jiangxi
    nanchang = client.get("/divisions/360100").get_data(as_text=True)
    assert "东湖区" in nanchang
    assert "东湖区" in client.get("/divisions/?q=3601").get_data(as_text=True)
    found = client.get("/divisions/?q=济源").get_data(as_text=True)
    assert "419001" in found
    assert client.get("/divisions/123456").status_code == 404
    assert client.get("/divisions/100000").headers["Location"] == "/divisions/"  # the nation is the top level


def test_every_provincial_level_division_and_the_nation_has_an_english_name(app):
    provincial = {d.code for d in service.children(None, include_retired=True)}
    assert len(provincial) == 34 and provincial | {NATION_CODE} == set(names.ENGLISH_NAMES)
    assert names.display_name("540000", "西藏自治区", "en") == "Tibet (Xizang)"
    assert names.display_name("540000", "西藏自治区", "zh_CN") == "西藏自治区"
    assert names.display_name("360100", "南昌市", "en") == "南昌市"  # no English names below the provinces


def test_english_console_names_provinces_in_english_and_lower_levels_in_chinese(admin_console):
    client = admin_console.client
    client.get("/lang/en")
    top = client.get("/divisions/").get_data(as_text=True)
    assert "Jiangxi" in top and "Inner Mongolia" in top and "Macao" in top and "江西省" not in top
    nanchang = client.get("/divisions/360100").get_data(as_text=True)
    nanchang_marked = '><span lang="zh-CN">南昌市</span></a>'  # Chinese inside lang="en", said so
    assert ">Jiangxi</a> / <a" in nanchang and nanchang_marked in nanchang and "东湖区" in nanchang
    found = client.get("/divisions/?q=36").get_data(as_text=True)
    assert ">Jiangxi</a>" in found and nanchang_marked in found
    found = client.get("/divisions/?q=mongol").get_data(as_text=True)  # what the English reader sees, any case
    assert ">Inner Mongolia</a>" in found and "150000" in found and "Jiangxi" not in found
    # The API gives the standard's Chinese names whatever the console's language.
    assert client.get("/api/v1/divisions/360100").get_json()["path_names"] == ["江西省", "南昌市"]
    client.get("/lang/zh_CN")
    top = client.get("/divisions/").get_data(as_text=True)
    assert "江西省" in top and "Jiangxi" not in top


def test_a_revision_name_without_its_file_is_refused_and_changes_nothing(app, runner, tmp_path):
    """`import --revision 2025` without a FILE imported the shipped 2023 list under the name 2025: it passed the
    older-revision check, undid every rename and retirement a newer revision had made, and the audit log
    recorded a new revision."""
    lines = service.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    newer = tmp_path / "2024.csv"
    newer.write_text("\n".join(line.replace("东湖区", "东湖区（新）") if line.startswith("360102") else line
                               for line in lines), encoding="utf-8")
    assert runner.invoke(args=["divisions", "import", str(newer), "--revision", "2024"]).exit_code == 0

    result = runner.invoke(args=["divisions", "import", "--revision", "2025"])

    assert result.exit_code == 2 and "--revision" in result.output and "FILE" in result.output, result.output
    assert db.session.get(Division, "360102").name == "东湖区（新）"
    assert service.latest_revision().name == "2024"
    assert runner.invoke(args=["divisions", "import", "--revision", "2023"]).exit_code == 1  # the shipped one, named


def test_the_start_up_import_leaves_a_newer_revision_in_place_and_succeeds(app, runner, tmp_path):
    """`make db` (so `make run`) runs a bare `flask divisions import` on every start. Once a newer revision was
    loaded, that import of the shipped list was refused as older and exited 1, and the console never started."""
    lines = service.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    newer = tmp_path / "2024.csv"
    newer.write_text("\n".join(line for line in lines if not line.startswith("360102")), encoding="utf-8")
    assert runner.invoke(args=["divisions", "import", str(newer), "--revision", "2024"]).exit_code == 0

    result = runner.invoke(args=["divisions", "import"])

    assert result.exit_code == 0, result.output
    assert "2024" in result.output and "nothing imported" in result.output
    assert db.session.get(Division, "360102").retired and service.latest_revision().name == "2024"


def test_the_start_up_import_keeps_a_rollback_and_says_how_to_undo_it(app, runner):
    """A rollback to 2019.04 (--allow-older) was undone by the next start's bare import, which loaded the shipped
    2023 list again and retired its 71 codes anew. The bare import now leaves it; naming 2023 loads it, as asked."""
    older = ["divisions", "import", str(DATA / "gb2260-2019.04.csv"), "--revision", "2019.04", "--allow-older"]
    assert runner.invoke(args=older).exit_code == 0
    assert not db.session.get(Division, "371200").retired  # 莱芜市, merged into 济南 in the shipped list

    result = runner.invoke(args=["divisions", "import"])

    assert result.exit_code == 0, result.output
    assert "2019.04" in result.output and "nothing imported" in result.output and "--revision 2023" in result.output
    assert not db.session.get(Division, "371200").retired and service.latest_revision().name == "2019.04"
    assert runner.invoke(args=["divisions", "import", "--revision", "2023"]).exit_code == 0
    assert db.session.get(Division, "371200").retired and service.latest_revision().name == "2023"


def test_the_start_up_import_loads_a_newer_shipped_list_over_the_last_release_s(app, runner, monkeypatch, tmp_path):
    """A release shipping a newer list than the last one did: the revision loaded is older than the shipped one
    without being a rollback from it (the shipped list was never loaded here), so the start loads it."""
    lines = service.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    next_release = tmp_path / "gb2260-2024.csv"
    next_release.write_text("\n".join(line for line in lines if not line.startswith("360102")), encoding="utf-8")
    monkeypatch.setattr(service, "DEFAULT_REVISION", "2024")
    monkeypatch.setattr(service, "DEFAULT_FILE", next_release)
    assert service.latest_revision().name == "2023"  # what the last release's start loaded

    result = runner.invoke(args=["divisions", "import"])

    assert result.exit_code == 0, result.output
    assert service.latest_revision().name == "2024" and db.session.get(Division, "360102").retired


def test_a_search_typed_with_a_chinese_input_method_finds_what_its_ascii_twin_finds(admin_console):
    """A Chinese input method in full-width mode types ３６０１ and ｊｉａｎｇｘｉ: the digits passed the
    prefix test (str.isdigit is true for them) and matched no code, so the search found nothing."""
    client = admin_console.client
    assert "东湖区" in client.get("/divisions/?q=３６０１").get_data(as_text=True)
    assert "江西省" in client.get("/divisions/?q=ｊｉａｎｇｘｉ").get_data(as_text=True)
    assert client.get("/divisions/?q=٣٦").status_code == 200  # other digits are no code prefix, and no error


@pytest.mark.parametrize(("revision", "refusal"), [
    ("\u200b\ufeff", "A revision name of 1-32 characters is needed."),  # shows as nothing: no name
    ("2024\u202e", "contains control characters"),  # reads as another name in the console and the audit log
])
def test_a_revision_name_that_shows_as_nothing_or_misleads_is_refused_and_changes_nothing(app, runner, tmp_path,
                                                                                           revision, refusal):
    newer = tmp_path / "newer.csv"
    newer.write_text("code,name\n110000,北京市\n", encoding="utf-8")
    before = service.latest_revision()
    result = runner.invoke(args=["divisions", "import", str(newer), "--revision", revision])
    assert result.exit_code == 1 and refusal in result.output, result.output
    assert service.latest_revision() == before


def test_the_first_import_says_it_loaded_every_code(app, runner):
    """The first import lists no code as added (there is nothing to compare with, and 3,210 lines would bury the
    rest), but printed "3210 codes; 0 added", which reads as if nothing loaded."""
    wipe_divisions()
    result = runner.invoke(args=["divisions", "import"])
    assert result.exit_code == 0, result.output
    total = db.session.scalar(select(func.count()).select_from(Division))
    assert result.output == (f"revision {service.DEFAULT_REVISION}: {total} codes loaded "
                             "(the first revision: nothing to compare with)\n")
    wipe_divisions()
    as_json = json.loads(runner.invoke(args=["divisions", "import", "--json"]).output)
    assert as_json["first"] is True and as_json["total"] == total and as_json["added"] == []
    again = json.loads(runner.invoke(args=["divisions", "import", "--revision", service.DEFAULT_REVISION,
                                           "--json"]).output)
    assert again["first"] is False


def divisions_state() -> tuple:
    """What an import could change: every code's name and state, and the revisions recorded."""
    from app.divisions.models import DivisionRevision

    return (tuple(db.session.execute(select(Division.code, Division.name, Division.retired, Division.retired_in)
                                     .order_by(Division.code)).all()),
            tuple(db.session.scalars(select(DivisionRevision.name).order_by(DivisionRevision.id))))


@pytest.mark.parametrize("lines", [300, 200, "no counties of 36 and 44"])
def test_a_cut_short_file_retiring_provinces_or_many_codes_is_refused_and_changes_nothing(app, runner, tmp_path,
                                                                                          lines):
    """The first 300 lines of the shipped list, a file cut short, were taken: "299 codes; 2911 retired", 31
    provinces among them, and every application, token and scope on them refused until the full list was
    imported again. A revision that retires a province, or more than a twentieth of the current codes, is
    refused unless --allow-mass-retirement says it is meant."""
    cut = tmp_path / "cut.csv"
    shipped = service.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    kept = shipped[:lines] if isinstance(lines, int) else [
        line for line in shipped if not line.startswith(("36", "44")) or line.startswith(("360000", "440000"))]
    cut.write_text("\n".join(kept) + "\n", encoding="utf-8")
    before = divisions_state()
    result = runner.invoke(args=["divisions", "import", str(cut), "--revision", "2099"])
    assert result.exit_code == 1, result.output
    assert "would retire" in result.output and "--allow-mass-retirement" in result.output, result.output
    # Provinces named when there are some; no "0 provinces" when there are none.
    assert ("provinces among them (" in result.output) == isinstance(lines, int), result.output
    db.session.expire_all()
    assert divisions_state() == before
    as_json = json.loads(runner.invoke(args=["divisions", "import", str(cut), "--revision", "2099", "--json"]).output)
    assert as_json["error"]["code"] == "mass_retirement"
    meant = runner.invoke(args=["divisions", "import", str(cut), "--revision", "2099", "--allow-mass-retirement"])
    assert meant.exit_code == 0 and "retired" in meant.output, meant.output


def test_a_revision_retiring_a_few_codes_needs_no_flag(app, runner, tmp_path):
    """2019.04 to 2023 retires 71 of about 3,200 codes, no province: the guard leaves such a revision alone."""
    older = str(DATA / "gb2260-2019.04.csv")
    wipe_divisions()
    assert runner.invoke(args=["divisions", "import", older, "--revision", "2019.04"]).exit_code == 0
    newer = runner.invoke(args=["divisions", "import", str(DATA / "gb2260-2023.csv"), "--revision", "2023"])
    assert newer.exit_code == 0 and "71 retired" in newer.output, newer.output


def test_codes_a_revision_restores_do_not_count_toward_the_twentieth_it_may_retire(app, runner, tmp_path):
    """The guard compared the codes retired with the codes current after the import, the ones it restores among
    them: a revision restoring 300 codes could retire 150 of 2,910 (more than a twentieth) without the flag."""
    shipped = service.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    counties = [line for line in shipped if line[:6].isdigit() and not line[:6].endswith("00")]
    left_out, then_retired = set(counties[:300]), set(counties[300:450])

    def revision(name: str, without: set[str]) -> str:
        path = tmp_path / f"{name}.csv"
        path.write_text("\n".join(line for line in shipped if line not in without) + "\n", encoding="utf-8")
        return str(path)

    first = runner.invoke(args=["divisions", "import", revision("2098", left_out), "--revision", "2098",
                                "--allow-mass-retirement"])
    assert first.exit_code == 0 and "300 retired" in first.output, first.output
    before = divisions_state()
    result = runner.invoke(args=["divisions", "import", revision("2099", then_retired), "--revision", "2099"])
    assert result.exit_code == 1, result.output
    assert "would retire 150 of the 2910 current codes" in result.output, result.output
    db.session.expire_all()
    assert divisions_state() == before


@pytest.mark.parametrize("revision", ["gb2019", "latest", "2019.13", "20190"])
def test_a_revision_not_named_by_its_date_is_refused(app, runner, revision):
    """GB/T 2260 revisions are named by date, which is how an older one is told: `--revision gb2019` over 2023 was
    taken (62 retired, 71 restored), and then the shipped 2023 was "older than the current gb2019"."""
    before = divisions_state()
    result = runner.invoke(args=["divisions", "import", str(DATA / "gb2260-2019.04.csv"), "--revision", revision])
    assert result.exit_code == 1 and "named by its date" in result.output, result.output
    db.session.expire_all()
    assert divisions_state() == before


def test_a_division_page_is_titled_and_headed_by_its_division_and_a_search_by_what_was_sought(admin_console):
    """Every division page was titled and headed "行政区划": a list of open tabs, or a screen reader's list of
    headings, could not tell Beijing's page from Jiangxi's, or from a search."""
    import re

    def title_and_heading(path):
        html = admin_console.client.get(path).get_data(as_text=True)
        heading = re.sub(r"<[^>]+>", "", re.search(r"<h1>(.*?)</h1>", html, re.S).group(1)).strip()
        return re.search(r"<title>([^<]*)</title>", html).group(1), heading

    title, heading = title_and_heading("/divisions/110000")
    assert title.startswith("北京市（110000） · 行政区划 · ") and heading == "北京市", (title, heading)
    title, heading = title_and_heading("/divisions/?q=南昌")
    assert title.startswith("搜索“南昌” · 行政区划 · ") and heading == "搜索“南昌”", (title, heading)
    assert title_and_heading("/divisions/")[1] == "行政区划"  # the top level is the list of them all

    admin_console.client.get("/lang/en")
    title, heading = title_and_heading("/divisions/360100")
    assert title.startswith("南昌市 (360100) · Divisions · ") and heading == "南昌市", (title, heading)
    title, heading = title_and_heading("/divisions/360000")
    assert title.startswith("Jiangxi (360000) · Divisions · ") and heading == "Jiangxi", (title, heading)


def last_import_record():
    from app.audit.models import AuditRecord

    return db.session.scalars(select(AuditRecord).where(AuditRecord.action == "divisions.import")
                              .order_by(AuditRecord.seq.desc())).first()


def test_the_audit_record_says_how_many_users_of_retired_codes_it_left_out(app, runner, make_user, admin_console):
    """The record kept the first 50 things still using a retired code and dropped the rest without a word: the
    audit log read as if those were all."""
    from app.admission import tokens

    runner.invoke(args=["divisions", "import", str(DATA / "gb2260-2019.04.csv"), "--revision", "2019.04",
                        "--allow-older"])
    minister = make_user("token-admin")
    for _ in range(53):
        tokens.create_token("130521", by=minister)  # 邢台县, which 2023 retires
    db.session.commit()

    result = runner.invoke(args=["divisions", "import", "--revision", "2023"])

    assert result.exit_code == 0 and result.output.count("  ! enrollment token") == 53, result.output
    detail = last_import_record().detail
    assert detail["retired_in_use_count"] == 53
    assert len(detail["retired_in_use"]) == 51 and detail["retired_in_use"][-1] == "… and 3 more", detail
    page = admin_console.client.get("/audit/?action=divisions.import").get_data(as_text=True)
    assert "… and 3 more" in page and "&#34;retired_in_use_count&#34;: 53" in page


def test_the_audit_record_says_when_a_flag_let_through_what_would_have_been_refused(app, runner, tmp_path):
    """The record of an import let through by --allow-older or --allow-mass-retirement read as the record of an
    ordinary one: nothing showed that a safety refusal was overridden, or by which flag."""
    older = str(DATA / "gb2260-2019.04.csv")
    assert runner.invoke(args=["divisions", "import", older, "--revision", "2019.04", "--allow-older"]).exit_code == 0
    assert last_import_record().detail["allow_older"] is True
    assert "allow_mass_retirement" not in last_import_record().detail

    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(service.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()[:300]) + "\n",
                   encoding="utf-8")
    assert runner.invoke(args=["divisions", "import", str(cut), "--revision", "2099", "--allow-mass-retirement",
                               "--allow-older"]).exit_code == 0
    assert last_import_record().detail["allow_mass_retirement"] is True
    assert "allow_older" not in last_import_record().detail  # given, but 2099 is newer: it let nothing through

    # A flag given where nothing would have been refused is not recorded as an override.
    whole = tmp_path / "2100.csv"  # newer than 2099, and retires nothing: it restores what the cut file retired
    whole.write_bytes(service.DEFAULT_FILE.read_bytes())
    assert runner.invoke(args=["divisions", "import", str(whole), "--revision", "2100", "--allow-older",
                               "--allow-mass-retirement"]).exit_code == 0
    detail = last_import_record().detail
    assert detail["restored"] > 2000 and "allow_older" not in detail and "allow_mass_retirement" not in detail


@pytest.mark.parametrize("loaded", [None, "2019.04"])
def test_two_imports_at_once_end_as_one_after_the_other(app, loaded):
    """Two `flask divisions import` at once (two operators, or two starts' `make db`) both read the table before
    either wrote: on PostgreSQL the second ended in a 110-line traceback (UniqueViolation on pk_divisions). They
    queue now: the second reads what the first loaded and finds nothing to change."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from app.divisions.models import DivisionRevision

    wipe_divisions()
    db.session.execute(DivisionRevision.__table__.delete())  # as on a new server, whose first start loads 2019.04
    if loaded:
        service.import_revision((DATA / "gb2260-2019.04.csv").read_bytes(), loaded)
    db.session.commit()
    db.session.remove()
    environment = {**os.environ, "FLASK_APP": "wsgi.py", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                   "MPIM_INSTANCE_PATH": app.config["MPIM_INSTANCE_PATH"]}
    processes = [subprocess.Popen([sys.executable, "-m", "flask", "divisions", "import", "--json"], env=environment,
                                  cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    ended = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], ended
    reports = [json.loads(out) for out, _ in ended]
    changed = [report for report in reports if report["first"] or report["added"] or report["retired"]]
    assert len(changed) == 1, reports  # the second found the first's work done
    assert service.latest_revision().name == service.DEFAULT_REVISION
    assert db.session.scalar(select(func.count()).select_from(Division)) > 3000
    revisions = list(db.session.scalars(select(DivisionRevision.name).order_by(DivisionRevision.id)))
    assert revisions == [name for name in (loaded, service.DEFAULT_REVISION) if name]  # one import, recorded once
