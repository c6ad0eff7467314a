"""Mutation testing for the modules that enforce the privacy guarantee (issue 21).

A test suite that passes says little about a privacy check unless breaking the check makes a
test fail. This script breaks the privacy modules on purpose, one small change ("mutant") at a
time, runs the fast tests that execute the changed line, and reports the mutants no test
noticed (the survivors): each is a check the tests do not pin down, or an equivalent change.

Usage (too slow for CI: run it by hand, nice'd, on an otherwise quiet tree):

    nice -n 10 .venv/bin/python benchmarks/mutation_test.py --jobs 1 --out mutation.json
    .venv/bin/python benchmarks/mutation_test.py --list                     # mutants, no run
    .venv/bin/python benchmarks/mutation_test.py --targets fl_client/privacy_accounting.py \
        --tests tests/test_privacy_accounting.py --limit 10                 # a quick try
    .venv/bin/python benchmarks/mutation_test.py --only fl_client/privacy_budget.py:57
    .venv/bin/python benchmarks/mutation_test.py --markdown mutation.json   # docs/TESTING.md

How it works: the repository is copied to a temporary folder per job (without .venv, .git and
caches); the working tree is never touched. A baseline run of the tests in the copy, with a
line tracer, records which test executes which line of the targets; it is cached in the
temporary directory, keyed by the hash of every .py file. Each mutant is then written into a
copy and only the tests that execute its lines run (fastest first, ``-x``), with this venv's
python and the copy first on ``sys.path``, in a child forked from a process that has already
imported the libraries. The baseline clears the targets' ``lru_cache``s before each test, so
that a cache hit hides no caller; import-time code runs the tests that read what it defines.

Operators (Python ``ast``, no dependency): comparison flips (``<`` ``<=`` ``>`` ``>=`` ``==``
``!=``, ``in``/``not in``, ``is``/``is not``), arithmetic (``+`` ``-`` ``*`` ``/`` ``//``
``**``), numbers (+1 and 0), ``True``/``False``, ``None`` -> ``True``, removing a statement
(call, ``raise``, ``assert``, re-assignment: replaced by ``pass``), ``return X`` ->
``return None``, ``and``/``or`` swaps and ``not`` removal. Strings are never mutated;
docstrings, log calls and error messages (exception arguments, ``Error(...)`` replies, assert
messages) are skipped and counted. The tools on PyPI did not fit: mutmut 3 skips decorated
functions (every ``lru_cache``'d planner and every Flower handler here), cosmic-ray rewrites the
tree it runs in and cannot select tests per line.
"""

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# FILE or FILE::FUNC,FUNC (only the mutants inside those functions, by qualified name or its
# first part). client_app.py is whole: it is the handlers that call redaction and the budget,
# and naming them here would silently drop mutants when they are renamed.
TARGETS = [
    "fl_client/dp_training.py",
    "fl_client/dp_evaluation.py",
    "fl_client/privacy_accounting.py",
    "fl_client/privacy_budget.py",
    "fl_client/privacy_ledger.py",
    "fl_client/privacy_units.py",
    "fl_client/egress_guard.py",
    "fl_client/secure_aggregation.py",
    "fl_client/client_app.py",
    "fl_client/site_secret.py",
    "fl_protocol/wire.py",
    "fl_protocol/durable_files.py",
    "fl_protocol/secret_sharing.py",
    "fl_client/retention.py",
    "fl_client/deletion_log.py",
    "fl_client/customer_ids.py",
    "fl_client/distributed_dp.py",
    "fl_client/skellam_gdp.py",
    "fl_protocol/distributed_sum.py",
    "fl_protocol/hash_chain.py",
    "fl_protocol/secagg_masks.py",
    "fl_client/erase_lines.py",
    "fl_client/supernode.py",
    "fl_client/start_checks.py",
    "fl_protocol/written_numbers.py",
]
# Redaction (fl_client/redaction*.py, 1000 mutants and 800 tests) is run by itself with
# --targets (docs/TESTING.md). New privacy modules are picked up by name, so that a module
# added under fl_client/ is mutated without editing this list (privacy_report.py only formats:
# left out).
DISCOVER = ["fl_client/site_policy*.py", "fl_client/*ledger*.py", "fl_client/privacy_*.py",
            "fl_client/*guarantee*.py", "fl_client/dp_*.py"]
NOT_DISCOVERED = {"fl_client/privacy_report.py"}

FAST_TESTS = [
    "tests/test_privacy_ledger.py",
    "tests/test_dp_training.py",
    "tests/test_egress_guard.py",
    "tests/test_privacy_accounting.py",
    "tests/test_site_privacy.py",
    "tests/test_site_guarantee.py",
    "tests/test_site_secure_aggregation.py",
    "tests/test_wire_contract.py",
    "tests/test_durable_files.py",
    "tests/test_secret_sharing.py",
    "tests/test_retention.py",
    "tests/test_site_policy_edges.py",
    "tests/test_retention_edges.py",
    "tests/test_distributed_dp.py",
    "tests/test_overflow_oracle.py",
    "tests/test_distributed_dp_edges.py",
    "tests/test_skellam_gdp.py",
    "tests/test_customer_ids.py",
    "tests/test_customer_forms.py",
    "tests/test_audit_log.py",
    "tests/test_secagg_masks.py",
    "tests/test_erasure_file_swaps.py",
    "tests/test_site_supernode.py",
    "tests/test_cpu_threads.py",
]
SLOW_TESTS = ["tests/test_secure_aggregation.py"]

COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache",
                                     ".ruff_cache", ".mypy_cache", "*.egg-info", "mutants")
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-n", "0"]
"""``-n 0``: in-process, not on the suite's pytest-xdist workers (``addopts``), so that the line
tracer and the forked mutant server see the tests run."""

LOG_FUNCTIONS = {"log", "print"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
CACHE_DECORATORS = {"lru_cache", "cache"}
COMPARE_FLIPS: dict[type, list[type]] = {
    ast.Lt: [ast.LtE, ast.GtE], ast.LtE: [ast.Lt, ast.Gt], ast.Gt: [ast.GtE, ast.LtE],
    ast.GtE: [ast.Gt, ast.Lt], ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq],
    ast.In: [ast.NotIn], ast.NotIn: [ast.In], ast.Is: [ast.IsNot], ast.IsNot: [ast.Is],
}
ARITH_SWAPS: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv,
}

# The pytest plugin of the baseline run: which test executes which line of the targets.
TRACER = '''
import json, os, sys, threading, time
import pytest

_FILES = set(os.environ["MUTATION_TRACE_FILES"].split(os.pathsep))
_lines = {}
_durations = {}
_failed = []
_context = ["<import>"]


def _local(frame, event, arg):
    if event == "line":
        _lines.setdefault(_context[0], {}).setdefault(frame.f_code.co_filename, set()).add(
            frame.f_lineno)
    return _local


def _global(frame, event, arg):
    return _local if frame.f_code.co_filename in _FILES else None


def pytest_collection_finish(session):
    sys.settrace(_global)
    threading.settrace(_global)


def _clear_caches():
    # A cache hit skips the function's lines: with the caches of the targets cleared before
    # every test, each test that calls a cached function is seen to run it.
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) in _FILES:
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _clear_caches()
    _context[0] = item.nodeid
    started = time.perf_counter()
    yield
    _durations[item.nodeid] = time.perf_counter() - started
    _context[0] = "<between>"


def pytest_runtest_logreport(report):
    if report.failed:
        _failed.append(report.nodeid)


def pytest_collectreport(report):
    if report.failed:
        _failed.append(report.nodeid)


def pytest_unconfigure(config):
    sys.settrace(None)
    lines = {ctx: {f: sorted(ls) for f, ls in files.items()} for ctx, files in _lines.items()}
    copy = os.environ["MUTATION_COPY"]
    modules = [name for name, module in list(sys.modules.items())
               if not (getattr(module, "__file__", None) or copy).startswith(copy)]
    with open(os.environ["MUTATION_TRACE_OUT"], "w") as out:
        json.dump({"lines": lines, "durations": _durations, "failed": _failed,
                   "modules": modules}, out)
'''


# Imports the libraries the tests use (torch, opacus, flwr, ...) once, then forks one child per
# mutant that runs pytest in-process: the child imports only the project's modules, from the
# copy. Start-up drops from about 15 s to about 1 s on this 2-core machine.
FORK_SERVER = r'''
import importlib, json, os, signal, sys, threading, time, traceback
project, modules = json.loads(sys.stdin.readline())
for name in modules:
    skip = ("ray", "__main__", "test_", "mutation_trace")
    if name.split(".")[0] in project or name.startswith(skip):
        continue
    try:
        importlib.import_module(name)
    except BaseException:
        pass
import pytest
leaked = sorted(m for m in sys.modules if m.split(".")[0] in project)
print(json.dumps({"leaked": leaked, "threads": len(os.listdir("/proc/self/task")),
                  "modules": len(sys.modules)}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        code = 3
        try:
            code = int(pytest.main(request["args"]))
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = None
            break
        time.sleep(0.05)
    print(json.dumps({"code": code}), flush=True)
'''


@dataclass
class Mutant:
    file: str
    line: int
    end_line: int
    index: int
    function: str
    operator: str
    original: str
    mutant: str
    import_time: bool
    cached: bool
    source: str = field(repr=False)
    names: list[str] = field(default_factory=list)
    use_lines: list[int] = field(default_factory=list)
    status: str = ""
    seconds: float = 0.0
    tests_run: int = 0
    killed_by: str = ""

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}:{self.index}"

    def describe(self) -> str:
        return f"{self.file}:{self.line}: {self.original} -> {self.mutant}"


# ---------------------------------------------------------------------------------------------
# Making mutants


