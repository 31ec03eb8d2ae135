"""Parse IR text back into a Graph. Text is data: nothing is evaluated; errors carry line and column."""
from __future__ import annotations

import contextlib
import gc
import json
import re

from .dtypes import parse_dtype
from .errors import ParseError
from .graph import Graph, Op, Params, TensorType, Value
from .params import LEAF, array_from_text, decode_enum, decode_tagged, normalize, resolve_ref
from .sharding import DimSharding, MeshShape, Sharding

# One token per match: whitespace and `##` comments before it are skipped, and the token's kind
# follows from its first character (see `_kind_tables`). `.` catches any character that starts no
# token, so every character of the text is accounted for and `findall` does all the scanning in C.
_TOKEN = re.compile(r"""
    (?:[ \t\r\n]|\#\#[^\n]*+)*+     # possessive: a comment is never split to find a token
    (
        %[0-9]+                                  # value
      | &[0-9]+                                  # ref
      | \#[A-Za-z_][A-Za-z0-9_]*                 # tag
      | "(?:[^"\\\n]|\\.)*"                      # string
      | -?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|[0-9]+)|-inf\b   # number
      | [A-Za-z_][A-Za-z0-9_.\-]*(?:<[A-Za-z0-9_]+>)?   # ident
      | .                                        # punct, or a character that starts no token
      | \Z                                       # the end: empty tokens, dropped
    )
""", re.VERBOSE)
_PUNCT = "()[]{},=:@?|+*.<>"


def _kind_tables() -> tuple[dict[str, str], dict[str, str]]:
    """Token kind by first character (tokens of 2+ characters) and by the whole one-character token."""
    first: dict[str, str] = {"%": "value", "&": "ref", "#": "tag", '"': "string", "-": "number"}
    single: dict[str, str] = {c: "punct" for c in _PUNCT}
    for code in range(128):
        c = chr(code)
        if c.isdigit():
            first[c] = single[c] = "number"
        elif c.isalpha() or c == "_":
            first[c] = single[c] = "ident"
    return first, single


_KIND_BY_FIRST, _KIND_OF_SINGLE = _kind_tables()
_LOOKAHEAD = 4  # eof tokens padded at the end, so peek(offset) never needs a bounds check


class _Tokens:
    def __init__(self, text: str):
        self.text = text
        values = _TOKEN.findall(text)
        while values and not values[-1]:
            values.pop()
        first, single = _KIND_BY_FIRST.get, _KIND_OF_SINGLE.get
        kinds = [first(v[0], "bad") if len(v) > 1 else single(v, "bad") for v in values]
        self.end = len(values)  # index of the first eof token
        kinds += ["eof"] * _LOOKAHEAD
        values += [""] * _LOOKAHEAD
        self.kinds = kinds
        self.values = values
        self._starts: list[int] | None = None
        self.i = 0
        if "bad" in kinds:
            j = kinds.index("bad")
            line, col = self.position(j)
            raise ParseError(f"unexpected character {values[j]!r}", line, col, self.source_line(line))

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    def position(self, j: int) -> tuple[int, int]:
        """1-based (line, column) of token j, found by rescanning (only error paths need it)."""
        if self._starts is None:
            self._starts = [m.start(1) for m in _TOKEN.finditer(self.text) if m.group(1)]
        start = self._starts[j] if j < self.end else len(self.text)
        line = self.text.count("\n", 0, start) + 1
        return line, start - (self.text.rfind("\n", 0, start) + 1) + 1

    def source_line(self, line: int) -> str:
        lines = self.lines
        return lines[line - 1] if line - 1 < len(lines) else ""

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = min(self.i + offset, self.end)
        return self.kinds[j], self.values[j]

    def next(self) -> tuple[str, str]:
        i = self.i
        if i < self.end:
            self.i = i + 1
        return self.kinds[i], self.values[i]

    def error(self, message: str, offset: int = 0) -> ParseError:
        j = min(self.i + offset, self.end)
        line, col = self.position(j)
        found = self.values[j] or "end of input"
        return ParseError(f"{message}, found {found!r}", line, col, self.source_line(line))

    def expect(self, value: str) -> None:
        i = self.i
        if self.values[i] != value or self.kinds[i] == "string":
            raise self.error(f"expected {value!r}")
        if i < self.end:
            self.i = i + 1

    def accept(self, value: str) -> bool:
        i = self.i
        if self.values[i] == value and self.kinds[i] != "string":
            if i < self.end:
                self.i = i + 1
            return True
        return False


