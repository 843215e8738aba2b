"""Card templates compiled to plain Python functions, for the Jinja subset the rule files use.

A card's text is rendered for every patient whose rule fires; Jinja's generated code pays per
render for a template context, a name resolution per variable, a sandbox method call per
attribute and a finalize call per output. The rule files keep Jinja as their language (the
single source); at load, :func:`compile_template` translates a template's syntax tree into one
Python function over the render's context dict, which calls the very functions Jinja's code
calls (the card environment's ``getattr``/``getitem``/``call``, its filters and tests, its
finalize), so a rendered text is the same text.

Where the translation could differ it does not try: a template using anything outside the
subset (macros, blocks, ``with``, a ``set`` inside a loop, a loop attribute other than the
counters, a call other than ``namespace()`` or a pure method of a value …) is not compiled, and
a render that meets anything undefined (a missing name, key or attribute) or any error stops,
so that Jinja renders it (:func:`~.templating.render`): its text, or its error, is Jinja's own.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import Context, Undefined
from jinja2.utils import Namespace, _PassArg

from .templating import _DICT_ATTRIBUTES, TEMPLATES, CardTemplate

Compiled = Callable[[dict[str, Any]], str]


class Unsupported(Exception):
    """The template uses something the translation does not cover: Jinja renders it."""


class Fallback(Exception):
    """A render met something undefined: Jinja renders it (its text or its error)."""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Filters and tests the translation calls (the card environment's own functions); any other
#: filter or test leaves the template to Jinja.
FILTERS = _words(
    "abs capitalize count default d first float int join last length list lower map max min "
    "reject rejectattr replace reverse round select selectattr sort string sum title trim "
    "truncate unique upper wordcount"
)
TESTS = _words(
    "boolean defined divisibleby eq equalto even false float ge greaterthan gt in integer "
    "iterable le lessthan lower lt mapping ne none number odd sameas sequence string true "
    "undefined upper"
)
#: Methods a template may call on a value: they read it and change nothing (a render that stops
#: half-way is rendered again by Jinja, which must find the values as they were).
PURE_METHODS = _words(
    "get items keys values lower upper strip lstrip rstrip title capitalize startswith "
    "endswith split rsplit splitlines replace count find index isdigit isalpha join zfill"
)
#: The loop attributes the translation computes itself (no LoopContext).
LOOP_ATTRIBUTES = _words("index index0 first last length revindex revindex0")

_BINOPS = {
    nodes.Add: "+",
    nodes.Sub: "-",
    nodes.Mul: "*",
    nodes.Div: "/",
    nodes.FloorDiv: "//",
    nodes.Mod: "%",
    nodes.Pow: "**",
}
_COMPARE = {
    "eq": "==",
    "ne": "!=",
    "gt": ">",
    "gteq": ">=",
    "lt": "<",
    "lteq": "<=",
    "in": "in",
    "notin": "not in",
}

#: The context filters and calls receive when they ask for one (``map``, ``select`` …): the card
#: environment's, with no variables (the built-in ones only read its environment and eval context).
_CONTEXT = Context(TEMPLATES, {}, None, {})


def _finalize(value: Any) -> str:
    """What Jinja's code writes for an output expression: ``str(finalize(value))``."""
    return str(TEMPLATES.finalize(value))  # type: ignore[misc]


def _attr(obj: Any, name: str) -> Any:
    """``obj.name`` as the card environment answers it; undefined stops the render."""
    value = TEMPLATES.getattr(obj, name)
    if isinstance(value, Undefined):
        raise Fallback(name)
    return value


def _item(obj: Any, key: Any) -> Any:
    value = TEMPLATES.getitem(obj, key)
    if isinstance(value, Undefined):
        raise Fallback(key)
    return value


def _has_attr(obj: Any, name: str) -> bool:
    return not isinstance(TEMPLATES.getattr(obj, name), Undefined)


def _has_item(obj: Any, key: Any) -> bool:
    return not isinstance(TEMPLATES.getitem(obj, key), Undefined)


def _plain_key(value: Any) -> bool:
    """An attribute ``map`` reads with one ``getitem`` (no dotted path, no list index)."""
    return isinstance(value, str) and "." not in value and not value.isdigit()


