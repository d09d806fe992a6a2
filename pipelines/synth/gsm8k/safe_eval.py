"""Evaluate a model-written `def answer(...)` program WITHOUT handing it to Python: a small interpreter walks the
AST of a whitelisted subset itself, so the program can only do what this file implements. There is no `exec`,
`eval` or `compile` of the program, no attribute lookup on real objects and no way to name anything outside the
tables below; frame walks, `__subclasses__`, format-string tricks and imports are not defended against but simply
unrepresentable. Everything that could grow without bound is metered.

The subset (anything else is refused before running, with the reason):
- values: int, float, Fraction, bool, None, str (to print or compare only), lists and tuples of values
- statements: `def` (plain parameters with defaults; annotations are ignored, never evaluated), return,
  assignment (names, tuple unpacking, list items), augmented assignment, if/elif/else, for over
  range/list/tuple, while, break, continue, pass, assert, `raise ValueError(...)`-style raises, docstrings,
  `import math` / `from math import sqrt` / `from fractions import Fraction` / `from typing import ...`
- expressions: arithmetic, comparisons, and/or/not, `x if c else y`, list/tuple displays, indexing and slicing,
  list comprehensions and generator expressions, calls of the program's own functions and of ALLOWED_FUNCTIONS
  (math functions by bare name or as `math.NAME`), `.append(x)` on a list and `.is_integer()` on a number
- never: any other attribute, dunder names, other imports, lambda, class, try, with, global, f-strings, dicts

Bounds (EvalLimits): evaluation steps, iterations per loop, call depth, integer size (checked BEFORE computing
`**` and `<<`, so `10**10**10` is refused instantly), list/str length, printed bytes, source size, nesting depth.
Only the standard library is imported: the sandbox child loads this module under `python -I -S`.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable


@dataclass(frozen=True)
class EvalLimits:
    max_steps: int = 300_000  # AST nodes evaluated; well under the child's CPU-seconds limit
    max_loop_iterations: int = 100_000
    max_call_depth: int = 32
    max_int_bits: int = 4096  # GSM8K answers are tiny; 4096 bits is ~1233 decimal digits
    max_items: int = 100_000  # list/tuple/str length
    max_total_items: int = 2_000_000  # items of all sequences built in one run (memory, not just length)
    max_output_bytes: int = 65536  # what `print` may produce in total (it goes nowhere)
    max_source_chars: int = 20_000
    max_nesting: int = 60  # AST depth; keeps the interpreter's own recursion far from Python's limit


class ProgramRejected(Exception):
    """The program uses something outside the subset; nothing of it was run."""


class ProgramFailed(Exception):
    """The program raised, or did an operation the subset does not define (e.g. `"a" - 1`)."""


class LimitExceeded(Exception):
    """The program hit one of the EvalLimits."""


# --- what a program may name ---------------------------------------------------------------------------------------
_MATH_NAMES = (
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "copysign", "cos", "cosh",
    "degrees", "exp", "exp2", "expm1", "fabs", "floor", "fmod", "fsum", "gcd", "hypot", "isclose",
    "isfinite", "isinf", "isnan", "isqrt", "lcm", "log", "log10", "log1p", "log2", "radians", "remainder",
    "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
)
_MATH_CONSTANTS = ("pi", "e", "tau", "inf", "nan")
_EXCEPTIONS = ("ValueError", "ZeroDivisionError", "ArithmeticError", "TypeError", "Exception", "AssertionError")
_METHODS = frozenset({"append", "is_integer"})
_IMPORTABLE = frozenset({"math", "fractions", "typing"})


class _Module:
    """What `import math` binds: the interpreter resolves `math.NAME` from `members`, never with getattr."""

    def __init__(self, name: str, members: dict[str, Any]):
        self.name, self.members = name, members


class _AnnotationOnly:
    """What `from typing import X` binds: fine in (never evaluated) annotations, an error anywhere else."""

    def __init__(self, name: str):
        self.name = name


class _ExceptionType:
    def __init__(self, name: str):
        self.name = name


@dataclass
class _Raised:
    kind: str
    message: str


class _Return(Exception):
    def __init__(self, value: Any):
        self.value = value


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


@dataclass
class _Function:
    node: ast.FunctionDef
    defaults: list[Any]
    kw_defaults: dict[str, Any]
    scope: "_Scope"


class _Scope:
    def __init__(self, parent: "_Scope | None" = None):
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def find(self, name: str, default: Any) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.vars:
                return scope.vars[name]
            scope = scope.parent
        return default


_MISSING = object()


_ALLOWED_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign,
    ast.If, ast.For, ast.While, ast.Break, ast.Continue, ast.Pass, ast.Expr, ast.Assert, ast.Raise, ast.Import,
    ast.ImportFrom, ast.alias, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.IfExp, ast.Compare, ast.Call, ast.keyword,
    ast.Constant, ast.Name, ast.List, ast.Tuple, ast.Subscript, ast.Slice, ast.ListComp, ast.GeneratorExp,
    ast.comprehension, ast.Attribute, ast.Load, ast.Store, ast.And, ast.Or, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift, ast.BitAnd, ast.BitOr, ast.BitXor, ast.UAdd, ast.USub,
    ast.Not, ast.Invert, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
)
_NODE_WORDS = {"Lambda": "lambda", "ClassDef": "class", "Try": "try", "With": "with", "Global": "global",
               "Nonlocal": "nonlocal", "JoinedStr": "f-strings", "Dict": "dicts", "DictComp": "dicts",
               "Set": "sets", "SetComp": "sets", "Yield": "yield", "YieldFrom": "yield", "Await": "await",
               "AsyncFunctionDef": "async", "Delete": "del", "Starred": "starred expressions",
               "NamedExpr": "walrus assignments", "Match": "match", "MatMult": "the @ operator"}


def _children(node: ast.AST):
    """Child nodes, skipping annotations: they are never evaluated, so whatever they say is harmless."""
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns", "type_comment"):
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, ast.AST):
                yield item


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
    return names


def check(source: str, limits: EvalLimits = EvalLimits()) -> str | None:
    """Why `source` is outside the subset (nothing is run), or None."""
    try:
        parse(source, limits)
    except ProgramRejected as e:
        return str(e)
    return None


def parse(source: str, limits: EvalLimits = EvalLimits()) -> ast.Module:
    """The program's AST, checked against the subset; raises ProgramRejected with the reason."""
    if len(source) > limits.max_source_chars:
        raise ProgramRejected(f"program longer than {limits.max_source_chars} characters")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ProgramRejected(f"syntax error: {e.msg} (line {e.lineno})") from None
    except (RecursionError, MemoryError, ValueError) as e:  # the parser's own guards against deep nesting
        raise ProgramRejected(f"program nested too deeply to parse ({type(e).__name__})") from None
    known = _bound_names(tree) | set(_BUILTINS)
    first = None
    stack = [(tree, 1)]
    while stack:  # iterative: a hostile tree must not exhaust our own stack
        node, depth = stack.pop()
        if depth > limits.max_nesting:
            raise ProgramRejected(f"program nested more than {limits.max_nesting} levels")
        why = _refusal(node, known)
        if why and isinstance(node, (ast.Name, ast.Import, ast.ImportFrom)):
            raise ProgramRejected(why)  # what the program tried to reach is the most telling reason
        first = first or why
        stack.extend((child, depth + 1) for child in reversed(list(_children(node))))  # source order
    if first:
        raise ProgramRejected(first)
    return tree