@dataclass
class _Context:
    scope: str = ""
    in_function: bool = False
    cached: bool = False
    skip: str = ""
    bindings: dict[str, list[int]] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # module constants this import-time code defines
    use_lines: tuple[int, ...] = ()  # where a default argument takes effect: the body


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _is_log_call(call: ast.Call) -> bool:
    """log(WARNING, ...), logger.info(...), warnings.warn(...), print(...)."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in LOG_FUNCTIONS
    if isinstance(func, ast.Attribute) and func.attr in LOG_METHODS:
        base = func.value
        name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        return "log" in name.lower() or name == "warnings"
    return False


def _is_error_call(call: ast.Call) -> bool:
    """An exception, or a Flower ``Error(code, reason)`` reply: its arguments are a message."""
    name = _call_name(call)
    return name == "Error" or name.endswith(("Error", "Exception", "Warning"))


def _is_docstring(node: ast.stmt, parent_body: list[ast.stmt]) -> bool:
    return (parent_body and parent_body[0] is node and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))


def _bindings(function: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, list[int]]:
    """Where each local name is bound: arguments at line 0, assignments at their line."""
    bound: dict[str, list[int]] = {}
    args = function.args
    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
        if arg is not None:
            bound.setdefault(arg.arg, []).append(0)
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.setdefault(node.id, []).append(node.lineno)
    return bound


def _target_names(target: ast.expr) -> list[ast.expr]:
    if isinstance(target, ast.Tuple | ast.List):
        return [n for elt in target.elts for n in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return [target]


def _is_reassignment(stmt: ast.stmt, ctx: _Context) -> bool:
    """Removing a first assignment only raises NameError; removing a re-assignment (or a write
    to an attribute or item) is the interesting mutant."""
    if not ctx.in_function:
        return False
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    for target in (n for t in targets for n in _target_names(t)):
        if isinstance(target, ast.Name) and not any(
                line < stmt.lineno for line in ctx.bindings.get(target.id, [])):
            return False
    return True


class _Maker:
    """Walks one module and collects (node, replacement text, operator, shown mutant)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tree = ast.parse(text)
        self.lines = text.encode().splitlines(keepends=True)
        self.found: list[tuple[ast.AST, str, str, str, _Context]] = []
        self.skipped: Counter[str] = Counter()

    def add(self, node: ast.AST, replacement: str, operator: str, shown: str,
            ctx: _Context) -> None:
        if ctx.skip:
            self.skipped[ctx.skip] += 1
        else:
            self.found.append((node, replacement, operator, shown, ctx))

    def expression(self, node: ast.expr, new: ast.expr, operator: str, ctx: _Context) -> None:
        self.add(node, f"({ast.unparse(new)})", operator, ast.unparse(new), ctx)

    def walk_body(self, body: list[ast.stmt], ctx: _Context) -> None:
        for stmt in body:
            if _is_docstring(stmt, body):
                self.skipped["docstring"] += 1
                continue
            if not ctx.in_function and isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                names = [n.id for t in targets for n in _target_names(t)
                         if isinstance(n, ast.Name)]
                self.statement(stmt, _Context(**{**vars(ctx), "names": tuple(names)}))
                continue
            self.statement(stmt, ctx)

    def statement(self, stmt: ast.stmt, ctx: _Context) -> None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            self.definition(stmt, ctx)
            return
        if isinstance(stmt, ast.Import | ast.ImportFrom | ast.Global | ast.Nonlocal):
            return
        if (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare)
                and ast.unparse(stmt.test).startswith("__name__")):
            return
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            if _is_log_call(stmt.value):
                ctx = _Context(**{**vars(ctx), "skip": ctx.skip or "log message"})
            self.add(stmt, "pass", "remove call", "pass", ctx)
        elif isinstance(stmt, ast.Raise | ast.Assert | ast.AugAssign | ast.Delete) or (
                isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None
                and _is_reassignment(stmt, ctx)):
            self.add(stmt, "pass", f"remove {type(stmt).__name__.lower()}", "pass", ctx)
        if isinstance(stmt, ast.Return) and stmt.value is not None and not (
                isinstance(stmt.value, ast.Constant) and stmt.value.value is None):
            self.add(stmt, "return None", "return None", "return None", ctx)
        if isinstance(stmt, ast.AugAssign) and type(stmt.op) in ARITH_SWAPS:
            new = ast.AugAssign(stmt.target, ARITH_SWAPS[type(stmt.op)](), stmt.value)
            self.add(stmt, ast.unparse(new), "arithmetic", ast.unparse(new), ctx)
        for name, value in ast.iter_fields(stmt):
            if name in ("annotation", "returns", "type_comment"):
                continue
            self.child(stmt, name, value, ctx)

    def child(self, parent: ast.AST, name: str, value: object, ctx: _Context) -> None:
        if isinstance(value, list):
            if value and isinstance(value[0], ast.stmt):
                self.walk_body(value, ctx)
            else:
                for item in value:
                    self.child(parent, name, item, ctx)
        elif isinstance(value, ast.expr):
            if isinstance(parent, ast.Assert) and name == "msg":
                ctx = _Context(**{**vars(ctx), "skip": ctx.skip or "error message"})
            if isinstance(parent, ast.Raise) and name == "exc":
                ctx = _Context(**{**vars(ctx), "skip": ctx.skip or "error message"})
            self.expr(value, ctx)
        elif isinstance(value, ast.AST):
            for sub_name, sub in ast.iter_fields(value):
                if sub_name != "annotation":
                    self.child(value, sub_name, sub, ctx)

    def definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
                   ctx: _Context) -> None:
        """Decorators and defaults run where the def is; the body runs on call."""
        for decorator in node.decorator_list:
            name = _call_name(decorator) if isinstance(decorator, ast.Call) else ""
            self.expr(decorator, _Context(**{**vars(ctx), "skip": ctx.skip or (
                "cache size" if name in CACHE_DECORATORS else "")}))
        scope = f"{ctx.scope}.{node.name}" if ctx.scope else node.name
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                self.expr(base, ctx)
            self.walk_body(node.body, _Context(**{**vars(ctx), "scope": scope}))
            return
        body = tuple(range(node.body[0].lineno, node.end_lineno + 1))
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.expr(default, _Context(**{**vars(ctx), "use_lines": body}))
        cached = ctx.cached or any(
            (_call_name(d) if isinstance(d, ast.Call) else getattr(d, "id", "")) in
            CACHE_DECORATORS for d in node.decorator_list)
        self.walk_body(node.body, _Context(scope, True, cached, ctx.skip, _bindings(node)))

    def expr(self, node: ast.expr, ctx: _Context) -> None:
        if isinstance(node, ast.JoinedStr):
            self.skipped[ctx.skip or "f-string"] += sum(1 for _ in _Maker._count(node))
            return
        if isinstance(node, ast.Call) and not ctx.skip:
            if _is_log_call(node):
                ctx = _Context(**{**vars(ctx), "skip": "log message"})
            elif _is_error_call(node):
                ctx = _Context(**{**vars(ctx), "skip": "error message"})
        if isinstance(node, ast.Lambda):
            ctx = _Context(**{**vars(ctx), "in_function": True})
        self.mutations(node, ctx)
        for name, value in ast.iter_fields(node):
            self.child(node, name, value, ctx)

    @staticmethod
    def _count(node: ast.AST):
        """The values inside an f-string that an operator would have mutated."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Compare | ast.BinOp | ast.BoolOp) or (
                    isinstance(sub, ast.Constant) and not isinstance(sub.value, str)):
                yield sub

    def mutations(self, node: ast.expr, ctx: _Context) -> None:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                for new_op in COMPARE_FLIPS.get(type(op), []):
                    ops = [*node.ops[:i], new_op(), *node.ops[i + 1:]]
                    new = ast.Compare(node.left, ops, node.comparators)
                    self.expression(node, new, "comparison", ctx)
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITH_SWAPS:
            if not any(isinstance(side, ast.Constant | ast.JoinedStr) and isinstance(
                    getattr(side, "value", ""), str | bytes) for side in (node.left, node.right)):
                new = ast.BinOp(node.left, ARITH_SWAPS[type(node.op)](), node.right)
                self.expression(node, new, "arithmetic", ctx)
        elif isinstance(node, ast.BoolOp):
            new = ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(),
                             node.values)
            self.expression(node, new, "and/or", ctx)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.expression(node, node.operand, "remove not", ctx)
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                self.expression(node, ast.Constant(not value), "boolean", ctx)
            elif value is None:
                self.expression(node, ast.Constant(True), "None", ctx)
            elif isinstance(value, int | float):
                self.expression(node, ast.Constant(value + 1), "number", ctx)
                if value != 0:
                    self.expression(node, ast.Constant(0 * value), "number", ctx)

    def splice(self, node: ast.AST, replacement: str) -> str:
        lines = self.lines
        first, last = node.lineno - 1, node.end_lineno - 1
        head, tail = lines[first][: node.col_offset], lines[last][node.end_col_offset:]
        return b"".join([*lines[:first], head + replacement.encode() + tail,
                         *lines[last + 1:]]).decode()


def _definitions(body: list[ast.stmt], prefix: str = "") -> set[str]:
    """The functions and classes a body defines, by bare and by qualified name (``Cls.meth``)."""
    names: set[str] = set()
    for node in body:
        for child in ast.walk(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(child.name)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(prefix + node.name)
            names |= _definitions(node.body, f"{prefix}{node.name}.")
    return names


def make_mutants(root: Path, target: str) -> tuple[list[Mutant], Counter[str]]:
    """Every mutant of one target (``FILE`` or ``FILE::FUNC,FUNC``) and the skipped counts."""
    path, _, functions = target.partition("::")
    wanted = {f for f in functions.split(",") if f}
    text = (root / path).read_text(encoding="utf-8")
    maker = _Maker(text)
    maker.walk_body(maker.tree.body, _Context())
    original_dump = ast.dump(maker.tree)
    loads: dict[str, set[int]] = {}
    for node in ast.walk(maker.tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            loads.setdefault(node.id, set()).add(node.lineno)
    mutants: list[Mutant] = []
    skipped = maker.skipped
    defined = _definitions(maker.tree.body)
    for name in sorted(wanted - defined):
        print(f"warning: {path} defines no function {name!r}", flush=True)
    per_line: Counter[int] = Counter()
    for node, replacement, operator, shown, ctx in sorted(
            maker.found, key=lambda f: (f[0].lineno, f[0].col_offset)):
        if wanted and not (ctx.scope in wanted or ctx.scope.split(".")[0] in wanted):
            continue
        source = maker.splice(node, replacement)
        try:
            tree = ast.parse(source)
            compile(tree, path, "exec")
        except (SyntaxError, ValueError):
            skipped["does not compile"] += 1
            continue
        if ast.dump(tree) == original_dump:
            skipped["no change"] += 1
            continue
        per_line[node.lineno] += 1
        original = ast.get_source_segment(text, node) or ""
        if isinstance(node, ast.stmt):
            original = original.splitlines()[0] + (" ..." if "\n" in original else "")
        mutants.append(Mutant(
            file=path, line=node.lineno, end_line=node.end_lineno, index=per_line[node.lineno],
            function=ctx.scope, operator=operator, original=_short(original),
            mutant=_short(shown), import_time=not ctx.in_function, cached=ctx.cached,
            source=source, names=list(ctx.names), use_lines=sorted(
                set(ctx.use_lines).union(*(loads.get(n, set()) for n in ctx.names)))))
    return mutants, skipped


def discover_targets(root: Path, targets: list[str]) -> list[str]:
    """The configured targets plus privacy modules added since under matching names."""
    known = {t.partition("::")[0] for t in targets}
    found = sorted({str(p.relative_to(root)) for pattern in DISCOVER for p in root.glob(pattern)}
                   - known - NOT_DISCOVERED)
    return [*targets, *found]


# ---------------------------------------------------------------------------------------------
# Copies, baseline and runs


def make_copy(destination: Path) -> Path:
    shutil.copytree(ROOT, destination, ignore=COPY_IGNORE, symlinks=True)
    return destination


def child_env(copy: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The copy first on sys.path (ahead of the editable install), no .pyc written: a mutant
    of the same size and second as the original could otherwise be read back from a stale
    cache."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    return {**env, **(extra or {})}


def run_pytest(copy: Path, args: list[str], timeout: float,
               env: dict[str, str] | None = None) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, output, seconds); a timed-out run's group is killed."""
    started = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=copy,
                          env=env or child_env(copy), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
            return proc.returncode, output, time.monotonic() - started
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return None, output, time.monotonic() - started