def _map_item(value: Any, key: str) -> Iterator[Any]:
    """Jinja's ``map(attribute=key)``: each item's ``getitem(item, key)``, lazily, Undefined
    included (a dict holding the key answers directly, as the sandbox's ``getitem`` does)."""
    if value:
        getitem = TEMPLATES.getitem
        for item in value:
            yield item[key] if type(item) is dict and key in item else getitem(item, key)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return TEMPLATES.call(_CONTEXT, fn, *args, **kwargs)


def _namespace(*args: Any, **kwargs: Any) -> Namespace:
    return Namespace(*args, **kwargs)


def _pass_arg(fn: Any) -> str | None:
    """The argument Jinja's code passes first to a filter or test (by the function's mark)."""
    return {
        _PassArg.context: "_CTX",
        _PassArg.eval_context: "_CTX.eval_ctx",
        _PassArg.environment: "_ENV",
    }.get(_PassArg.from_obj(fn))  # type: ignore[arg-type]


class _Scope:
    """Jinja names visible at one point → the Python expression that reads them."""

    def __init__(self, parent: _Scope | None, names: dict[str, str], loop: dict[str, str] | None) -> None:
        self.parent, self.names, self.loop = parent, names, loop

    def lookup(self, name: str) -> str | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None

    def innermost_loop(self) -> dict[str, str] | None:
        scope: _Scope | None = self
        while scope is not None:
            if scope.loop is not None:
                return scope.loop
            scope = scope.parent
        return None