def _refusal(node: ast.AST, known: set[str]) -> str | None:
    if isinstance(node, ast.Import):
        bad = [a.name for a in node.names if a.name not in _IMPORTABLE]
        return f"import of {bad[0]!r} is not allowed" if bad else None
    if isinstance(node, ast.ImportFrom):
        if node.module not in _IMPORTABLE or node.level:
            return f"import from {node.module!r} is not allowed"
        for a in node.names:
            if a.name == "*" or (node.module != "typing" and a.name not in _MODULE_MEMBERS[node.module]):
                return f"import of {a.name!r} from {node.module!r} is not allowed"
        return None
    if not isinstance(node, _ALLOWED_NODES):
        name = type(node).__name__
        return f"{_NODE_WORDS.get(name, name)} not allowed"
    if isinstance(node, ast.Name):
        if node.id.startswith("__"):
            return f"name {node.id!r} is not allowed"
        if isinstance(node.ctx, ast.Load) and node.id not in known:
            return f"name {node.id!r} is not allowed"
    elif isinstance(node, ast.arg) and node.arg.startswith("__"):
        return f"name {node.arg!r} is not allowed"
    elif isinstance(node, ast.FunctionDef):
        if node.name.startswith("__"):
            return f"name {node.name!r} is not allowed"
        if node.decorator_list:
            return "decorators are not allowed"
        if node.args.vararg or node.args.kwarg:
            return "*args/**kwargs parameters are not allowed"
    elif isinstance(node, ast.Attribute):
        if not isinstance(node.ctx, ast.Load) or node.attr not in _ATTRIBUTES:
            return f"attribute access '.{node.attr}' is not allowed"
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, str, type(None))):  # bool is an int
            return f"constants of type {type(node.value).__name__} are not allowed"
    elif isinstance(node, ast.Call):
        if any(k.arg is None for k in node.keywords):
            return "**kwargs arguments are not allowed"
    elif isinstance(node, (ast.Assign, ast.For, ast.comprehension, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute):
                    return f"assignment to attribute '.{sub.attr}' is not allowed"
    return None


# --- arithmetic with size checks ------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, Fraction))


def _int_bits(v: Any) -> int:
    if isinstance(v, int):
        return abs(v).bit_length()
    if isinstance(v, Fraction):
        return max(abs(v.numerator).bit_length(), v.denominator.bit_length())
    return 0


class Interpreter:
    """Runs one checked program. All state (steps, depth, output) is per instance."""

    def __init__(self, limits: EvalLimits = EvalLimits()):
        self.limits = limits
        self.steps = 0
        self.depth = 0
        self.printed = 0
        self.allocated = 0
        self.globals = _Scope()
        self.builtins = {name: make(self) for name, make in _BUILTINS.items()}
        self.modules = {module: _Module(module, {n: self.builtins[n] for n in members})
                        for module, members in _MODULE_MEMBERS.items()}

    # -- entry point --
    def call(self, tree: ast.Module, func: str, kwargs: dict[str, Any]) -> Any:
        try:
            self.exec_block(tree.body, self.globals)
        except (_Return, _Break, _Continue) as e:  # the parser accepts these anywhere; Python's compiler would not
            raise ProgramFailed(f"SyntaxError: {type(e).__name__.strip('_').lower()} outside its function or loop")
        fn = self.globals.vars.get(func)
        if not isinstance(fn, _Function):
            raise ProgramFailed(f"NameError: no function {func!r}")
        for value in kwargs.values():
            self.checked(value)
        return self.call_function(fn, [], dict(kwargs))

    # -- bookkeeping --
    def tick(self, cost: int = 1) -> None:
        """Charge evaluation steps; work done in bulk (a builtin over a list, `in`) costs one step per item."""
        self.steps += cost
        if self.steps > self.limits.max_steps:
            raise LimitExceeded(f"more than {self.limits.max_steps} evaluation steps")

    def checked(self, v: Any) -> Any:
        """`v` if it is a value of the subset within the size limits."""
        if isinstance(v, (int, Fraction)):
            if _int_bits(v) > self.limits.max_int_bits:
                raise LimitExceeded(f"integer larger than {self.limits.max_int_bits} bits")
        elif isinstance(v, (list, tuple, str)):
            if len(v) > self.limits.max_items:
                raise LimitExceeded(f"sequence longer than {self.limits.max_items} items")
            self.allocate(len(v))
        elif isinstance(v, (float, range, type(None), _Function, _Module, _ExceptionType, _Raised, _Builtin,
                            _AnnotationOnly)):
            pass
        else:
            raise ProgramFailed(f"TypeError: values of type {type(v).__name__} are not supported")
        return v

    def allocate(self, n: int) -> None:
        self.allocated += n
        if self.allocated > self.limits.max_total_items:
            raise LimitExceeded(f"built more than {self.limits.max_total_items} sequence items in total")

    def items(self, v: Any) -> list:
        """The elements of an iterable value, refusing to materialise more than max_items."""
        if isinstance(v, (list, tuple, str, range)):
            if len(v) > self.limits.max_items:
                raise LimitExceeded(f"sequence longer than {self.limits.max_items} items")
            self.tick(len(v))
            self.allocate(len(v))
            return list(v)
        raise ProgramFailed(f"TypeError: {type(v).__name__} is not iterable")

    # -- statements --
    def exec_block(self, body: list[ast.stmt], scope: _Scope) -> None:
        for stmt in body:
            self.exec_stmt(stmt, scope)

    def exec_stmt(self, node: ast.stmt, scope: _Scope) -> None:
        self.tick()
        if isinstance(node, ast.Expr):
            if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):  # docstring
                self.eval(node.value, scope)
        elif isinstance(node, ast.Assign):
            value = self.eval(node.value, scope)
            for target in node.targets:
                self.assign(target, value, scope)
        elif isinstance(node, ast.AugAssign):
            current = self.eval(_as_load(node.target), scope)
            self.assign(node.target, self.binop(node.op, current, self.eval(node.value, scope)), scope)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.assign(node.target, self.eval(node.value, scope), scope)
        elif isinstance(node, ast.Return):
            raise _Return(None if node.value is None else self.eval(node.value, scope))
        elif isinstance(node, ast.If):
            self.exec_block(node.body if self.truth(self.eval(node.test, scope)) else node.orelse, scope)
        elif isinstance(node, ast.For):
            self.exec_for(node, scope)
        elif isinstance(node, ast.While):
            self.exec_while(node, scope)
        elif isinstance(node, ast.Break):
            raise _Break()
        elif isinstance(node, ast.Continue):
            raise _Continue()
        elif isinstance(node, ast.Pass):
            pass
        elif isinstance(node, ast.FunctionDef):
            defaults = [self.eval(d, scope) for d in node.args.defaults]
            kw_defaults = {a.arg: self.eval(d, scope) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults)
                           if d is not None}
            scope.vars[node.name] = _Function(node, defaults, kw_defaults, scope)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                scope.vars[alias.asname or alias.name] = self.modules[alias.name]
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                value = (_AnnotationOnly(alias.name) if node.module == "typing"
                         else self.modules[node.module].members[alias.name])
                scope.vars[alias.asname or alias.name] = value
        elif isinstance(node, ast.Assert):
            if not self.truth(self.eval(node.test, scope)):
                raise ProgramFailed("AssertionError: assertion failed")
        elif isinstance(node, ast.Raise):
            raised = None if node.exc is None else self.eval(node.exc, scope)
            if isinstance(raised, _ExceptionType):
                raised = _Raised(raised.name, "")
            if not isinstance(raised, _Raised):
                raise ProgramFailed("TypeError: can only raise ValueError, ZeroDivisionError, ...")
            raise ProgramFailed(f"{raised.kind}: {raised.message}"[:200])
        else:  # parse() refused it already; kept as a guard
            raise ProgramFailed(f"{type(node).__name__} not allowed")

    def exec_for(self, node: ast.For, scope: _Scope) -> None:
        iterable = self.eval(node.iter, scope)
        if not isinstance(iterable, (range, list, tuple, str)):
            raise ProgramFailed(f"TypeError: cannot loop over {type(iterable).__name__}")
        broke = False
        for count, item in enumerate(iterable):  # a range is never materialised
            if count >= self.limits.max_loop_iterations:
                raise LimitExceeded(f"loop ran more than {self.limits.max_loop_iterations} iterations")
            self.assign(node.target, item, scope)
            try:
                self.exec_block(node.body, scope)
            except _Break:
                broke = True
                break
            except _Continue:
                continue
        if not broke:
            self.exec_block(node.orelse, scope)

    def exec_while(self, node: ast.While, scope: _Scope) -> None:
        count = 0
        while self.truth(self.eval(node.test, scope)):
            count += 1
            if count > self.limits.max_loop_iterations:
                raise LimitExceeded(f"loop ran more than {self.limits.max_loop_iterations} iterations")
            try:
                self.exec_block(node.body, scope)
            except _Break:
                return
            except _Continue:
                continue
        self.exec_block(node.orelse, scope)

    def assign(self, target: ast.expr, value: Any, scope: _Scope) -> None:
        if isinstance(target, ast.Name):
            scope.vars[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = self.items(value)
            if len(values) != len(target.elts):
                raise ProgramFailed(f"ValueError: cannot unpack {len(values)} values into {len(target.elts)}")
            for sub, v in zip(target.elts, values):
                self.assign(sub, v, scope)
        elif isinstance(target, ast.Subscript):
            container = self.eval(target.value, scope)
            if not isinstance(container, list) or isinstance(target.slice, ast.Slice):
                raise ProgramFailed("TypeError: only single list items can be assigned")
            index = self.eval(target.slice, scope)
            if not isinstance(index, int):
                raise ProgramFailed("TypeError: list index must be an integer")
            container[index] = value
        else:
            raise ProgramFailed(f"cannot assign to {type(target).__name__}")

    # -- expressions --
    def truth(self, v: Any) -> bool:
        if isinstance(v, (int, float, Fraction, str, list, tuple, range, type(None))):
            return bool(v)
        raise ProgramFailed(f"TypeError: {type(v).__name__} has no truth value here")

    def eval(self, node: ast.expr, scope: _Scope) -> Any:
        self.tick()
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            value = scope.find(node.id, _MISSING)
            if value is _MISSING:
                value = self.builtins.get(node.id, _MISSING)
            if value is _MISSING:
                raise ProgramFailed(f"NameError: name {node.id!r} is not defined")
            return value
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.eval(node.left, scope), self.eval(node.right, scope))
        if isinstance(node, ast.UnaryOp):
            v = self.eval(node.operand, scope)
            if isinstance(node.op, ast.Not):
                return not self.truth(v)
            if isinstance(node.op, ast.Invert) and isinstance(v, int):
                return ~v
            if isinstance(node.op, (ast.UAdd, ast.USub)) and _is_number(v):
                return +v if isinstance(node.op, ast.UAdd) else -v
            raise ProgramFailed(f"TypeError: bad operand for unary {type(node.op).__name__}")
        if isinstance(node, ast.BoolOp):
            last = None
            for value_node in node.values:
                last = self.eval(value_node, scope)
                if self.truth(last) == isinstance(node.op, ast.Or):
                    return last
            return last
        if isinstance(node, ast.Compare):
            left = self.eval(node.left, scope)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.eval(right_node, scope)
                self.tick(sum(len(v) for v in (left, right) if isinstance(v, (list, tuple, str, range))))
                if not _compare(op, left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.eval(node.body if self.truth(self.eval(node.test, scope)) else node.orelse, scope)
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [self.eval(e, scope) for e in node.elts]
            return self.checked(values if isinstance(node, ast.List) else tuple(values))
        if isinstance(node, ast.Subscript):
            return self.subscript(self.eval(node.value, scope), node.slice, scope)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            return self.comprehension(node, scope)
        if isinstance(node, ast.Attribute):  # only `math.NAME` reaches here; methods are handled by calls
            owner = self.eval(node.value, scope)
            if isinstance(owner, _Module) and node.attr in owner.members:
                return owner.members[node.attr]
            raise ProgramFailed(f"AttributeError: no attribute '.{node.attr}' here")
        if isinstance(node, ast.Call):
            return self.call_node(node, scope)
        raise ProgramFailed(f"{type(node).__name__} not allowed")

    def subscript(self, container: Any, index_node: ast.expr, scope: _Scope) -> Any:
        if not isinstance(container, (list, tuple, str, range)):
            raise ProgramFailed(f"TypeError: {type(container).__name__} is not subscriptable")
        if isinstance(index_node, ast.Slice):
            parts = [None if p is None else self.eval(p, scope)
                     for p in (index_node.lower, index_node.upper, index_node.step)]
            if not all(p is None or isinstance(p, int) for p in parts):
                raise ProgramFailed("TypeError: slice indices must be integers")
            return self.checked(container[slice(*parts)])
        index = self.eval(index_node, scope)
        if not isinstance(index, int):
            raise ProgramFailed("TypeError: indices must be integers")
        return container[index]

    def comprehension(self, node: ast.ListComp | ast.GeneratorExp, scope: _Scope) -> list:
        out: list = []
        inner = _Scope(scope)

        def loop(level: int) -> None:
            if level == len(node.generators):
                out.append(self.eval(node.elt, inner))
                self.allocate(1)
                if len(out) > self.limits.max_items:
                    raise LimitExceeded(f"sequence longer than {self.limits.max_items} items")
                return
            gen = node.generators[level]
            if gen.is_async:
                raise ProgramFailed("async comprehensions are not allowed")
            iterable = self.eval(gen.iter, inner if level else scope)
            if not isinstance(iterable, (range, list, tuple, str)):
                raise ProgramFailed(f"TypeError: cannot loop over {type(iterable).__name__}")
            for count, item in enumerate(iterable):
                if count >= self.limits.max_loop_iterations:
                    raise LimitExceeded(f"loop ran more than {self.limits.max_loop_iterations} iterations")
                self.assign(gen.target, item, inner)
                if all(self.truth(self.eval(cond, inner)) for cond in gen.ifs):
                    loop(level + 1)

        loop(0)
        return out

    def call_node(self, node: ast.Call, scope: _Scope) -> Any:
        if isinstance(node.func, ast.Attribute) and node.func.attr in _METHODS:
            owner = self.eval(node.func.value, scope)
            if not isinstance(owner, _Module):
                args = [self.eval(a, scope) for a in node.args]
                return self.method(owner, node.func.attr, args, bool(node.keywords))
        fn = self.eval(node.func, scope)
        args = [self.eval(a, scope) for a in node.args]
        kwargs = {k.arg: self.eval(k.value, scope) for k in node.keywords}
        if isinstance(fn, _Function):
            return self.call_function(fn, args, kwargs)
        if isinstance(fn, _ExceptionType):
            return _Raised(fn.name, " ".join(str(a) for a in args if isinstance(a, (str, int, float)))[:200])
        if isinstance(fn, _Builtin):
            try:
                return self.checked(fn.impl(*args, **kwargs))
            except (LimitExceeded, ProgramFailed):
                raise
            except OverflowError as e:
                raise ProgramFailed(f"OverflowError: {e}") from None
        raise ProgramFailed(f"TypeError: {type(fn).__name__} is not callable")

    def method(self, owner: Any, name: str, args: list, has_keywords: bool) -> Any:
        if name == "append" and isinstance(owner, list) and len(args) == 1 and not has_keywords:
            if len(owner) >= self.limits.max_items:
                raise LimitExceeded(f"sequence longer than {self.limits.max_items} items")
            owner.append(args[0])
            self.allocate(1)
            return None
        if name == "is_integer" and _is_number(owner) and not args and not has_keywords:
            if isinstance(owner, float):
                return owner.is_integer()
            return isinstance(owner, int) or owner.denominator == 1
        raise ProgramFailed(f"AttributeError: no method '.{name}' on {type(owner).__name__}")

    def call_function(self, fn: _Function, args: list, kwargs: dict[str, Any]) -> Any:
        if self.depth >= self.limits.max_call_depth:
            raise LimitExceeded(f"calls nested deeper than {self.limits.max_call_depth} (recursion)")
        params = fn.node.args
        positional = [a.arg for a in params.posonlyargs + params.args]
        if len(args) > len(positional):
            raise ProgramFailed(f"TypeError: {fn.node.name}() takes {len(positional)} positional arguments")
        local = _Scope(fn.scope)
        bound = dict(zip(positional, args))
        first_default = len(positional) - len(fn.defaults)
        for i, name in enumerate(positional):
            if name in kwargs:
                if name in bound or i < len(params.posonlyargs):
                    raise ProgramFailed(f"TypeError: bad argument {name!r} for {fn.node.name}()")
                bound[name] = kwargs.pop(name)
            elif name not in bound:
                if i < first_default:
                    raise ProgramFailed(f"TypeError: {fn.node.name}() missing argument {name!r}")
                bound[name] = fn.defaults[i - first_default]
        for a in params.kwonlyargs:
            if a.arg in kwargs:
                bound[a.arg] = kwargs.pop(a.arg)
            elif a.arg in fn.kw_defaults:
                bound[a.arg] = fn.kw_defaults[a.arg]
            else:
                raise ProgramFailed(f"TypeError: {fn.node.name}() missing argument {a.arg!r}")
        if kwargs:
            raise ProgramFailed(f"TypeError: {fn.node.name}() got an unexpected argument {next(iter(kwargs))!r}")
        local.vars.update(bound)
        self.depth += 1
        try:
            self.exec_block(fn.node.body, local)
        except _Return as r:
            return r.value
        except (_Break, _Continue) as e:
            raise ProgramFailed(f"SyntaxError: {type(e).__name__.strip('_').lower()} outside a loop") from None
        finally:
            self.depth -= 1
        return None

    def binop(self, op: ast.operator, a: Any, b: Any) -> Any:
        if isinstance(op, ast.Add):
            if _is_number(a) and _is_number(b):
                return self.checked(a + b)
            if type(a) is type(b) and isinstance(a, (list, tuple, str)):
                if len(a) + len(b) > self.limits.max_items:
                    raise LimitExceeded(f"sequence longer than {self.limits.max_items} items")
                return self.checked(a + b)
        elif isinstance(op, ast.Mult):
            if _is_number(a) and _is_number(b):
                return self.checked(a * b)
            seq, n = (a, b) if isinstance(a, (list, tuple, str)) else (b, a)
            if isinstance(seq, (list, tuple, str)) and isinstance(n, int):
                if len(seq) * max(n, 0) > self.limits.max_items:  # refused before allocating
                    raise LimitExceeded(f"sequence longer than {self.limits.max_items} items")
                return self.checked(seq * n)
        elif isinstance(op, ast.Pow):
            if _is_number(a) and _is_number(b):
                return self.power(a, b)
        elif isinstance(op, (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod)):
            if _is_number(a) and _is_number(b):  # `%` on strings would be formatting: numbers only
                fn = _ARITH[type(op)]
                return self.checked(fn(a, b))
        elif isinstance(op, (ast.LShift, ast.RShift, ast.BitAnd, ast.BitOr, ast.BitXor)):
            if isinstance(a, int) and isinstance(b, int):
                if isinstance(op, ast.LShift) and b > 0 and _int_bits(a) + b > self.limits.max_int_bits:
                    raise LimitExceeded(f"integer larger than {self.limits.max_int_bits} bits")
                return self.checked(_ARITH[type(op)](a, b))
        raise ProgramFailed(f"TypeError: unsupported operand types for {type(op).__name__}: "
                            f"{type(a).__name__} and {type(b).__name__}")

    def power(self, base: Any, exponent: Any) -> Any:
        if isinstance(exponent, Fraction) and exponent.denominator == 1:
            exponent = exponent.numerator
        if isinstance(exponent, int) and (isinstance(base, Fraction) or (isinstance(base, int) and exponent > 0)):
            bits = _int_bits(base)
            # |base| >= 2 gives a result of at least (bits-1)*|exponent| bits: refuse before computing it
            if bits > 1 and (bits - 1) * abs(exponent) > self.limits.max_int_bits:
                raise LimitExceeded(f"integer larger than {self.limits.max_int_bits} bits (exponent {exponent})")
        try:
            result = base ** exponent
        except OverflowError as e:
            raise ProgramFailed(f"OverflowError: {e}") from None
        if isinstance(result, complex):
            raise ProgramFailed("ValueError: power has a complex result")
        return self.checked(result)


def _as_load(target: ast.expr) -> ast.expr:
    if isinstance(target, ast.Name):
        return ast.Name(id=target.id, ctx=ast.Load())
    if isinstance(target, ast.Subscript):
        return ast.Subscript(value=target.value, slice=target.slice, ctx=ast.Load())
    raise ProgramFailed("augmented assignment needs a name or a list item")


_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Sub: lambda a, b: a - b, ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
    ast.BitAnd: lambda a, b: a & b, ast.BitOr: lambda a, b: a | b, ast.BitXor: lambda a, b: a ^ b,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b,
}


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    if isinstance(op, (ast.In, ast.NotIn)):
        if not isinstance(b, (list, tuple, str, range)) or (isinstance(b, str) and not isinstance(a, str)):
            raise ProgramFailed(f"TypeError: 'in' needs a sequence, not {type(b).__name__}")
        return (a in b) == isinstance(op, ast.In)
    if isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)):
        ordered = (_is_number(a) and _is_number(b)) or (type(a) is type(b) and isinstance(a, (str, list, tuple)))
        if not ordered:
            raise ProgramFailed(f"TypeError: cannot order {type(a).__name__} and {type(b).__name__}")
    return bool(_COMPARE[type(op)](a, b))


