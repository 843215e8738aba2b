"""Card templates compiled to plain Python functions, for the Jinja subset the rule files use.

A card's text is rendered for every patient whose rule fires; Jinja's generated code pays per
render for a template context, a name resolution per variable, a sandbox method call per
attribute and a finalize call per output. The rule files keep Jinja as their language (the
single source); at load, :func:`compile_template` translates a template's syntax tree into one
Python function over the render's context dict, which calls the very functions Jinja's code
calls (the card environment's ``getattr``/``getitem``/``call``, its filters and tests, its
finalize), so a rendered text is the same text.

Where the translation could differ it does not try: a template using anything outside the
subset (macros, blocks, ``with``, a loop attribute other than the
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
from jinja2.compiler import Frame, find_undeclared
from jinja2.idtracking import VAR_LOAD_ALIAS, VAR_LOAD_PARAMETER, VAR_LOAD_RESOLVE, VAR_LOAD_UNDEFINED
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
#: Globals a template may call: they make a value and change nothing.
PURE_GLOBALS = frozenset({"range", "dict"})
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


class _Writer:
    """Translates one template's syntax tree into the source of a Python function.

    Names are scoped as Jinja's code generator scopes them, with its own symbol tracking
    (:class:`jinja2.compiler.Frame`): each frame's variables get Jinja's identifiers and are
    loaded as Jinja loads them on entering the frame (from the context, from an outer frame, or
    missing), so a ``set`` inside a loop is the iteration's own, as in Jinja."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list[Any] = []
        self.filters: list[Any] = []
        self.tests: list[Any] = []
        self.loops: dict[str, dict[str, str]] = {}  # a loop's ``loop`` identifier → its counters
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"_K[{len(self.consts) - 1}]"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def enter(self, frame: Frame, depth: int) -> None:
        """Jinja's ``enter_frame``: the frame's names loaded as its code loads them."""
        for target, (action, param) in frame.symbols.loads.items():
            if action == VAR_LOAD_RESOLVE:
                self.emit(depth, f"{target} = ctx.get({self.const(param)}, _M)")
            elif action == VAR_LOAD_ALIAS:
                self.emit(depth, f"{target} = {param}")
            elif action == VAR_LOAD_UNDEFINED:
                self.emit(depth, f"{target} = _M")
            elif action != VAR_LOAD_PARAMETER:
                raise Unsupported(f"load {action}")

    # -- statements ---------------------------------------------------------------------------
    def body(self, body: list[nodes.Node], frame: Frame, depth: int) -> None:
        for node in body:
            self.statement(node, frame, depth)

    def statement(self, node: nodes.Node, frame: Frame, depth: int) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    if child.data:
                        self.emit(depth, f"_a({self.const(child.data)})")
                    continue
                v = self.fresh("_v")
                self.emit(depth, f"{v} = {self.expr(child, frame)}")
                self.emit(
                    depth,
                    f"_a({v} if type({v}) is str and '<' not in {v} and '>' not in {v} "
                    f"and '|' not in {v} else _fin({v}))",
                )
        elif isinstance(node, nodes.If):
            frame = frame.soft()
            self.emit(depth, f"if {self.expr(node.test, frame)}:")
            self.block(node.body, frame, depth + 1)
            for elif_ in node.elif_:
                self.emit(depth, f"elif {self.expr(elif_.test, frame)}:")
                self.block(elif_.body, frame, depth + 1)
            if node.else_:
                self.emit(depth, "else:")
                self.block(node.else_, frame, depth + 1)
        elif isinstance(node, nodes.For):
            self.for_(node, frame, depth)
        elif isinstance(node, nodes.Assign):
            self.assign(node, frame, depth)
        else:
            raise Unsupported(type(node).__name__)

    def block(self, body: list[nodes.Node], frame: Frame, depth: int) -> None:
        start = len(self.lines)
        self.body(body, frame, depth)
        if len(self.lines) == start:
            self.emit(depth, "pass")

    def assign(self, node: nodes.Assign, frame: Frame, depth: int) -> None:
        target = node.target
        if isinstance(target, nodes.NSRef):
            ns = frame.symbols.ref(target.name)
            self.emit(depth, f"if not isinstance({ns}, _Namespace): raise _Fallback('namespace')")
            self.emit(depth, f"{ns}[{self.const(target.attr)}] = {self.expr(node.node, frame)}")
            return
        # a name, or names unpacked as Jinja's code unpacks them (a Python tuple assignment)
        self.emit(depth, f"{self.target(target, frame)} = {self.expr(node.node, frame)}")

    def target(self, node: nodes.Node, frame: Frame) -> str:
        if isinstance(node, nodes.Name):
            return frame.symbols.ref(node.name)
        if (
            isinstance(node, nodes.Tuple)
            and node.items
            and all(isinstance(n, nodes.Name) for n in node.items)
        ):
            names = [frame.symbols.ref(n.name) for n in node.items]  # type: ignore[attr-defined]
            return f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"
        raise Unsupported("target")

    def for_(self, node: nodes.For, frame: Frame, depth: int) -> None:
        """Jinja's ``visit_For``: the loop's frame, its filter's and its else's."""
        if node.recursive:
            raise Unsupported("recursive loop")
        loop_frame = frame.inner()
        loop_frame.loop_frame = True
        test_frame, else_frame = frame.inner(), frame.inner()
        extended = "loop" in find_undeclared(node.iter_child_nodes(only=("body",)), ("loop",))
        loop_ref = loop_frame.symbols.declare_parameter("loop") if extended else None
        loop_frame.symbols.analyze_node(node, for_branch="body")
        if node.else_:
            else_frame.symbols.analyze_node(node, for_branch="else")
        seq = self.fresh("_s")
        self.emit(depth, f"{seq} = {self.expr(node.iter, frame)}")
        if node.test is not None or extended:
            test_frame.symbols.analyze_node(node, for_branch="test")
            items, target = self.fresh("_l"), self.target(node.target, test_frame)
            self.emit(depth, f"{items} = []")
            self.enter(test_frame, depth)
            self.emit(depth, f"for {target} in {seq}:")
            test = "True" if node.test is None else self.expr(node.test, test_frame)
            self.emit(depth + 1, f"if {test}: {items}.append({target})")
            seq = items
        flag = None
        if node.else_:
            flag = self.fresh("_e")
            self.emit(depth, f"{flag} = True")
        target = self.target(node.target, loop_frame)
        if loop_ref is not None:
            i, n = self.fresh("_i"), self.fresh("_c")
            self.emit(depth, f"{n} = len({seq})")
            self.loops[loop_ref] = {
                "index": f"({i} + 1)",
                "index0": i,
                "first": f"({i} == 0)",
                "last": f"({i} == {n} - 1)",
                "length": n,
                "revindex": f"({n} - {i})",
                "revindex0": f"({n} - {i} - 1)",
            }
            self.emit(depth, f"for {i}, {target} in enumerate({seq}):")
        else:
            self.emit(depth, f"for {target} in {seq}:")
        if flag:
            self.emit(depth + 1, f"{flag} = False")
        self.enter(loop_frame, depth + 1)
        self.block(node.body, loop_frame, depth + 1)
        if node.else_:
            self.emit(depth, f"if {flag}:")
            self.enter(else_frame, depth + 1)
            self.block(node.else_, else_frame, depth + 1)

    # -- expressions --------------------------------------------------------------------------
    def name(self, name: str, frame: Frame) -> str:
        """Jinja's ``visit_Name`` for a load: a missing value stops the render."""
        ref = frame.symbols.ref(name)
        if ref in self.loops:
            raise Unsupported("loop object")
        load = frame.symbols.find_load(ref)
        if load is not None and load[0] == VAR_LOAD_PARAMETER:
            return ref
        return f"({ref} if {ref} is not _M else _missing())"

    def expr(self, node: nodes.Node, frame: Frame) -> str:  # noqa: C901 - one branch per node type
        if isinstance(node, nodes.Const):
            return self.const(node.value)
        if isinstance(node, nodes.Name):
            return self.name(node.name, frame)
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name):
                loop = self.loops.get(frame.symbols.ref(node.node.name))
                if loop is not None:
                    if node.attr not in LOOP_ATTRIBUTES:
                        raise Unsupported(f"loop.{node.attr}")
                    return loop[node.attr]
            obj = self.expr(node.node, frame)
            if node.attr in _DICT_ATTRIBUTES:
                return f"_attr({obj}, {self.const(node.attr)})"
            t = self.fresh("_t")
            key = self.const(node.attr)
            return f"({t}[{key}] if type({t} := {obj}) is dict else _attr({t}, {key}))"
        if isinstance(node, nodes.Getitem):
            obj = self.expr(node.node, frame)
            if isinstance(node.arg, nodes.Slice):  # Jinja's code slices directly too
                s = node.arg
                parts = [self.expr(p, frame) if p is not None else "" for p in (s.start, s.stop, s.step)]
                return f"{obj}[{parts[0]}:{parts[1]}:{parts[2]}]"
            return f"_item({obj}, {self.expr(node.arg, frame)})"
        if isinstance(node, nodes.Filter):
            return self.filter(node, frame)
        if isinstance(node, nodes.Test):
            return self.test(node, frame)
        if isinstance(node, nodes.Compare):
            out = self.expr(node.expr, frame)
            for op in node.ops:
                out += f" {_COMPARE[op.op]} {self.expr(op.expr, frame)}"
            return f"({out})"
        if isinstance(node, nodes.And):
            return f"({self.expr(node.left, frame)} and {self.expr(node.right, frame)})"
        if isinstance(node, nodes.Or):
            return f"({self.expr(node.left, frame)} or {self.expr(node.right, frame)})"
        if isinstance(node, nodes.Not):
            return f"(not {self.expr(node.node, frame)})"
        if isinstance(node, nodes.Neg):
            return f"(-{self.expr(node.node, frame)})"
        if isinstance(node, nodes.Pos):
            return f"(+{self.expr(node.node, frame)})"
        if type(node) in _BINOPS:
            return f"({self.expr(node.left, frame)} {_BINOPS[type(node)]} {self.expr(node.right, frame)})"  # type: ignore[attr-defined]
        if isinstance(node, nodes.Concat):
            return "_join([" + ", ".join(f"str({self.expr(n, frame)})" for n in node.nodes) + "])"
        if isinstance(node, nodes.CondExpr):
            # no else: Jinja's code gives the lenient Undefined (it writes as "")
            other = "_U()" if node.expr2 is None else self.expr(node.expr2, frame)
            return f"({self.expr(node.expr1, frame)} if {self.expr(node.test, frame)} else {other})"
        if isinstance(node, nodes.Tuple):
            items = [self.expr(n, frame) for n in node.items]
            return f"({', '.join(items)},)" if len(items) == 1 else f"({', '.join(items)})"
        if isinstance(node, nodes.List):
            return "[" + ", ".join(self.expr(n, frame) for n in node.items) + "]"
        if isinstance(node, nodes.Dict):
            pairs = [f"{self.expr(p.key, frame)}: {self.expr(p.value, frame)}" for p in node.items]
            return "{" + ", ".join(pairs) + "}"
        if isinstance(node, nodes.Call):
            return self.call(node, frame)
        raise Unsupported(type(node).__name__)

    def arguments(self, node: nodes.Filter | nodes.Test | nodes.Call, frame: Frame) -> list[str]:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise Unsupported("*args")
        args = [self.expr(a, frame) for a in node.args]
        for kw in node.kwargs:
            if not kw.key.isidentifier() or keyword.iskeyword(kw.key):
                raise Unsupported("keyword")
            args.append(f"{kw.key}={self.expr(kw.value, frame)}")
        return args

    def filter(self, node: nodes.Filter, frame: Frame) -> str:
        if node.node is None or node.name not in FILTERS:
            raise Unsupported(f"filter {node.name}")
        plain = node.dyn_args is None and node.dyn_kwargs is None
        if plain and node.name == "join" and not node.kwargs and len(node.args) <= 1:
            # Jinja's join without autoescape: str(d).join(map(str, value))
            sep = self.expr(node.args[0], frame) if node.args else self.const("")
            return f"str({sep}).join(map(str, {self.expr(node.node, frame)}))"
        if plain and node.name == "list" and not node.args and not node.kwargs:
            return f"list({self.expr(node.node, frame)})"
        if plain and node.name == "map" and not node.args and [k.key for k in node.kwargs] == ["attribute"]:
            attribute = node.kwargs[0].value
            if isinstance(attribute, nodes.Const) and _plain_key(attribute.value):
                return f"_map_item({self.expr(node.node, frame)}, {self.const(attribute.value)})"
        fn = TEMPLATES.filters[node.name]
        self.filters.append(fn)
        index = len(self.filters) - 1  # before its arguments add theirs
        args = [self.expr(node.node, frame), *self.arguments(node, frame)]
        first = _pass_arg(fn)
        if first:
            args.insert(0, first)
        return f"_F[{index}]({', '.join(args)})"

    def test(self, node: nodes.Test, frame: Frame) -> str:
        if node.name in ("defined", "undefined") and not node.args and not node.kwargs:
            defined = self.defined(node.node, frame)
            return defined if node.name == "defined" else f"(not {defined})"
        if node.name not in TESTS:
            raise Unsupported(f"test {node.name}")
        fn = TEMPLATES.tests[node.name]
        self.tests.append(fn)
        index = len(self.tests) - 1
        args = [self.expr(node.node, frame), *self.arguments(node, frame)]
        first = _pass_arg(fn)
        if first:
            args.insert(0, first)
        return f"_T[{index}]({', '.join(args)})"

    def defined(self, node: nodes.Node, frame: Frame) -> str:
        """``x is defined`` without undefined stopping the render (only x itself may be)."""
        if isinstance(node, nodes.Name):
            ref = frame.symbols.ref(node.name)
            if ref in self.loops:
                raise Unsupported("loop object")
            load = frame.symbols.find_load(ref)
            return "True" if load is not None and load[0] == VAR_LOAD_PARAMETER else f"({ref} is not _M)"
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name) and frame.symbols.ref(node.node.name) in self.loops:
                raise Unsupported("loop object")
            return f"_has_attr({self.expr(node.node, frame)}, {self.const(node.attr)})"
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
            return f"_has_item({self.expr(node.node, frame)}, {self.expr(node.arg, frame)})"
        return f"(not isinstance({self.expr(node, frame)}, _U))"

    def call(self, node: nodes.Call, frame: Frame) -> str:
        fn = node.node
        if isinstance(fn, nodes.Name) and fn.name == "namespace":
            # only Jinja's namespace (a value of that name is left to Jinja)
            return (
                f"(_namespace({', '.join(self.arguments(node, frame))}) "
                f"if {self.name('namespace', frame)} is _Namespace else _fail())"
            )
        if isinstance(fn, nodes.Name) and fn.name in PURE_GLOBALS:
            # the environment's own range/dict (the sandbox's safe range), nothing else
            f, expected = self.fresh("_g"), self.const(TEMPLATES.globals[fn.name])
            args = ", ".join([f, *self.arguments(node, frame)])
            return f"(_call({args}) if ({f} := {self.name(fn.name, frame)}) is {expected} else _fail())"
        if isinstance(fn, nodes.Getattr) and fn.attr in PURE_METHODS:
            return f"_call({', '.join([self.expr(fn, frame), *self.arguments(node, frame)])})"
        raise Unsupported("call")


def _fail() -> Any:
    raise Fallback("call")


def _missing() -> Any:
    raise Fallback("undefined")


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
    "_missing": _missing,
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
    frame = Frame(nodes.EvalContext(TEMPLATES))
    frame.symbols.analyze_node(ast)
    frame.toplevel = frame.rootlevel = True
    w.enter(frame, 1)
    w.body(ast.body, frame, 1)
    head = ["def render(ctx):", "    _o = []", "    _a = _o.append"]
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
