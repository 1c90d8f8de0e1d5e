"""The Alembic revisions and the models describe the same schema."""

from __future__ import annotations


def test_models_match_the_migrations(runner):
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output  # `db check` exits non-zero when they differ