# --- allowed functions ----------------------------------------------------------------------------------------------
class _Builtin:
    def __init__(self, name: str, impl: Callable[..., Any]):
        self.name, self.impl = name, impl


def _numbers(*values: Any) -> None:
    for v in values:
        if not _is_number(v):
            raise ProgramFailed(f"TypeError: expected a number, got {type(v).__name__}")


def _capped_math(name: str, max_arg: int) -> Callable[["Interpreter"], _Builtin]:
    """factorial/comb/perm: their cost grows with the argument, so it is bounded before calling."""
    fn = getattr(math, name)

    def impl(*args: Any) -> Any:
        _numbers(*args)
        if any(isinstance(a, int) and a > max_arg for a in args):
            raise LimitExceeded(f"{name}() argument larger than {max_arg}")
        return fn(*args)
    return lambda it: _Builtin(name, impl)


def _plain(name: str, fn: Callable[..., Any]) -> Callable[["Interpreter"], _Builtin]:
    """A function of numbers only (abs, math.sqrt, ...): every argument must be a number."""
    def impl(*args: Any) -> Any:
        _numbers(*args)
        return fn(*args)
    return lambda it: _Builtin(name, impl)


def _make_builtins() -> dict[str, Callable[[Interpreter], Any]]:
    def with_interp(name: str, factory: Callable[[Interpreter], Callable[..., Any]]):
        return lambda it: _Builtin(name, factory(it))

    def rounding(it: Interpreter):
        def impl(x: Any, ndigits: Any = None) -> Any:
            _numbers(x)
            if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > 100):
                raise ProgramFailed("ValueError: round() digits must be an integer within 100")
            return round(x) if ndigits is None else round(x, ndigits)
        return impl

    def power(it: Interpreter):
        def impl(base: Any, exp: Any, mod: Any = None) -> Any:
            _numbers(base, exp)
            if mod is None:
                return it.power(base, exp)
            if not all(isinstance(v, int) for v in (base, exp, mod)):
                raise ProgramFailed("TypeError: 3-argument pow() needs integers")
            return pow(base, exp, mod)
        return impl

    def reduce(fn: Callable[..., Any]):
        def factory(it: Interpreter):
            def impl(*args: Any, **kwargs: Any) -> Any:
                if set(kwargs) - {"default", "start"}:
                    raise ProgramFailed(f"TypeError: unsupported keyword {sorted(kwargs)[0]!r}")
                values = it.items(args[0]) if len(args) == 1 else list(args)
                return fn(values, **kwargs)
            return impl
        return factory

    def product(it: Interpreter):
        def impl(values: Any, start: Any = 1) -> Any:
            total = start
            for v in it.items(values):
                total = it.binop(ast.Mult(), total, v)
            return total
        return impl

    def summed(it: Interpreter):
        def impl(values: Any, start: Any = 0) -> Any:
            total = start
            for v in it.items(values):
                total = it.binop(ast.Add(), total, v)
            return total
        return impl

    def ranged(it: Interpreter):
        def impl(*args: Any) -> range:
            if not all(isinstance(a, int) for a in args):
                raise ProgramFailed("TypeError: range() needs integers")
            return range(*args)
        return impl

    def printing(it: Interpreter):
        def impl(*args: Any, sep: Any = " ", end: Any = "\n") -> None:
            text = str(sep).join(_text(a) for a in args) + str(end)
            it.printed += len(text.encode("utf-8", "replace"))
            if it.printed > it.limits.max_output_bytes:
                raise LimitExceeded(f"printed more than {it.limits.max_output_bytes} bytes")
        return impl

    def converting(kind: type):
        def factory(it: Interpreter):
            def impl(*args: Any) -> Any:
                if len(args) > 1 or (args and not isinstance(args[0], (int, float, Fraction, str))):
                    raise ProgramFailed(f"TypeError: {kind.__name__}() takes one number or string")
                if args and isinstance(args[0], str) and len(args[0]) > 100:
                    raise ProgramFailed(f"ValueError: string too long for {kind.__name__}()")
                return kind(*args)
            return impl
        return factory

    def fraction(it: Interpreter):
        def impl(*args: Any) -> Fraction:
            _numbers(*args)  # no strings: Fraction('1e999999999') would compute a giant power
            return Fraction(*args)
        return impl

    def sequence(kind: Callable[[list], Any]):
        def factory(it: Interpreter):
            def impl(*args: Any) -> Any:
                return kind(it.items(args[0])) if args else kind([])
            return impl
        return factory

    def sort(it: Interpreter):
        def impl(values: Any, reverse: Any = False) -> list:
            return sorted(it.items(values), reverse=bool(reverse))
        return impl

    def zipped(it: Interpreter):
        def impl(*seqs: Any) -> list:
            return [tuple(t) for t in zip(*(it.items(s) for s in seqs))]
        return impl

    def enumerated(it: Interpreter):
        def impl(values: Any, start: Any = 0) -> list:
            if not isinstance(start, int):
                raise ProgramFailed("TypeError: enumerate() start must be an integer")
            return list(enumerate(it.items(values), start))
        return impl

    def length(it: Interpreter):
        def impl(values: Any) -> int:
            if not isinstance(values, (list, tuple, str, range)):
                raise ProgramFailed(f"TypeError: {type(values).__name__} has no len()")
            return len(values)
        return impl

    table: dict[str, Callable[[Interpreter], Any]] = {
        "abs": _plain("abs", abs), "divmod": _plain("divmod", divmod), "bool": with_interp("bool", converting(bool)),
        "int": with_interp("int", converting(int)), "float": with_interp("float", converting(float)),
        "round": with_interp("round", rounding), "pow": with_interp("pow", power),
        "min": with_interp("min", reduce(min)), "max": with_interp("max", reduce(max)),
        "sum": with_interp("sum", summed), "all": with_interp("all", sequence(all)),
        "any": with_interp("any", sequence(any)), "len": with_interp("len", length),
        "range": with_interp("range", ranged), "list": with_interp("list", sequence(list)),
        "tuple": with_interp("tuple", sequence(tuple)), "sorted": with_interp("sorted", sort),
        "reversed": with_interp("reversed", sequence(lambda xs: xs[::-1])),
        "zip": with_interp("zip", zipped), "enumerate": with_interp("enumerate", enumerated),
        "print": with_interp("print", printing), "Fraction": with_interp("Fraction", fraction),
        "prod": with_interp("prod", product), "fsum": with_interp("fsum", sequence(math.fsum)),
        "factorial": _capped_math("factorial", 1000),
        "comb": _capped_math("comb", 10_000), "perm": _capped_math("perm", 10_000),
    }
    for name in _MATH_NAMES:
        if hasattr(math, name):  # cbrt/exp2 are Python 3.11+
            table.setdefault(name, _plain(name, getattr(math, name)))
    for name in _MATH_CONSTANTS:
        table[name] = (lambda value: lambda it: value)(getattr(math, name))
    for name in _EXCEPTIONS:
        table[name] = (lambda n: lambda it: _ExceptionType(n))(name)
    return table


