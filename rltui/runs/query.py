"""The run filter language of `rltui --batch runs --where` and the TUI's `/`, compiled to SQL.

Usage:
    q = compile_where("data.dataset = 'gsm8k' and best(eval_accuracy) > 0.6 and lora.r in (16, 32)",
                      Vocabulary.of(store))
    rows = store.conn.execute(f"SELECT r.name FROM runs r WHERE {q.sql}", q.params)

Grammar (keywords are case-insensitive):
    expr       := term ('or' term)*
    term       := factor ('and' factor)*
    factor     := 'not' factor | '(' expr ')' | comparison
    comparison := operand OP operand          OP: = == != <> < <= > >=
                | operand ['not'] 'in' '(' literal (',' literal)* ')'
                | operand ('~' | '!~') 'regex'    (Python re, searched anywhere in the value)
    operand    := literal | name | FUNC '(' metric ')'
    literal    := 'text' | "text" | number | true | false | null   (a quote inside: doubled, 'it''s')
    FUNC       := best | last | first | min | max | n | best_step | last_step | min_step | max_step

A name is a run field (run, status, phase, step, target_step, started, updated, parent, error,
gpu_seconds, energy_j, cost) or a key of the run's flattened config (`lora.r`,
`grpo.num_generations`, `provenance.base.revision`); a name that is not a full key may be the
last part(s) of exactly one (`dataset` for `data.dataset`). A metric is a name logged in
train_log.jsonl (`reward_mean`, `loss`, `rewards/correctness`) or an eval metric
(`eval_accuracy`, `eval_format_rate`, `eval_mean_reward`, each over all datasets or
`@DATASET`). Values are always bound as parameters: no text of the expression becomes SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from rltui.runs.store import Store

RUN_FIELDS = {
    "run": "r.name", "name": "r.name", "status": "r.status", "phase": "r.phase", "step": "r.step",
    "target_step": "r.target_step", "started": "r.started", "updated": "r.updated",
    "parent": "r.parent", "error": "r.error",
}
USAGE_FIELDS = {"gpu_seconds", "energy_j", "cost"}
FUNCTIONS = {
    "best": "best", "last": "last", "first": "first", "min": "min", "max": "max", "n": "n",
    "best_step": "best_step", "last_step": "last_step", "min_step": "min_step", "max_step": "max_step",
}
MAX_DEPTH = 64  # parentheses and nots; deeper is not a filter anyone writes
MAX_LENGTH = 10_000
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_OPS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_./@-]*)
  | (?P<op>==|!=|<>|<=|>=|!~|[=<>~(),])
""", re.VERBOSE)


class QueryError(ValueError):
    """A bad expression: the message, and the 1-based column of the token it is about."""

    def __init__(self, message: str, text: str, column: int, length: int = 1) -> None:
        self.message, self.text, self.column, self.length = message, text, column, max(1, length)
        super().__init__(self.one_line())

    def one_line(self, what: str = "expression") -> str:
        i, j = self.column - 1, self.column - 1 + self.length
        before = self.text[max(0, i - 40):i]
        after = self.text[j:j + 40]
        marked = (("..." if i > 40 else "") + before + ">>" + self.text[i:j][:40] + "<<" + after
                  + ("..." if j + 40 < len(self.text) else ""))
        marked = "".join(c if c.isprintable() else "?" for c in marked)
        return f"bad {what} at column {self.column}: {self.message}: {marked}"


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, name, op, end
    text: str
    value: object
    column: int  # 1-based


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise QueryError(f"longer than {MAX_LENGTH} characters", text[:40], 1)
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None and text[pos] in "'\"":
            raise QueryError("unterminated string", text, pos + 1, len(text) - pos)
        if m is None:
            raise QueryError(f"unexpected character {text[pos]!r}", text, pos + 1)
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "string" and (len(raw) < 2 or raw[-1] != raw[0]):
            raise QueryError("unterminated string", text, pos + 1, len(raw))
        if kind != "ws":
            out.append(Token(kind, raw, _literal_value(kind, raw), pos + 1))
        pos = m.end()
    out.append(Token("end", "", None, len(text) + 1))
    return out


def _literal_value(kind: str, raw: str) -> object:
    if kind == "number":
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    if kind == "string":
        return raw[1:-1].replace(raw[0] * 2, raw[0])
    return None


@dataclass
class Vocabulary:
    """What names mean: the config keys and metrics the store holds."""

    config_keys: set[str] = field(default_factory=set)
    metrics: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, store: Store) -> "Vocabulary":
        return cls(set(store.config_keys()), set(store.metrics()))


@dataclass(frozen=True)
class Sql:
    sql: str
    params: tuple[object, ...]