class ForkServer:
    """One per copy: a python with the libraries loaded that forks a pytest per request."""

    def __init__(self, copy: Path, modules: list[str], project: list[str]) -> None:
        self.copy = copy
        self.log = copy.parent / f"{copy.name}-pytest.log"
        script = copy.parent / f"{copy.name}-fork_server.py"
        script.write_text(FORK_SERVER, encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, str(script)], cwd=copy,
                                     env=child_env(copy), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.proc.stdin.write(json.dumps([project, modules]) + "\n")
        self.proc.stdin.flush()
        ready = json.loads(self.proc.stdout.readline() or "{}")
        if ready.get("leaked"):
            raise SystemExit(f"fork server imported project modules: {ready['leaked'][:5]}")
        if ready.get("threads", 1) > 1:
            print(f"note: fork server has {ready['threads']} threads after preloading",
                  flush=True)

    def run(self, args: list[str], timeout: float) -> tuple[int | None, str, float]:
        started = time.monotonic()
        request = {"args": args, "timeout": timeout, "log": str(self.log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("fork server died")
        output = self.log.read_text(encoding="utf-8", errors="replace")
        return json.loads(reply)["code"], output, time.monotonic() - started

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def check_copy_is_imported(copy: Path, target: str, test: str) -> None:
    """Break the import of the target's package in the copy: if the tests still collect, they
    run the editable install instead of the copy and every mutant would survive."""
    path = copy / Path(target).parts[0] / "__init__.py"
    if not path.is_file():  # deploy/'s scripts: the tests load them by path, from the copy
        print(f"import check: {Path(target).parts[0]}/ is no package; its tests load "
              f"{target} by path from their own folder's repository, the copy", flush=True)
        return
    text = path.read_text(encoding="utf-8")
    path.write_text("raise ImportError('mutation-test import check')\n" + text, "utf-8")
    try:
        code, output, _ = run_pytest(copy, ["--collect-only", *PYTEST_ARGS, test], 600)
    finally:
        path.write_text(text, encoding="utf-8")
    if code == 0 or "mutation-test import check" not in output:
        raise SystemExit(f"the tests do not import the copy in {copy}; output:\n{output[-2000:]}")
    print(f"import check: a broken {path.relative_to(copy)} fails collection, so the tests "
          "run the copy", flush=True)


def tree_hash(copy: Path, tests: list[str], targets: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([TRACER, tests, targets, sys.executable]).encode())
    for path in sorted(copy.rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        digest.update(str(path.relative_to(copy)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def baseline(copy: Path, tests: list[str], files: list[str], cache_dir: Path,
             key: str, untraced: bool = False) -> dict:
    """Run the tests once with the line tracer: lines per test, durations, start-up time."""
    cached = cache_dir / f"baseline-{key}.json"
    if cached.is_file():
        trace = json.loads(cached.read_text())
        print(f"baseline: reusing {cached} ({len(trace['durations'])} tests, "
              f"{len(trace['failed'])} failing: left out)", flush=True)
        return trace
    plugin_dir = copy.parent / f"{copy.name}-plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "mutation_trace.py").write_text(TRACER, encoding="utf-8")
    out = plugin_dir / "trace.json"
    env = child_env(copy, {
        "PYTHONPATH": os.pathsep.join([str(copy), str(plugin_dir)]),
        "MUTATION_TRACE_FILES": os.pathsep.join(str(copy / f) for f in files),
        "MUTATION_TRACE_OUT": str(out), "MUTATION_COPY": str(copy)})
    print(f"baseline: running {len(tests)} test files with the line tracer ...", flush=True)
    code, output, seconds = run_pytest(copy, ["-q", "-p", "no:cacheprovider", "-n", "0", "-p",
                                              "mutation_trace",
                                              "--continue-on-collection-errors", *tests],
                                       7200, env)
    if code not in (0, 1) or not out.is_file():
        raise SystemExit(f"baseline run failed (exit {code}):\n{output[-3000:]}")
    trace = json.loads(out.read_text())
    prefix = str(copy) + os.sep
    trace["lines"] = {ctx: {f.removeprefix(prefix): ls for f, ls in per_file.items()}
                      for ctx, per_file in trace["lines"].items()}
    if not untraced and not any(f in files for per_file in trace["lines"].values()
                                for f in per_file):  # --all-tests: tests that run a script
        raise SystemExit("baseline: no target line ran from the copy; is it imported?")
    trace["seconds"] = seconds
    trace["startup"] = max(0.0, seconds - sum(trace["durations"].values()))
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(trace))
    print(f"baseline: {len(trace['durations'])} tests in {seconds:.0f} s, "
          f"{len(trace['failed'])} failing (left out)", flush=True)
    for failed in trace["failed"]:
        print(f"  failing before any mutation: {failed}", flush=True)
    return trace


def _mentions(test: str, names: list[str]) -> bool:
    text = (ROOT / test.split("::")[0]).read_text(encoding="utf-8")
    return any(re.search(rf"\b{re.escape(name)}\b", text) for name in names)


def select_tests(mutant: Mutant, trace: dict, all_tests: bool) -> list[str]:
    """Tests that execute the mutated lines, fastest first (the baseline clears the targets'
    lru_caches before each test, so a cache hit hides no caller). A module constant: tests
    that run a line reading it, or whose file names it. A default argument: tests that run the
    body. Other import-time code: every test touching the file. Tests that fail before
    mutation never count."""
    durations, failed = trace["durations"], set(trace["failed"])
    lines = set(range(mutant.line, mutant.end_line + 1))
    chosen = []
    for test in durations:
        per_file = set(trace["lines"].get(test, {}).get(mutant.file, []))
        if test in failed or not (per_file or all_tests):
            continue
        if mutant.import_time and (mutant.names or mutant.use_lines):
            hit = bool(per_file & set(mutant.use_lines)) or _mentions(test, mutant.names)
        else:
            hit = mutant.import_time or bool(lines & per_file)
        if all_tests or hit:
            chosen.append(test)
    return sorted(chosen, key=lambda t: durations[t])


def run_mutant(mutant: Mutant, copy: Path, server: ForkServer | None, trace: dict,
               args: argparse.Namespace) -> Mutant:
    tests = select_tests(mutant, trace, args.all_tests)[: args.max_tests]
    mutant.tests_run = len(tests)
    if not tests:
        mutant.status = "no tests"
        return mutant
    durations = trace["durations"]
    startup = 0.0 if server else trace["startup"]
    timeout = args.timeout_base + startup + args.timeout_factor * sum(
        durations[t] for t in tests)
    path = copy / mutant.file
    original = path.read_text(encoding="utf-8")
    path.write_text(mutant.source, encoding="utf-8")
    try:
        if server:
            try:
                code, output, mutant.seconds = server.run([*PYTEST_ARGS, *tests], timeout)
            except (RuntimeError, OSError) as err:
                code, output = -1, f"fork server: {err}"
        else:
            code, output, mutant.seconds = run_pytest(copy, [*PYTEST_ARGS, *tests], timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    if code is None:
        mutant.status = "timeout"
    elif code == 0:
        mutant.status = "survived"
    elif code in (1, 2):  # a failing test, or the mutant broke collection (import)
        mutant.status = "killed"
        found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
        mutant.killed_by = found.group(1) if found else "collection"
    else:
        mutant.status = "error"
        mutant.killed_by = f"pytest exit {code}: " + _short(output[-300:], 200)
    return mutant


def estimate(mutants: list[Mutant], trace: dict, args: argparse.Namespace) -> None:
    """Worst case of a run from the baseline: every selected test of every mutant runs (as
    for a survivor), plus about a second per mutant for the fork and collection."""
    per_file: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for mutant in mutants:
        tests = select_tests(mutant, trace, args.all_tests)[: args.max_tests]
        per_file[mutant.file] += 1.0 + sum(trace["durations"][t] for t in tests)
        counts[mutant.file] += 1
    for file, seconds in per_file.items():
        print(f"{file:42} {counts[file]:4d} mutants  at most {seconds / 60:6.1f} min")
    total = sum(per_file.values()) / max(1, args.jobs)
    print(f"at most {total / 60:.0f} min with {args.jobs} job(s); killed mutants stop at their "
          "first failing test, so a run takes a fraction of this (baseline times are traced, "
          "so inflated too)")


# ---------------------------------------------------------------------------------------------
# Reports

STATUSES = ["killed", "timeout", "survived", "no tests", "error"]


def summarize(mutants: list[Mutant]) -> dict[str, dict]:
    """Per module and overall: counts by status and the kill rate (timeouts count as killed,
    errors are left out; a mutant no test executes is a survivor)."""
    rows: dict[str, Counter[str]] = {}
    for mutant in mutants:
        rows.setdefault(mutant.file, Counter())[mutant.status] += 1
        rows.setdefault("overall", Counter())[mutant.status] += 1
    summary = {}
    for name, counts in sorted(rows.items(), key=lambda r: (r[0] == "overall", r[0])):
        scored = sum(counts[s] for s in STATUSES[:4])
        rate = (counts["killed"] + counts["timeout"]) / scored if scored else float("nan")
        summary[name] = {**{s: counts[s] for s in STATUSES}, "mutants": sum(counts.values()),
                         "kill_rate": round(rate, 4)}
    return summary


def print_summary(summary: dict[str, dict], mutants: list[Mutant]) -> None:
    print(f"\n{'module':42} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} "
          f"{'no tests':>8} {'error':>5} {'kill rate':>9}")
    for name, row in summary.items():
        print(f"{name:42} {row['mutants']:7d} {row['killed']:6d} {row['timeout']:7d} "
              f"{row['survived']:8d} {row['no tests']:8d} {row['error']:5d} "
              f"{row['kill_rate']:9.1%}")
    survivors = [m for m in mutants if m.status in ("survived", "no tests")]
    if survivors:
        print(f"\nsurvivors ({len(survivors)}):")
        for mutant in survivors:
            note = " (no test runs this line)" if mutant.status == "no tests" else ""
            print(f"  {mutant.describe()}{note}")
    errors = [m for m in mutants if m.status == "error"]
    for mutant in errors:
        print(f"  error: {mutant.describe()}: {mutant.killed_by}")


def markdown(report: dict) -> str:
    """The tables of docs/TESTING.md, regenerated from a --out JSON."""
    meta = report["meta"]
    out = [f"Run of {meta['date']} on commit `{meta['commit']}` ({meta['command']}): "
           f"{meta['mutants']} mutants in {meta['seconds'] / 60:.0f} min.", "",
           "| Module | Mutants | Killed | Timeout | Survived | No test runs it | Error "
           "| Kill rate |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["summary"].items():
        label = "**overall**" if name == "overall" else f"`{name}`"
        out.append(f"| {label} | {row['mutants']} | {row['killed']} | {row['timeout']} | "
                   f"{row['survived']} | {row['no tests']} | {row['error']} | "
                   f"{row['kill_rate']:.1%} |")
    skipped = {f: ", ".join(f"{n} {r}" for r, n in sorted(c.items()))
               for f, c in meta["skipped"].items() if c}
    out += ["", "Not mutated: " + "; ".join(f"`{f}`: {n}" for f, n in skipped.items()) + "."]
    survivors = [m for m in report["mutants"] if m["status"] in ("survived", "no tests")]
    out += ["", "| Survivor | Function | Operator | Original | Mutant | Tests run |",
            "|---|---|---|---|---|---:|"]
    for m in survivors:
        where = "import time" if m["import_time"] else ""
        cell = [f"`{m['file']}:{m['line']}`", f"`{m['function']}`" if m["function"] else where,
                m["operator"], f"`{m['original']}`", f"`{m['mutant']}`", str(m["tests_run"])]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cell) + " |")
    if not survivors:
        out.append("| (none) | | | | | |")
    return "\n".join(out)


def merge_reports(reports: list[dict]) -> dict:
    """One report of several passes over the same commit: a later pass's result for a mutant
    (say, its survivors run again with every covering test) replaces an earlier one's, and a
    later whole pass over a module (no --only) replaces every earlier result for it."""
    mutants: dict[str, dict] = {}
    for report in reports:
        if "--only" not in report["meta"]["command"]:  # a whole pass over its targets
            whole = {target.split("::")[0] for target in report["meta"]["targets"]}
            mutants = {i: m for i, m in mutants.items() if m["file"] not in whole}
        mutants |= {m["id"]: m for m in report["mutants"]}
    merged = [Mutant(**{k: v for k, v in m.items() if k != "id"}, source="")
              for m in mutants.values()]
    metas = [report["meta"] for report in reports]
    skipped: dict[str, dict[str, int]] = {}
    for meta in metas:
        skipped |= meta["skipped"]
    meta = {"date": metas[-1]["date"], "commit": ", ".join(dict.fromkeys(m["commit"]
                                                                         for m in metas)),
            "command": "; ".join(f"pass {n}: {m['command']}" for n, m in enumerate(metas, 1)),
            "targets": sorted({t for m in metas for t in m["targets"]}),
            "tests": sorted({t for m in metas for t in m["tests"]}),
            "jobs": max(m["jobs"] for m in metas),
            "seconds": sum(m["seconds"] for m in metas), "mutants": len(merged),
            "baseline_seconds": max(m["baseline_seconds"] for m in metas), "skipped": skipped}
    return {"meta": meta, "summary": summarize(merged), "mutants": list(mutants.values())}


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------------------------


def parse_only(values: list[str]) -> list[tuple[str, int, int | None]]:
    only = []
    for value in values:
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise SystemExit(f"--only wants FILE:LINE or FILE:LINE:K, not {value!r}")
        file = parts[0].removeprefix("./")
        only.append((file, int(parts[1]), int(parts[2]) if len(parts) == 3 else None))
    return only


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Targets: " + " ".join(TARGETS) + ". Fast tests: " + " ".join(FAST_TESTS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", metavar="FILE[::FUNC,..]",
                        help="modules to mutate, optionally only some functions (default: "
                        "the list below plus new fl_client/ privacy modules)")
    parser.add_argument("--tests", nargs="+", metavar="TEST",
                        help="test files or node ids to run (default: the fast tests)")
    parser.add_argument("--slow", action="store_true",
                        help=f"also run {' '.join(SLOW_TESTS)} (minutes per mutant)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its "
                        "own copy of the repository (default 1)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--only", action="append", default=[], metavar="FILE:LINE[:K]",
                        help="run only the mutants on this line (the K-th with :K); repeatable")
    parser.add_argument("--function", action="append", default=[],
                        help="run only mutants inside this function (qualified name)")
    parser.add_argument("--operator", action="append", default=[],
                        help="run only this operator (e.g. comparison, 'remove raise')")
    parser.add_argument("--limit", type=int, help="run only the first N mutants")
    parser.add_argument("--estimate", action="store_true", help="run the baseline only and "
                        "print the worst-case time of the selected mutants")
    parser.add_argument("--max-tests", type=int, help="run at most the N fastest tests that "
                        "execute a mutant's line (quicker; a survivor may then be a false one)")
    parser.add_argument("--all-tests", action="store_true", help="run every test for every "
                        "mutant instead of those executing its line (slow; checks the tracer)")
    parser.add_argument("--no-fork", action="store_true", help="start a fresh python per "
                        "mutant instead of forking a preloaded one (slower, for checking)")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="timeout = base + start-up + factor x baseline test time")
    parser.add_argument("--timeout-base", type=float, default=30.0)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="JSON",
                        help="print docs/TESTING.md's tables from a --out file and exit")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="merge --out files of passes over one commit (later ones win) "
                        "into --out, and exit")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "fedintent-mutation",
                        help="where the baseline coverage is kept between runs")
    args = parser.parse_args()

    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    if args.merge:
        if not args.out:
            raise SystemExit("--merge needs --out")
        reports = [json.loads(path.read_text(encoding="utf-8")) for path in args.merge]
        args.out.write_text(json.dumps(merge_reports(reports), indent=1) + "\n",
                            encoding="utf-8")
        return 0
    targets = args.targets or discover_targets(ROOT, TARGETS)
    tests = args.tests or [t for t in FAST_TESTS if (ROOT / t.split("::")[0]).exists()]
    if args.slow and not args.tests:
        tests += SLOW_TESTS

    mutants: list[Mutant] = []
    skipped: dict[str, Counter[str]] = {}
    for target in targets:
        found, skipped[target.partition("::")[0]] = make_mutants(ROOT, target)
        mutants += found
    only = parse_only(args.only)
    selected = [m for m in mutants if (not only or any(
        m.file == f and m.line == line and k in (None, m.index) for f, line, k in only))
        and (not args.function or m.function in args.function)
        and (not args.operator or m.operator in args.operator)]
    selected = selected[: args.limit] if args.limit else selected

    for file, counts in skipped.items():
        total = sum(m.file == file for m in mutants)
        notes = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()) if n)
        print(f"{file}: {total} mutants; skipped: {notes or 'none'}")
    if args.list:
        for mutant in selected:
            where = f" in {mutant.function}" if mutant.function else " (import time)"
            print(f"{mutant.id} [{mutant.operator}]{where}: {mutant.original} -> "
                  f"{mutant.mutant}")
        print(f"{len(selected)} mutants selected of {len(mutants)}")
        return 0
    if not selected:
        raise SystemExit("no mutant selected")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedintent-mutation-") as tmp:
        copies = [make_copy(Path(tmp) / f"copy{i}") for i in range(max(1, args.jobs))]
        files = sorted({m.file for m in mutants})
        check_copy_is_imported(copies[0], files[0], tests[0].split("::")[0])
        trace = baseline(copies[0], tests, files, args.cache_dir,
                         tree_hash(copies[0], tests, files), args.all_tests)
        if args.estimate:
            estimate(selected, trace, args)
            return 0
        project = sorted({Path(f).parts[0] for f in files} | {
            p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} | {"tests"})
        servers: list[ForkServer | None] = [None] * len(copies)
        if not args.no_fork:
            print("starting fork servers (preloading the tests' libraries) ...", flush=True)
            with ThreadPoolExecutor(max_workers=len(copies)) as pool:
                servers = list(pool.map(
                    lambda c: ForkServer(c, trace.get("modules", []), project), copies))
        free = list(zip(copies, servers, strict=True))
        lock = threading.Lock()

        def work(mutant: Mutant) -> Mutant:
            with lock:
                copy, server = free.pop()
            try:
                return run_mutant(mutant, copy, server, trace, args)
            finally:
                with lock:
                    free.append((copy, server))

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            futures = [pool.submit(work, m) for m in selected]
            for done, future in enumerate(as_completed(futures), 1):
                m = future.result()
                by = f" by {m.killed_by}" if m.status == "killed" else ""
                print(f"[{done}/{len(selected)}] {m.file}:{m.line} {m.operator}: "
                      f"{m.original} -> {m.mutant}: {m.status}{by} "
                      f"({m.tests_run} tests, {m.seconds:.1f} s)", flush=True)
        for server in servers:
            if server:
                server.close()

    seconds = time.monotonic() - started
    summary = summarize(selected)
    print_summary(summary, selected)
    print(f"\n{len(selected)} mutants in {seconds / 60:.1f} min with {args.jobs} job(s)")
    if args.out:
        report = {
            "meta": {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
                     "command": " ".join(["benchmarks/mutation_test.py", *sys.argv[1:]]),
                     "targets": targets, "tests": tests, "jobs": args.jobs,
                     "seconds": round(seconds), "mutants": len(selected),
                     "baseline_seconds": round(trace["seconds"]),
                     "skipped": {f: {r: n for r, n in c.items() if n}
                                 for f, c in skipped.items()}},
            "summary": summary,
            "mutants": [{k: v for k, v in asdict(m).items() if k not in ("source", "use_lines")}
                        | {"id": m.id}
                        for m in selected],
        }
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