def _text(v: Any) -> str:
    """What `print` counts for a value. Printed text goes nowhere, so containers are not rendered: rendering a list
    of lists could take far more work than building it did."""
    if isinstance(v, (int, float, Fraction, str, type(None))):
        return str(v)
    if isinstance(v, (list, tuple, range)):
        return f"<{type(v).__name__} of {len(v)}>"
    return f"<{type(v).__name__.strip('_')}>"


_BUILTINS = _make_builtins()
# `math.sqrt` and `from math import sqrt` resolve to the same entries as bare `sqrt`
_MODULE_MEMBERS: dict[str, frozenset[str]] = {
    "math": frozenset(n for n in _BUILTINS if n in _MATH_NAMES or n in _MATH_CONSTANTS
                      or n in ("factorial", "comb", "perm", "prod", "fsum")),
    "fractions": frozenset({"Fraction"}),
    "typing": frozenset(),
}
_ATTRIBUTES = _MODULE_MEMBERS["math"] | _MODULE_MEMBERS["fractions"] | _METHODS


def evaluate(source: str, func: str, kwargs: dict[str, Any], limits: EvalLimits = EvalLimits()) -> Any:
    """`func(**kwargs)` of the program; raises ProgramRejected, ProgramFailed or LimitExceeded with the reason."""
    tree = parse(source, limits)
    try:
        return Interpreter(limits).call(tree, func, kwargs)
    except RecursionError:
        raise LimitExceeded("program nested too deeply") from None
    except (ArithmeticError, ValueError, TypeError, IndexError, KeyError) as e:  # from an operation on values
        raise ProgramFailed(f"{type(e).__name__}: {str(e)[:200]}") from None