class _Parser:
    def __init__(self, text: str, vocab: Vocabulary) -> None:
        self.text = text
        self.vocab = vocab
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token | None = None) -> QueryError:
        tok = tok or self.tok
        return QueryError(message, self.text, tok.column, len(tok.text))

    def keyword(self, word: str) -> bool:
        if self.tok.kind == "name" and self.tok.text.lower() == word:
            self.i += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if self.tok.kind != "op" or self.tok.text != op:
            found = f"{self.tok.text!r}" if self.tok.kind != "end" else "the end"
            raise self.error(f"expected {op!r}, found {found}")
        self.i += 1

    def parse(self) -> Sql:
        if self.tok.kind == "end":
            raise self.error("empty expression")
        sql, params = self.expr()
        if self.tok.kind != "end":
            raise self.error(f"unexpected {self.tok.text!r} (expected and, or, or the end)")
        return Sql(sql, tuple(params))

    def expr(self) -> tuple[str, list[object]]:
        sql, params = self.term()
        while self.keyword("or"):
            right, more = self.term()
            sql, params = f"({sql} OR {right})", params + more
        return sql, params

    def term(self) -> tuple[str, list[object]]:
        sql, params = self.factor()
        while self.keyword("and"):
            right, more = self.factor()
            sql, params = f"({sql} AND {right})", params + more
        return sql, params

    def factor(self) -> tuple[str, list[object]]:
        self.depth += 1
        try:
            return self._factor()
        finally:
            self.depth -= 1

    def _factor(self) -> tuple[str, list[object]]:
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} deep")
        if self.keyword("not"):
            sql, params = self.factor()
            return f"(NOT COALESCE({sql}, 0))", params
        if self.tok.kind == "op" and self.tok.text == "(":
            self.i += 1
            sql, params = self.expr()
            self.expect(")")
            return sql, params
        return self.comparison()

    def comparison(self) -> tuple[str, list[object]]:
        start = self.tok
        left, lp = self.operand()
        negate = self.keyword("not")
        if negate or (self.tok.kind == "name" and self.tok.text.lower() == "in"):
            if not self.keyword("in"):
                raise self.error("expected 'in' after 'not'")
            values = self.literal_list()
            marks = ", ".join("?" * len(values))
            return f"({left} {'NOT IN' if negate else 'IN'} ({marks}))", lp + values
        op = self.tok
        if op.kind != "op" or op.text not in (*_OPS, "~", "!~"):
            found = f"{op.text!r}" if op.kind != "end" else "the end"
            what = "a comparison (=, !=, <, <=, >, >=, in, ~)"
            raise self.error(f"expected {what} after {start.text!r}, found {found}", op)
        self.i += 1
        if op.text in ("~", "!~"):
            pattern = self.tok
            if pattern.kind != "string":
                raise self.error("a regex must be a quoted string")
            try:
                re.compile(str(pattern.value))
            except re.error as e:
                raise self.error(f"bad regex: {e}", pattern) from None
            self.i += 1
            sql = f"COALESCE({left} REGEXP ?, 0)"
            return (f"(NOT {sql})" if op.text == "!~" else sql), lp + [pattern.value]
        if self.tok.kind == "name" and self.tok.text.lower() == "null":
            self.i += 1
            if op.text not in ("=", "==", "!=", "<>"):
                raise self.error("null compares only with = or !=", op)
            return f"({left} IS {'NOT ' if _OPS[op.text] == '!=' else ''}NULL)", lp
        right, rp = self.operand()
        return f"({left} {_OPS[op.text]} {right})", lp + rp

    def literal_list(self) -> list[object]:
        self.expect("(")
        values = [self.literal()]
        while self.tok.kind == "op" and self.tok.text == ",":
            self.i += 1
            values.append(self.literal())
        self.expect(")")
        return values

    def literal(self) -> object:
        tok = self.tok
        if tok.kind in ("number", "string"):
            self.i += 1
            return tok.value
        if tok.kind == "name" and tok.text.lower() in ("true", "false"):
            self.i += 1
            return tok.text.lower()  # the store keeps booleans as the words true / false
        raise self.error(f"expected a number or a quoted string, found {tok.text or 'the end'!r}")

    def operand(self) -> tuple[str, list[object]]:
        tok = self.tok
        if tok.kind in ("number", "string") or (tok.kind == "name" and tok.text.lower() in ("true", "false")):
            return "?", [self.literal()]
        if tok.kind != "name" or tok.text.lower() in _KEYWORDS:
            found = f"{tok.text!r}" if tok.kind != "end" else "the end"
            raise self.error(f"expected a name, function or value, found {found}")
        self.i += 1
        nxt = self.tok
        if nxt.kind == "op" and nxt.text == "(":
            return self.function(tok)
        return resolve_name(tok.text, self.vocab, lambda m: self.error(m, tok))

    def function(self, name: Token) -> tuple[str, list[object]]:
        column = FUNCTIONS.get(name.text.lower())
        if column is None:
            raise self.error(f"unknown function {name.text!r} (known: {', '.join(FUNCTIONS)})", name)
        self.expect("(")
        arg = self.tok
        if arg.kind not in ("name", "string"):
            raise self.error("expected a metric name")
        metric = str(arg.value) if arg.kind == "string" else arg.text
        self.i += 1
        self.expect(")")
        return metric_sql(column, metric, self.vocab, lambda m: self.error(m, arg))


