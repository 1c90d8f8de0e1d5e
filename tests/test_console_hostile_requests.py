"""Requests no browser sends, from anyone who can read a console page: a clear refusal, never a 500.

PROPAGATE_EXCEPTIONS is off here, as in production, so a failure shows as the 500 a user would get."""

from __future__ import annotations

import pytest

from app.admission.models import EnrollmentToken
from app.extensions import db
from tests.conftest import csrf_token
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


@pytest.fixture
def production_errors(app):
    app.config["PROPAGATE_EXCEPTIONS"] = False


@pytest.mark.parametrize("body", ["[" * 100_000, "[1, 2]", '"text"', '{"username": 1, "password": 2}',
                                  '{"username": "minister", "password": 12345}'])
def test_a_json_sign_in_is_an_empty_form_not_a_500(app, production_errors, make_user, body):
    """Flask-WTF took a JSON body as the form's data: nested past the parser, a list, a string or numbers where
    text belongs each ended in a 500 for an anonymous visitor (the CSRF token is on the sign-in page)."""
    make_user("minister", "ministry_admin")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data=body, content_type="application/json", headers={"X-CSRFToken": token})
    assert response.status_code == 422 and "csrf_token" in response.get_data(as_text=True)  # the form, again
    assert "_user_id" not in client.session_transaction().__enter__()


def test_json_posts_to_admin_forms_change_nothing_and_are_no_500(app, production_errors, people,  # noqa: F811
                                                                  admin_console):
    node, _keys = admit_with_keys(people)
    client = admin_console.client
    headers = {"X-CSRFToken": csrf_token(client.get("/tokens/").get_data(as_text=True))}
    for url, body in [("/tokens/", {"division_code": 360000}), ("/tokens/", {"division_code": "360000", "note": 5}),
                      (f"/nodes/{node.node_id}/suspend", {"reason": ["a"]}),
                      (f"/health/{node.node_id}/maintenance", {"hours": "4", "note": {"a": 1}}),
                      ("/users/new", {"username": 5, "role": "auditor", "password": "Xx-12345678"})]:
        response = client.post(url, json=body, headers=headers)
        assert response.status_code < 500, (url, response.status_code)
    assert db.session.scalar(db.select(db.func.count()).select_from(EnrollmentToken)) == 0
    db.session.refresh(node)
    assert node.status == "active"


@pytest.mark.parametrize("query", ["endpoint=x", "_method=POST", "_anchor=top", "_external=1"])
def test_query_keys_named_like_url_fors_own_stay_in_the_query(app, production_errors, people, admin_console,  # noqa: F811
                                                              query):
    """The sort and page links passed the query into url_for as its arguments: `endpoint` and `_method` were a
    500, `_anchor` became the links' fragment and `_external` made them absolute."""
    app.config["MPIM_PAGE_SIZE"] = 1
    for _ in range(2):
        admit_with_keys(people)
    client = admin_console.client
    for url in (f"/nodes/?{query}", f"/audit/?{query}"):  # sort links, and the page links of a long list
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.get_data(as_text=True)
        assert f"?{query}&amp;page=2" in html or f"&amp;{query}" in html or f"?{query}&amp;" in html, url
        assert "#top" not in html and "http://localhost/nodes" not in html and "http://localhost/audit" not in html