class _Writer:
    """Translates one template's syntax tree into the source of a Python function."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list[Any] = []
        self.filters: list[Any] = []
        self.tests: list[Any] = []
        self.top: dict[str, str] = {}  # names set at the template's top level → their variable
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"_K[{len(self.consts) - 1}]"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    # -- statements ---------------------------------------------------------------------------
    def body(self, body: list[nodes.Node], scope: _Scope, depth: int, in_loop: bool) -> None:
        for node in body:
            self.statement(node, scope, depth, in_loop)

    def statement(self, node: nodes.Node, scope: _Scope, depth: int, in_loop: bool) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    if child.data:
                        self.emit(depth, f"_a({self.const(child.data)})")
                    continue
                v = self.fresh("_v")
                self.emit(depth, f"{v} = {self.expr(child, scope)}")
                self.emit(
                    depth,
                    f"_a({v} if type({v}) is str and '<' not in {v} and '>' not in {v} "
                    f"and '|' not in {v} else _fin({v}))",
                )
        elif isinstance(node, nodes.If):
            self.emit(depth, f"if {self.expr(node.test, scope)}:")
            self.block(node.body, scope, depth + 1, in_loop)
            for elif_ in node.elif_:
                self.emit(depth, f"elif {self.expr(elif_.test, scope)}:")
                self.block(elif_.body, scope, depth + 1, in_loop)
            if node.else_:
                self.emit(depth, "else:")
                self.block(node.else_, scope, depth + 1, in_loop)
        elif isinstance(node, nodes.For):
            self.for_(node, scope, depth)
        elif isinstance(node, nodes.Assign):
            self.assign(node, scope, depth, in_loop)
        else:
            raise Unsupported(type(node).__name__)

    def block(self, body: list[nodes.Node], scope: _Scope, depth: int, in_loop: bool) -> None:
        start = len(self.lines)
        self.body(body, scope, depth, in_loop)
        if len(self.lines) == start:
            self.emit(depth, "pass")

    def assign(self, node: nodes.Assign, scope: _Scope, depth: int, in_loop: bool) -> None:
        target = node.target
        if isinstance(target, nodes.NSRef):
            ns = self.fresh("_n")
            self.emit(depth, f"{ns} = {self.name(target.name, scope)}")
            self.emit(depth, f"if not isinstance({ns}, _Namespace): raise _Fallback('namespace')")
            self.emit(depth, f"{ns}[{self.const(target.attr)}] = {self.expr(node.node, scope)}")
            return
        if not isinstance(target, nodes.Name) or in_loop:
            # a set inside a loop is scoped to the iteration in Jinja: left to Jinja
            raise Unsupported("set target")
        var = self.top.get(target.name)
        if var is None:
            var = self.top[target.name] = self.fresh("s_")
        self.emit(depth, f"{var} = {self.expr(node.node, scope)}")

    def for_(self, node: nodes.For, scope: _Scope, depth: int) -> None:
        if node.recursive:
            raise Unsupported("recursive loop")
        targets = [node.target] if isinstance(node.target, nodes.Name) else None
        if targets is None and isinstance(node.target, nodes.Tuple):
            targets = list(node.target.items)
        if not targets or not all(isinstance(t, nodes.Name) for t in targets):
            raise Unsupported("loop target")
        names = {t.name: self.fresh("l_") for t in targets}  # type: ignore[attr-defined]
        target = ", ".join(names[t.name] for t in targets)  # type: ignore[attr-defined]
        if len(targets) > 1 or isinstance(node.target, nodes.Tuple):
            target = f"({target},)" if len(targets) == 1 else f"({target})"
        uses_loop = any(
            n.name == "loop" for b in node.body for n in b.find_all(nodes.Name) if n.ctx == "load"
        )
        if node.test is not None and any(n.name == "loop" for n in node.test.find_all(nodes.Name)):
            raise Unsupported("loop in a loop filter")
        loop: dict[str, str] | None = None
        inner = _Scope(scope, names, None)
        seq = self.fresh("_s")
        self.emit(depth, f"{seq} = {self.expr(node.iter, scope)}")
        if node.test is not None or uses_loop:
            items = self.fresh("_l")
            self.emit(depth, f"{items} = []")
            self.emit(depth, f"for {target} in {seq}:")
            test = "True" if node.test is None else self.expr(node.test, _Scope(scope, names, None))
            self.emit(depth + 1, f"if {test}: {items}.append({target})")
            seq = items
        flag = None
        if node.else_:
            flag = self.fresh("_e")
            self.emit(depth, f"{flag} = True")
        if uses_loop:
            i, n = self.fresh("_i"), self.fresh("_c")
            self.emit(depth, f"{n} = len({seq})")
            loop = {
                "index": f"({i} + 1)",
                "index0": i,
                "first": f"({i} == 0)",
                "last": f"({i} == {n} - 1)",
                "length": n,
                "revindex": f"({n} - {i})",
                "revindex0": f"({n} - {i} - 1)",
            }
            inner = _Scope(scope, names, loop)
            self.emit(depth, f"for {i}, {target} in enumerate({seq}):")
        else:
            self.emit(depth, f"for {target} in {seq}:")
        if flag:
            self.emit(depth + 1, f"{flag} = False")
        self.block(node.body, inner, depth + 1, True)
        if node.else_:
            self.emit(depth, f"if {flag}:")
            self.block(node.else_, scope, depth + 1, True)

    # -- expressions --------------------------------------------------------------------------
    def context_name(self, name: str) -> str:
        return f"ctx[{self.const(name)}]"  # a missing name: KeyError, Jinja renders it

    def name(self, name: str, scope: _Scope) -> str:
        if name == "loop" and scope.innermost_loop() is not None:
            raise Unsupported("loop object")
        local = scope.lookup(name)
        if local is not None:
            return local
        var = self.top.get(name)
        if var is not None:  # set at the top level: its value once set, the context's before
            return f"({var} if {var} is not _M else {self.context_name(name)})"
        return self.context_name(name)

    def expr(self, node: nodes.Node, scope: _Scope) -> str:  # noqa: C901 - one branch per node type
        if isinstance(node, nodes.Const):
            return self.const(node.value)
        if isinstance(node, nodes.Name):
            return self.name(node.name, scope)
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "loop":
                loop = scope.innermost_loop()
                if loop is not None and scope.lookup("loop") is None:
                    if node.attr not in LOOP_ATTRIBUTES:
                        raise Unsupported(f"loop.{node.attr}")
                    return loop[node.attr]
            obj = self.expr(node.node, scope)
            if node.attr in _DICT_ATTRIBUTES:
                return f"_attr({obj}, {self.const(node.attr)})"
            t = self.fresh("_t")
            key = self.const(node.attr)
            return f"({t}[{key}] if type({t} := {obj}) is dict else _attr({t}, {key}))"
        if isinstance(node, nodes.Getitem):
            obj = self.expr(node.node, scope)
            if isinstance(node.arg, nodes.Slice):  # Jinja's code slices directly too
                s = node.arg
                parts = [self.expr(p, scope) if p is not None else "" for p in (s.start, s.stop, s.step)]
                return f"{obj}[{parts[0]}:{parts[1]}:{parts[2]}]"
            return f"_item({obj}, {self.expr(node.arg, scope)})"
        if isinstance(node, nodes.Filter):
            return self.filter(node, scope)
        if isinstance(node, nodes.Test):
            return self.test(node, scope)
        if isinstance(node, nodes.Compare):
            out = self.expr(node.expr, scope)
            for op in node.ops:
                out += f" {_COMPARE[op.op]} {self.expr(op.expr, scope)}"
            return f"({out})"
        if isinstance(node, nodes.And):
            return f"({self.expr(node.left, scope)} and {self.expr(node.right, scope)})"
        if isinstance(node, nodes.Or):
            return f"({self.expr(node.left, scope)} or {self.expr(node.right, scope)})"
        if isinstance(node, nodes.Not):
            return f"(not {self.expr(node.node, scope)})"
        if isinstance(node, nodes.Neg):
            return f"(-{self.expr(node.node, scope)})"
        if isinstance(node, nodes.Pos):
            return f"(+{self.expr(node.node, scope)})"
        if type(node) in _BINOPS:
            return f"({self.expr(node.left, scope)} {_BINOPS[type(node)]} {self.expr(node.right, scope)})"  # type: ignore[attr-defined]
        if isinstance(node, nodes.Concat):
            return "_join([" + ", ".join(f"str({self.expr(n, scope)})" for n in node.nodes) + "])"
        if isinstance(node, nodes.CondExpr):
            # no else: Jinja's code gives the lenient Undefined (it writes as "")
            other = "_U()" if node.expr2 is None else self.expr(node.expr2, scope)
            return f"({self.expr(node.expr1, scope)} if {self.expr(node.test, scope)} else {other})"
        if isinstance(node, nodes.Tuple):
            items = [self.expr(n, scope) for n in node.items]
            return f"({', '.join(items)},)" if len(items) == 1 else f"({', '.join(items)})"
        if isinstance(node, nodes.List):
            return "[" + ", ".join(self.expr(n, scope) for n in node.items) + "]"
        if isinstance(node, nodes.Dict):
            pairs = [f"{self.expr(p.key, scope)}: {self.expr(p.value, scope)}" for p in node.items]
            return "{" + ", ".join(pairs) + "}"
        if isinstance(node, nodes.Call):
            return self.call(node, scope)
        raise Unsupported(type(node).__name__)

    def arguments(self, node: nodes.Filter | nodes.Test | nodes.Call, scope: _Scope) -> list[str]:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise Unsupported("*args")
        args = [self.expr(a, scope) for a in node.args]
        for kw in node.kwargs:
            if not kw.key.isidentifier() or keyword.iskeyword(kw.key):
                raise Unsupported("keyword")
            args.append(f"{kw.key}={self.expr(kw.value, scope)}")
        return args

    def filter(self, node: nodes.Filter, scope: _Scope) -> str:
        if node.node is None or node.name not in FILTERS:
            raise Unsupported(f"filter {node.name}")
        plain = node.dyn_args is None and node.dyn_kwargs is None
        if plain and node.name == "join" and not node.kwargs and len(node.args) <= 1:
            # Jinja's join without autoescape: str(d).join(map(str, value))
            sep = self.expr(node.args[0], scope) if node.args else self.const("")
            return f"str({sep}).join(map(str, {self.expr(node.node, scope)}))"
        if plain and node.name == "list" and not node.args and not node.kwargs:
            return f"list({self.expr(node.node, scope)})"
        if plain and node.name == "map" and not node.args and [k.key for k in node.kwargs] == ["attribute"]:
            attribute = node.kwargs[0].value
            if isinstance(attribute, nodes.Const) and _plain_key(attribute.value):
                return f"_map_item({self.expr(node.node, scope)}, {self.const(attribute.value)})"
        fn = TEMPLATES.filters[node.name]
        self.filters.append(fn)
        index = len(self.filters) - 1  # before its arguments add theirs
        args = [self.expr(node.node, scope), *self.arguments(node, scope)]
        first = _pass_arg(fn)
        if first:
            args.insert(0, first)
        return f"_F[{index}]({', '.join(args)})"

    def test(self, node: nodes.Test, scope: _Scope) -> str:
        if node.name in ("defined", "undefined") and not node.args and not node.kwargs:
            defined = self.defined(node.node, scope)
            return defined if node.name == "defined" else f"(not {defined})"
        if node.name not in TESTS:
            raise Unsupported(f"test {node.name}")
        fn = TEMPLATES.tests[node.name]
        self.tests.append(fn)
        index = len(self.tests) - 1
        args = [self.expr(node.node, scope), *self.arguments(node, scope)]
        first = _pass_arg(fn)
        if first:
            args.insert(0, first)
        return f"_T[{index}]({', '.join(args)})"

    def defined(self, node: nodes.Node, scope: _Scope) -> str:
        """``x is defined`` without undefined stopping the render (only x itself may be)."""
        if isinstance(node, nodes.Name):
            if node.name == "loop" and scope.innermost_loop() is not None:
                raise Unsupported("loop object")
            local = scope.lookup(node.name)
            if local is not None:
                return "True"
            key = self.const(node.name)
            var = self.top.get(node.name)
            if var is not None:
                return f"({var} is not _M or {key} in ctx)"
            return f"({key} in ctx)"
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "loop":
                raise Unsupported("loop object")
            return f"_has_attr({self.expr(node.node, scope)}, {self.const(node.attr)})"
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
            return f"_has_item({self.expr(node.node, scope)}, {self.expr(node.arg, scope)})"
        return f"(not isinstance({self.expr(node, scope)}, _U))"

    def call(self, node: nodes.Call, scope: _Scope) -> str:
        fn = node.node
        if isinstance(fn, nodes.Name) and fn.name == "namespace" and scope.lookup("namespace") is None:
            if "namespace" in self.top:
                raise Unsupported("namespace shadowed")
            # the context's namespace must be Jinja's (a binding of that name is left to Jinja)
            return (
                f"(_namespace({', '.join(self.arguments(node, scope))}) "
                f"if {self.context_name('namespace')} is _Namespace else _fail())"
            )
        if isinstance(fn, nodes.Getattr) and fn.attr in PURE_METHODS:
            return f"_call({', '.join([self.expr(fn, scope), *self.arguments(node, scope)])})"
        raise Unsupported("call")


def _fail() -> Any:
    raise Fallback("call")


_HELPERS: dict[str, Any] = {
    "_attr": _attr,
    "_map_item": _map_item,
    "_item": _item,
    "_has_attr": _has_attr,
    "_has_item": _has_item,
    "_call": _call,
    "_namespace": _namespace,
    "_Namespace": Namespace,
    "_fin": _finalize,
    "_join": "".join,
    "_U": Undefined,
    "_M": object(),
    "_Fallback": Fallback,
    "_fail": _fail,
    "_CTX": _CONTEXT,
    "_ENV": TEMPLATES,
}


def python_source(source: str) -> tuple[str, list[Any], list[Any], list[Any]]:
    """The function's source and its constants, filters and tests; raises :class:`Unsupported`."""
    try:
        ast = TEMPLATES.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise Unsupported("syntax") from exc
    w = _Writer()
    top = _Scope(None, {}, None)
    w.body(ast.body, top, 1, False)
    head = ["def render(ctx):", "    _o = []", "    _a = _o.append"]
    head += [f"    {var} = _M" for var in w.top.values()]
    return "\n".join([*head, *w.lines, "    return _join(_o)"]), w.consts, w.filters, w.tests


def compile_template(source: str) -> Compiled | None:
    """The template as a Python function of the render's context, or None (Jinja renders it).

    The function raises (:class:`Fallback`, ``KeyError`` …) where Jinja would meet an undefined
    value or an error; the caller then renders with Jinja."""
    try:
        text, consts, filters, tests = python_source(source)
    except Unsupported:
        return None
    namespace: dict[str, Any] = {**_HELPERS, "_K": tuple(consts), "_F": tuple(filters), "_T": tuple(tests)}
    exec(compile(text, "<card template>", "exec"), namespace)  # noqa: S102 - our own translation
    return namespace["render"]


def card_template(source: str) -> CardTemplate:
    """The template as Jinja compiles it, with its Python translation when it has one.

    Raises :class:`jinja2.TemplateSyntaxError` as ``from_string`` does."""
    template = TEMPLATES.from_string(source)
    assert isinstance(template, CardTemplate)
    template.python = compile_template(source)
    return template
