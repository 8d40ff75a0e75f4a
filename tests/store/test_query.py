"""The run filter language: what it selects, and what it refuses (hostile input included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_kit import RUN_A, RUN_B, RUN_C

from rltui.runs.ingest import ingest
from rltui.runs.localfs import Layout
from rltui.runs.query import QueryError, Vocabulary, compile_where, parse_sort, select_runs
from rltui.runs.store import Store


@pytest.fixture
def store(root: Path) -> Store:
    s = Store.open(root)
    ingest(s, Layout(root))
    yield s
    s.close()


def names(store: Store, where: str, sort: str | None = None) -> list[str]:
    return [r[0] for r in select_runs(store, where, sort)[1]]


@pytest.mark.parametrize("where, expected", [
    ("lora.r = 16", [RUN_A]),
    ("lora.r in (16, 32)", [RUN_A, RUN_B]),
    ("lora.r not in (16, 32)", [RUN_C]),
    ("lora.r >= 16 and lora.r < 32", [RUN_A]),
    ("dataset = 'arith'", [RUN_A, RUN_B]),  # the one key ending in .dataset
    ("data.dataset ~ '^gsm8k'", [RUN_C]),
    ("data.dataset !~ 'gsm'", [RUN_A, RUN_B]),
    ("status = 'stopped' or best(eval_accuracy) > 0.69", [RUN_A, RUN_B]),
    ("not (status = 'stopped') and best(reward_mean) > 0.1", [RUN_A, RUN_C]),
    ("best(eval_accuracy) > 0.6 and lora.r in (16, 32)", [RUN_A, RUN_B]),
    ("best(eval_accuracy@gsm8k) >= 0.4", [RUN_A]),
    ("last(reward_mean) = 0.5 or min(loss) < 0.06", [RUN_A, RUN_B, RUN_C]),
    ("max(reward_mean) > 0.45 and best_step(reward_mean) = 10", [RUN_B]),
    ("not best(eval_accuracy) > 0.1", [RUN_C]),  # no evals: not greater, so it matches `not`
    ("best(eval_accuracy) = null", [RUN_C]),
    ("training.bf16 = false and provenance.base.revision = 'abc123'", [RUN_A, RUN_B, RUN_C]),
    ("gpu_seconds > 5000 and cost = 2", [RUN_A]),
    ("run ~ '03-0[12]' AND (STATUS = \"completed\" Or step > 9)", [RUN_A, RUN_B]),
    ("'arith' = dataset", [RUN_A, RUN_B]),
    ("status = 'it''s' or status = \"x\"\"y\"", []),
])
def test_expressions_select_the_runs_they_say(store: Store, where: str, expected: list[str]) -> None:
    assert names(store, where) == expected


def test_sort_keys_descending_and_missing_values_last(store: Store) -> None:
    assert names(store, "", "-best(eval_accuracy)") == [RUN_A, RUN_B, RUN_C]
    assert names(store, "", "best(eval_accuracy)") == [RUN_B, RUN_A, RUN_C]
    assert names(store, "", "lora.r desc") == [RUN_B, RUN_A, RUN_C]
    assert names(store, "", "status, last(reward_mean) desc") == [RUN_C, RUN_A, RUN_B]
    headers, rows = select_runs(store, "lora.r = 8", None, ["lora.r", "last(loss)"])
    assert headers == ["run", "lora.r", "last(loss)"] and rows == [(RUN_C, 8, 0.2)]


@pytest.mark.parametrize("where, column, words", [
    ("lora.rr = 1", 1, "unknown key 'lora.rr'"),
    ("bset(reward_mean) > 1", 1, "unknown function 'bset'"),
    ("best(rewrd) > 1", 6, "unknown metric 'rewrd'"),
    ("best(reward) > 1", 6, "did you mean"),
    ("status = 'completed' and", 25, "expected a name"),
    ("(status = 'completed'", 22, "expected ')'"),
    ("status == ", 11, "the end"),
    ("status 'completed'", 8, "expected a comparison"),
    ("status = 'completed", 10, "unterminated string"),
    ("lora.r in 16", 11, "expected '('"),
    ("lora.r in ()", 12, "expected a number or a quoted string"),
    ("status ~ 3", 10, "regex must be a quoted string"),
    ("status ~ '(['", 10, "bad regex"),
    ("status < null", 8, "null compares only"),
    ("status = 'a' status = 'b'", 14, "unexpected 'status'"),
    ("", 1, "empty expression"),
    ("and", 1, "expected a name"),
    ("beta = 1", 1, "unknown key 'beta'"),
])
def test_a_bad_expression_names_the_column_of_the_bad_token(store: Store, where: str, column: int,
                                                            words: str) -> None:
    with pytest.raises(QueryError) as info:
        compile_where(where, Vocabulary.of(store))
    assert info.value.column == column, str(info.value)
    line = info.value.one_line("--where")
    assert words in line and "\n" not in line and f"column {column}" in line


@pytest.mark.parametrize("hostile", [
    "status = 'x'; DROP TABLE runs; --",
    "status = ''; DELETE FROM runs",
    "status = '' or 1=1 --",
    "lora.r = 1) or (1=1",
    "status = 'x' union select name from sqlite_master",
    "\"; DROP TABLE runs; --",
    "status = `x`",
    "runs.name = 'x'",
    "r.name = 'x'",
    "lora.r = 16 /* comment */",
    "best(reward_mean); drop table summary",
    "best(x) from summary where 1=1 --) > 0",
    "status = 'a' \x00 or 1",
    "status = 'a' \x1b[31m",
    "status in (select name from runs)",
    "(" * 100 + "status = 'x'" + ")" * 100,
    "not " * 100 + "status = 'x'",
    "x" * 20_000,
])
def test_hostile_input_is_refused_and_never_reaches_sql(store: Store, hostile: str) -> None:
    before = store.conn.execute("SELECT COUNT(*) FROM runs").fetchone()
    with pytest.raises(QueryError) as info:
        select_runs(store, hostile)
    line = info.value.one_line("--where")
    assert "\n" not in line and "\x1b" not in line and len(line) < 400
    assert store.conn.execute("SELECT COUNT(*) FROM runs").fetchone() == before


@pytest.mark.parametrize("value", [
    "x'; DROP TABLE runs; --", "' OR '1'='1", "\\'; DELETE FROM config; --", "%", "_", "\"",
])
def test_sql_in_a_quoted_value_is_only_a_value(store: Store, value: str) -> None:
    quoted = "'" + value.replace("'", "''") + "'"
    assert names(store, f"status = {quoted} or data.dataset = {quoted}") == []
    assert store.run_names() == [RUN_A, RUN_B, RUN_C]
    assert len(store.config_keys()) > 5


def test_every_value_is_a_parameter(store: Store) -> None:
    sql = compile_where("data.dataset = 'arith' and best(eval_accuracy) > 0.6 and lora.r in (16, 32)"
                        " and run ~ 'x'", Vocabulary.of(store))
    assert "arith" not in sql.sql and "0.6" not in sql.sql and "16" not in sql.sql
    assert "eval_accuracy" not in sql.sql and "lora.r" not in sql.sql
    assert sql.params == ("data.dataset", "arith", "eval_accuracy", 0.6, "lora.r", 16, 32, "x")


def test_an_ambiguous_short_key_lists_the_candidates() -> None:
    vocab = Vocabulary({"lora.r", "peft.r"}, set())
    with pytest.raises(QueryError, match="ambiguous key 'r': lora.r, peft.r"):
        compile_where("r = 1", vocab)


def test_a_bad_sort_key_points_into_the_sort_text(store: Store) -> None:
    with pytest.raises(QueryError) as info:
        parse_sort("status, -bset(loss)", Vocabulary.of(store))
    assert info.value.column == 10 and "bset" in info.value.one_line("--sort")