def parse(text: str) -> Graph:
    """Parse the text `str(graph)` printed; raises ParseError with line and column on bad input."""
    with _gc_paused():
        tokens = _Tokens(text)
        parser = _Parser(tokens)
        graph = parser.graph()
        if tokens.peek()[0] != "eof":
            raise tokens.error("expected end of input after the graph")
        return graph


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cycle collector while a graph is built. Parsing makes many long-lived objects
    and no cycles, so collections meanwhile only re-walk the growing graph (a third of the time)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Parser:
    def __init__(self, tokens: _Tokens):
        self.t = tokens
        self.seen: set[str] = set()  # names are unique across the whole text, regions included
        self.types: dict[tuple[str, ...], TensorType] = {}  # type tokens -> parsed type

    # -- graph structure ----------------------------------------------------------------------
    def graph(self) -> Graph:
        t = self.t
        kind, word = t.peek()
        if word != "graph":
            raise t.error("expected 'graph' at the start of IR text")
        t.next()
        t.expect("@")
        name = self.symbol()
        env: dict[str, Value] = {}
        inputs = self.arguments(env)
        mesh = in_tree = out_tree = None
        while True:
            kind, word = t.peek()
            if word == "mesh":
                t.next()
                mesh = self.mesh()
            elif word in ("in_tree", "out_tree"):
                t.next()
                t.expect("=")
                tree = self.value()
                if word == "in_tree":
                    in_tree = tree
                else:
                    out_tree = tree
            else:
                break
        t.expect("{")
        ops, outputs = self.body(env)
        t.expect("}")
        return Graph(inputs, ops, outputs, name=name, mesh=mesh, in_tree=in_tree, out_tree=out_tree)

    def symbol(self) -> str:
        kind, text = self.t.peek()
        if kind == "ident":
            self.t.next()
            return text
        if kind == "string":
            self.t.next()
            return json.loads(text)
        raise self.t.error("expected a name")

    def mesh(self) -> MeshShape:
        t = self.t
        t.expect("(")
        axes = []
        while not t.accept(")"):
            if axes:
                t.expect(",")
            axis = self.axis_name()
            t.expect("=")
            axes.append((axis, self.integer()))
        return MeshShape(tuple(axes))

    def arguments(self, env) -> list[Value]:
        t = self.t
        t.expect("(")
        values = []
        while not t.accept(")"):
            if values:
                t.expect(",")
            kind, name = t.peek()
            if kind != "value":
                raise t.error("expected an argument name like %0")
            start = t.i
            t.next()
            t.expect(":")
            value = Value(self.type())
            self.define(env, name, value, start - t.i)
            values.append(value)
        return values

    def define(self, env, name: str, value: Value, offset: int) -> None:
        if name in self.seen:
            raise self.t.error(f"value {name} is defined twice", offset)
        self.seen.add(name)
        env[name] = value

    def use(self, env) -> Value:
        kind, name = self.t.peek()
        if kind != "value":
            raise self.t.error("expected a value name like %3")
        if name not in env:
            where = ("is defined outside this region (regions may only use their own arguments "
                     "and values)" if name in self.seen else "is used before it is defined")
            raise self.t.error(f"value {name} {where}")
        self.t.next()
        return env[name]

    def body(self, env) -> tuple[list[Op], list[Value]]:
        t = self.t
        ops = []
        while True:
            kind, word = t.peek()
            if word == "return" and kind == "ident":
                t.next()
                outputs = []
                if t.peek()[0] == "value":
                    outputs.append(self.use(env))
                    while t.accept(","):
                        outputs.append(self.use(env))
                return ops, outputs
            if kind == "eof" or word == "}":
                raise t.error("expected an op or 'return'")
            ops.append(self.op(env))

    def op(self, env) -> Op:
        # The hot loop of parsing: token lists are read directly (a punctuation token's text never
        # equals a string token's, which keeps its quotes), and every error goes through the general
        # methods from the same token, so messages and positions are theirs.
        t = self.t
        kinds, values = t.kinds, t.values
        result_names, result_starts = [], []  # token indices, for errors about a result's name
        i = t.i
        if kinds[i] == "value":
            result_starts.append(i)
            result_names.append(values[i])
            i += 1
            while values[i] == ",":
                i += 1
                if kinds[i] != "value":
                    t.i = i
                    raise t.error("expected a result name like %3")
                result_starts.append(i)
                result_names.append(values[i])
                i += 1
            t.i = i
            t.expect("=")
            i = t.i
        if kinds[i] == "ident":
            name = values[i]
            t.i = i + 1
        else:
            name = self.symbol()
        t.expect("(")
        operands = []
        i = t.i
        while values[i] != ")":
            if operands:
                if values[i] != ",":
                    t.i = i
                    t.expect(",")
                i += 1
            operand = env.get(values[i]) if kinds[i] == "value" else None
            if operand is None:
                t.i = i
                self.use(env)  # raises the right error
            operands.append(operand)
            i += 1
        t.i = i + 1
        params = []
        if t.accept("{"):
            while not t.accept("}"):
                if params:
                    t.expect(",")
                key = self.symbol()
                t.expect("=")
                params.append((key, normalize(self.value())))
        t.expect(":")
        if t.accept("("):
            types = []
            while not t.accept(")"):
                if types:
                    t.expect(",")
                types.append(self.type())
        else:
            types = [self.type()]
        if len(types) != len(result_names):
            raise t.error(f"op {name} names {len(result_names)} results but gives {len(types)} types", -1)
        results = []
        for result_name, start, ty in zip(result_names, result_starts, types):
            value = Value(ty)
            self.define(env, result_name, value, start - t.i)
            results.append(value)
        regions = []
        if t.accept("["):
            while not t.accept("]"):
                if regions:
                    t.expect(",")
                regions.append(self.region())
        return Op(name, tuple(operands), tuple(results), Params(params), tuple(regions))

    def region(self) -> Graph:
        """A nested graph: isolated from above, it sees only its own arguments and values."""
        t = self.t
        env: dict[str, Value] = {}
        inputs = self.arguments(env)
        t.expect("{")
        ops, outputs = self.body(env)
        t.expect("}")
        return Graph(inputs, ops, outputs, name="region")

    # -- types --------------------------------------------------------------------------------
    def type(self) -> TensorType:
        """A type; the same type text (token for token) parses once and is then shared (types are immutable)."""
        t = self.t
        i = t.i
        if t.kinds[i] == "ident" and t.values[i + 1] == "[":
            try:
                j = t.values.index("]", i + 2) + 1
            except ValueError:
                j = i
            key = tuple(t.values[i:j])
            found = self.types.get(key)
            if found is not None:
                t.i = j
                return found
            found = self.type_uncached()
            if t.i == j:
                self.types[key] = found
            return found
        return self.type_uncached()

    def type_uncached(self) -> TensorType:
        t = self.t
        kind, word = t.peek()
        if kind != "ident":
            raise t.error("expected a type like f32[8,4]")
        try:
            dtype = parse_dtype(word)
        except (KeyError, TypeError):
            raise t.error("expected a dtype such as f32, bf16, i32, bool or key<fry>")
        t.next()
        t.expect("[")
        shape, dims, marked = [], [], False
        extras = None
        while True:
            if t.accept("]"):
                break
            if t.accept("|"):
                extras = self.sharding_extras()
                t.expect("]")
                break
            if shape:
                t.expect(",")
            shape.append(self.integer())
            axes: tuple[str, ...] = ()
            if t.accept("@"):
                axes = [self.axis_name()]
                while t.accept("+"):
                    axes.append(self.axis_name())
                axes = tuple(axes)
                marked = True
            is_open = t.accept("?")
            marked = marked or is_open
            dims.append(DimSharding(axes, is_open))
        if extras is None and not marked:
            return TensorType(tuple(shape), dtype, None)
        replicated, unreduced, priority = extras or ((), (), None)
        return TensorType(tuple(shape), dtype, Sharding(tuple(dims), replicated, unreduced, priority))

    def sharding_extras(self):
        t = self.t
        replicated, unreduced, priority = (), (), None
        first = True
        while t.peek()[1] != "]":
            if not first:
                t.expect(",")
            first = False
            kind, word = t.peek()
            if kind == "ident" and re.fullmatch(r"p[0-9]+", word):
                t.next()
                priority = int(word[1:])
            elif word in ("r", "u"):
                t.next()
                t.expect("=")
                axes = [self.axis_name()]
                while t.accept("+"):
                    axes.append(self.axis_name())
                if word == "r":
                    replicated = tuple(axes)
                else:
                    unreduced = tuple(axes)
            else:
                raise t.error("expected a sharding extra: p<priority>, r=<axes> or u=<axes>")
        return replicated, unreduced, priority

    def axis_name(self) -> str:
        kind, text = self.t.peek()
        if kind == "ident" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
            self.t.next()
            return text
        if kind == "string":
            self.t.next()
            return json.loads(text)
        raise self.t.error("expected a mesh axis name")

    def integer(self) -> int:
        kind, text = self.t.peek()
        if kind == "number" and re.fullmatch(r"-?[0-9]+", text):
            self.t.next()
            return int(text)
        raise self.t.error("expected an integer")

    # -- param values -------------------------------------------------------------------------
    def value(self):
        t = self.t
        kind, text = t.peek()
        if kind == "number":
            t.next()
            if text == "-inf":
                return float("-inf")
            if re.fullmatch(r"-?[0-9]+", text):
                return int(text)
            return float(text)
        if kind == "string":
            t.next()
            return json.loads(text)
        if kind == "ref":
            return self.reference()
        if kind == "tag":
            return self.tagged()
        if text == "*" and kind == "punct":
            t.next()
            return LEAF
        if text == "(":
            t.next()
            items, trailing = self.sequence(")")
            return items[0] if len(items) == 1 and not trailing else tuple(items)
        if text == "[":
            t.next()
            return list(self.sequence("]")[0])
        if kind == "ident":
            if text in ("set", "dict") and t.peek(1)[1] == "{":
                t.next()
                t.next()
                return self.set_or_dict(text)
            t.next()
            constants = {"None": None, "true": True, "false": False, "inf": float("inf"),
                         "nan": float("nan")}
            if text in constants:
                return constants[text]
            try:
                return parse_dtype(text)
            except (KeyError, TypeError):
                raise t.error("expected a value (number, string, tuple, dtype, #Tag(...), ...)", -1)
        raise t.error("expected a value")

    def sequence(self, close: str):
        t = self.t
        items, trailing = [], False
        while not t.accept(close):
            if items:
                t.expect(",")
                if t.accept(close):
                    trailing = True
                    break
            items.append(self.value())
        return items, trailing

    def set_or_dict(self, kind: str):
        t = self.t
        if kind == "set":
            items, _ = self.sequence("}")
            return frozenset(items)
        result = {}
        while not t.accept("}"):
            if result:
                t.expect(",")
            key = self.value()
            t.expect(":")
            result[key] = self.value()
        return result

    def reference(self):
        t = self.t
        start = t.i
        _, text = t.next()
        number = int(text[1:])
        t.expect("<")
        type_name = self.symbol()
        t.expect(">")
        try:
            return resolve_ref(number, type_name)
        except KeyError:
            raise t.error(
                f"reference {text}<{type_name}> is not known in this process: IR text that refers "
                f"to in-process Python objects (callables, custom rules) parses only in the process "
                f"that printed it", start - t.i)

    def tagged(self):
        t = self.t
        start = t.i  # errors point at the tag
        _, text = t.next()
        tag = text[1:]
        if t.accept("."):
            member = self.symbol()
            try:
                return decode_enum(tag, member)
            except KeyError:
                raise t.error(f"#{tag}.{member} is not a registered enum member", start - t.i)
        if tag == "array":
            return self.array()
        args, kwargs = [], {}
        t.expect("(")
        while not t.accept(")"):
            if args or kwargs:
                t.expect(",")
            kind, word = t.peek()
            if kind == "ident" and t.peek(1)[1] == "=":
                t.next()
                t.next()
                kwargs[word] = self.value()
            else:
                args.append(self.value())
        try:
            return decode_tagged(tag, tuple(args), kwargs)
        except KeyError as e:
            raise t.error(f"cannot rebuild #{tag}(...): {e}", start - t.i)
        except (TypeError, ValueError) as e:
            raise t.error(f"bad arguments for #{tag}(...): {e}", start - t.i)

    def array(self):
        t = self.t
        t.expect("(")
        ty = self.type()
        t.expect(",")
        data = self.value()
        t.expect(")")
        try:
            return array_from_text(ty.shape, ty.dtype, data)
        except Exception as e:  # malformed data is a parse error, never a crash
            raise t.error(f"bad array data for {ty}: {e}", -1)