def resolve_name(name: str, vocab: Vocabulary, error) -> tuple[str, list[object]]:  # noqa: ANN001
    low = name.lower()
    if low in RUN_FIELDS:
        return RUN_FIELDS[low], []
    if low in USAGE_FIELDS:
        return f"(SELECT SUM(u.{low}) FROM usage u WHERE u.run = r.name)", []
    key = name
    if key not in vocab.config_keys:
        fits = sorted(k for k in vocab.config_keys if k.endswith("." + name))
        if len(fits) > 1:
            raise error(f"ambiguous key {name!r}: {', '.join(fits[:5])}")
        if not fits:
            raise error(f"unknown key {name!r} (not a run field, nor a config key of any run)")
        key = fits[0]
    return "(SELECT c.value FROM config c WHERE c.run_id = r.id AND c.key = ?)", [key]


def metric_sql(column: str, metric: str, vocab: Vocabulary, error) -> tuple[str, list[object]]:  # noqa: ANN001
    if metric not in vocab.metrics:
        close = sorted(m for m in vocab.metrics if metric.lower() in m.lower())[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise error(f"unknown metric {metric!r}{hint}")
    return f"(SELECT s.{column} FROM summary s WHERE s.run_id = r.id AND s.metric = ?)", [metric]


def compile_where(text: str, vocab: Vocabulary) -> Sql:
    """The expression as an SQL condition on `runs r`, with its parameters; QueryError if bad."""
    return _Parser(text, vocab).parse()


def compile_ref(text: str, vocab: Vocabulary) -> Sql:
    """One column or sort key: a name or FUNC(metric)."""
    p = _Parser(text, vocab)
    sql, params = p.operand()
    if p.tok.kind != "end" or sql == "?":
        raise p.error(f"expected one name or FUNC(metric), found {p.tok.text or text!r}")
    return Sql(sql, tuple(params))


@dataclass(frozen=True)
class SortKey:
    text: str
    sql: Sql
    descending: bool


def parse_sort(text: str, vocab: Vocabulary) -> list[SortKey]:
    """`KEY[,KEY...]`, each `-KEY` or `KEY desc` for descending; missing values sort last."""
    keys = []
    for part in _split_top(text):
        body, desc = part.strip(), False
        if body.startswith("-"):
            body, desc = body[1:].strip(), True
        low = body.lower()
        for word, flag in ((" desc", True), (" asc", False)):
            if low.endswith(word):
                body, desc = body[: -len(word)].strip(), flag
        try:
            keys.append(SortKey(body, compile_ref(body, vocab), desc))
        except QueryError as e:
            offset = text.find(body) if body else 0
            raise QueryError(e.message, text, offset + e.column, e.length) from None
    return keys


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def select_runs(store: Store, where: str | None = None, sort: str | None = None,
                columns: Iterable[str] = ()) -> tuple[list[str], list[tuple[object, ...]]]:
    """Run names (first column) and the asked columns of the runs matching `where`, sorted."""
    vocab = Vocabulary.of(store)
    cond = compile_where(where, vocab) if where and where.strip() else Sql("1", ())
    refs = []
    for col in columns:
        try:
            refs.append(compile_ref(col, vocab))
        except QueryError as e:
            raise QueryError(e.message, col, e.column, e.length) from None
    order = parse_sort(sort, vocab) if sort else []
    select = ", ".join(["r.name", *(r.sql for r in refs)])
    order_sql = ", ".join(
        [f"({k.sql.sql}) IS NULL, ({k.sql.sql}) {'DESC' if k.descending else 'ASC'}" for k in order]
        + ["r.name"])
    params: list[object] = [p for r in refs for p in r.params] + list(cond.params)
    for k in order:
        params += list(k.sql.params) * 2
    sql = f"SELECT {select} FROM runs r WHERE {cond.sql} ORDER BY {order_sql}"
    rows = store.conn.execute(sql, params).fetchall()
    return ["run", *columns], rows
