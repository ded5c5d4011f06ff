"""A fast reader for the plain subset of YAML that most config files are written in.

PyYAML builds a Python node object (and calls back into Python several times) for every value,
even with libyaml's C parser: at 10,000 routes that is most of meshgate's start-up. This module
reads, with a few regular expressions per line, files made only of:

- documents separated by ``---`` lines, each a block mapping starting at column 0;
- block mappings (``key: value``, ``key:`` + a nested block) with plain keys
  (letters, digits, ``_ . / -``), block sequences (``- item``, ``- key: value``), including a
  sequence at its key's indent (``rules:`` / ``- ...``);
- single-line flow collections (``[a, b]``, ``{name: x}``, nested);
- single-line plain scalars, single-quoted scalars and double-quoted scalars without escapes;
- comments and blank lines.

Plain scalars are typed with PyYAML's own resolvers and constructors (YAML 1.1: ``yes`` is
true, ``010`` is 8), so the data is exactly what the loader's YAML path builds.

Anything else (anchors, tags, block scalars, multi-line values, tabs, non-ASCII text,
``${VAR}``, merge keys, duplicate keys, a document that is not a mapping, any syntax error...)
makes `parse` return None, and the caller reads the file the slow, exact way. Being strict
here costs speed only, never correctness.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode

__all__ = ["parse"]


class _NotSimple(Exception):
    """The text leaves the subset: read it the slow way."""


# One line: indent, "- " (a sequence item), "key:" (a mapping entry), the rest.
_LINE = re.compile(r"( *)(?:(-)(?: +|$))?(?:([A-Za-z0-9_][A-Za-z0-9_./-]*):(?: +|$))?(.*)", re.ASCII)

# Plain scalars. A block one may hold single spaces, and ":" followed by a non-space (URLs);
# a flow one stops at ",[]{}" and may not hold ":" at all. "-" starts one only before a
# non-space (else it is a sequence item). Characters YAML treats specially anywhere (#, quotes,
# brackets, "?" ...) are left out, as are starts like "&", "*", "!", "|", ">", "%", "@".
_BLOCK_CHAR = r"[\w./~+()=$^;<>%@*&!?,|-]"
_PLAIN_BLOCK = re.compile(
    rf"(?:[\w./~+(=$^;<]|-(?={_BLOCK_CHAR}))(?:{_BLOCK_CHAR}++|:(?={_BLOCK_CHAR}))*+"
    rf"(?: ++(?:{_BLOCK_CHAR}++|:(?={_BLOCK_CHAR}))++)*+",
    re.ASCII,
)  # possessive (*+): nothing to backtrack into, which keeps the value regex below linear
_FLOW_CHAR = r"[\w./~+()=$^;<>%@*&!|-]"
_PLAIN_FLOW = re.compile(rf"(?:[\w./~+(=$^;<]|-(?={_FLOW_CHAR})){_FLOW_CHAR}*+(?: ++{_FLOW_CHAR}++)*+", re.ASCII)
_SINGLE = re.compile(r"'((?:[^']|'')*)'")
_DOUBLE = re.compile(r'"([^"\\]*)"')
_END = re.compile(r" *(?: #.*)?")  # what may follow a quoted value on its line
# A flow collection's tokens; split() leaves what lies between them, which must be spaces.
_FLOW_TOKENS = re.compile(
    rf"""([\[\]{{}},]|:(?= )|'(?:[^']|'')*'|"[^"\\]*"|{_PLAIN_FLOW.pattern})""", re.ASCII
)

_STR_TAG = "tag:yaml.org,2002:str"
# The loader's YAML path resolves with these too (its loader class derives from this one).
_RESOLVERS = getattr(yaml, "CSafeLoader", yaml.SafeLoader).yaml_implicit_resolvers
# Tags whose constructors read only the text (no state), so a value can be reused per text.
_SCALAR_CONSTRUCTORS = {
    tag: SafeConstructor.yaml_constructors[tag]
    for tag in (
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:timestamp",
    )
}
_CONSTRUCTOR = SafeConstructor()
# First characters of the values an implicit resolver may type (digits, "y", "n", "~"...) and
# quotes: a value starting with any other character is a string as it is.
_TYPED_FIRST = frozenset([*(first for first in _RESOLVERS if first), "'", '"'])


def parse(text: str) -> list[tuple[int, dict[str, Any]]] | None:
    """(first line, data) of every non-empty document of `text`, or None when `text` is not in
    the subset (the caller then reads it with PyYAML)."""
    # ASCII, no control character but newlines (tabs, CR), no ${VAR} or $${, no merge key.
    if not text.isascii() or "${" in text or "<<" in text or not text.replace("\n", "").isprintable():
        return None
    try:
        return _by_shape(text)
    except _NotSimple:
        return None


# --- shapes --------------------------------------------------------------------------------
#
# Documents of one kind are often written alike and differ in their values only (10,000 routes
# generated from one template). The *shape* of a document is its text with every value
# replaced by a placeholder; the first time a shape comes back, the document is read line by
# line once more, noting which value lands where, and the shape is compiled into a function
# that builds the data straight from the values. The next documents of that shape cost a
# regex pass and that function call.
#
# The values are found by the regex below, which takes exactly the tokens the line reader reads
# as one value: a plain block value running to the end of its line (or a comment), a plain flow
# value followed by "," "]" or "}", or a quoted one (quotes included, so that a slot may hold
# a plain value in one document and a quoted one in the next; a "#" inside quotes is left to
# the line reader). The text around them is the shape, so a document of a known
# shape differs from the one read line by line only in values of the same kind and place, and
# reads the same way. A shape is only kept when the line reader took exactly the values the
# regex found, in the same order.

# Split by it: [text, delimiter, value, text, delimiter, value, ..., text]. A value follows
# ":", "-", "[" or "," and spaces (this leading character class lets the regex engine skip
# ahead quickly); the shape keeps the delimiters. Flow values are tried first (they are the
# more common in generated configs); a block value holding ", " is then cut in two, its shape
# never compiles, and such documents are read line by line.
_VALUES = re.compile(
    rf"([:\[,-] *)((?<=[ \[,]){_PLAIN_FLOW.pattern}(?= *[,\]}}])"
    rf"|(?<= )(?![\[{{]){_PLAIN_BLOCK.pattern}(?= *(?: #.*)?$)"
    rf"""|(?<=[ \[,])(?:'(?:[^'\n#]|'')*+'|"[^"\\\n#]*+")(?= *[,\]}}]| *(?: #.*)?$))""",
    re.ASCII | re.MULTILINE,
)
_MARKER = re.compile(r"^---$", re.MULTILINE)
_PLACEHOLDER = "\x00"  # never in a simple text (control characters are screened out)

# Shapes seen: shape -> (line of the document in its chunk, builder) once compiled, None when
# seen once, False when it cannot be compiled (or holds no document).
_SHAPES: dict[str, Any] = {}
_MAX_SHAPES = 512  # with keys of at most 8 KB: at most 4 MB held
_MAX_SHAPE_LENGTH = 8192
_GIVE_UP = 16  # documents of a file without a known shape, after which it is read line by line
_FLOW_SHAPES: dict[str, Any] = {}  # the same, for flow collections read line by line
_NEW = object()


class _Slot:
    """Where the n-th value of a document goes, while a shape is compiled."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _Recorder(dict):
    """Stands for the typed-value cache while a shape is compiled: hands out slots."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[str] = []


def _by_shape(text: str) -> list[tuple[int, dict[str, Any]]]:
    plain: dict[str, Any] = {}
    documents: list[tuple[int, dict[str, Any]]] = []
    line = 0  # lines before the chunk
    shapes = _SHAPES
    split = _VALUES.split
    typed_first = _TYPED_FIRST
    same = plain.setdefault
    tried = hits = 0
    for chunk in _MARKER.split(text):
        # A huge chunk would make a huge key; a file whose documents all differ gains nothing.
        if len(chunk) > _MAX_SHAPE_LENGTH or (tried >= _GIVE_UP and not hits):
            documents.extend((line + number, data) for number, data in _documents(chunk, plain))
        else:
            tried += 1
            parts = split(chunk)
            values = parts[2::3]
            parts[2::3] = [""] * len(values)
            shape = _PLACEHOLDER.join(parts)
            entry = shapes.get(shape, _NEW)
            if type(entry) is tuple:
                hits += 1
                # A string is kept once per file (setdefault): documents share repeated values.
                typed = [
                    (plain[v] if v in plain else _plain(v, plain)) if v[0] in typed_first else same(v, v)
                    for v in values
                ]
                documents.append((line + entry[0], entry[1](typed)))
            else:
                if entry is None:  # the second time: worth compiling
                    if len(shapes) >= _MAX_SHAPES:
                        shapes.clear()
                    shapes[shape] = _compile(chunk, values)
                elif entry is _NEW:
                    shapes[shape] = None
                documents.extend((line + number, data) for number, data in _documents(chunk, plain))
        line += chunk.count("\n")
    return documents


def _compile(chunk: str, values: list[str]) -> Any:
    """(line of the document in `chunk`, builder of its data from typed values), or False."""
    recorder = _Recorder()
    try:
        found = _documents(chunk, recorder)
        if not found or recorder.values != values:
            return False  # no document, or the regex and the line reader disagree
        number, data = found[0]
        return number, eval("lambda t: " + _code(data), {})  # code made of the keys' reprs
    except (_NotSimple, SyntaxError, RecursionError, MemoryError):
        return False


def _code(value: Any) -> str:
    """Python source that builds `value`, with t[n] for the n-th value."""
    if type(value) is dict:
        return "{" + ", ".join(f"{key!r}: {_code(item)}" for key, item in value.items()) + "}"
    if type(value) is list:
        return "[" + ", ".join(_code(item) for item in value) + "]"
    if type(value) is _Slot:
        return f"t[{value.index}]"
    if value is None:
        return "None"
    raise _NotSimple  # a value read without a slot: not expected, but not worth a shape


def _documents(text: str, plain: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Read `text` line by line, with a stack of open blocks. `plain` caches typed values by
    their text (values repeat)."""
    match = _LINE.match
    documents: list[tuple[int, dict[str, Any]]] = []
    # Open blocks, innermost last: (indent, container, is a sequence, at its key's indent).
    frames: list[tuple[int, Any, bool, bool]] = []
    # A "key:" or "-" without a value on its line: (container, key or index, indent, is an item).
    pending: tuple[Any, Any, int, bool] | None = None
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line[0] == "#":
            continue
        if line[0] in "-.%" and line.startswith(("---", "...", "%")):
            if line != "---":
                raise _NotSimple  # a marker with content, an end marker, a directive
            if pending is not None and pending[3]:
                raise _NotSimple
            frames = []
            pending = None
            continue
        indent_text, dash, key, rest = match(line).groups()
        if not dash and key is None and (not rest or rest[0] == "#"):
            continue  # blank or comment line
        indent = len(indent_text)

        if pending is not None:
            container, slot, pending_indent, item = pending
            pending = None
            if indent > pending_indent:  # the value is the block that starts here
                if dash:
                    block: Any = []
                elif key is not None:
                    block = {}
                else:
                    raise _NotSimple  # a scalar on its own line (a multi-line value)
                container[slot] = block
                frames.append((indent, block, bool(dash), False))
            elif indent == pending_indent and dash and not item:
                block = []  # "key:" then "- ..." at the key's indent
                container[slot] = block
                frames.append((indent, block, True, True))
            elif item:
                raise _NotSimple  # an empty item: rare, left to PyYAML
            # else the value stays None (a "key:" with nothing under it)

        if not frames:
            if indent or dash or key is None:
                raise _NotSimple  # a document must be a block mapping at column 0
            root: dict[str, Any] = {}
            documents.append((number, root))
            frames.append((0, root, False, False))
        while frames[-1][0] > indent:
            frames.pop()
            if not frames:
                raise _NotSimple
        top_indent, container, is_sequence, indentless = frames[-1]
        if top_indent != indent:
            raise _NotSimple  # between two levels, or deeper after a value
        if is_sequence:
            if not dash:
                if not indentless or key is None:
                    raise _NotSimple
                frames.pop()  # the sequence under "key:" ends; its mapping goes on
                container = frames[-1][1]
            elif key is not None:
                # "- key: value": a mapping whose keys line up with this first one.
                block = {}
                container.append(block)
                indent = match(line).start(3)
                frames.append((indent, block, False, False))
                container = block
            else:
                if rest and rest[0] != "#":
                    container.append(_inline(rest, plain))
                else:
                    container.append(None)
                    pending = (container, len(container) - 1, indent, True)
                continue
        elif dash or key is None:
            raise _NotSimple  # an item or a scalar where a key belongs
        # A "key: value" line of the mapping `container`.
        if key in container:
            raise _NotSimple  # a duplicate key: PyYAML's path reports it
        if rest and rest[0] != "#":
            container[key] = _inline(rest, plain)
        else:
            container[key] = None
            pending = (container, key, indent, False)
    if pending is not None and pending[3]:
        raise _NotSimple
    return documents


def _inline(text: str, plain: dict[str, Any]) -> Any:
    """The value written after "key: " or "- "."""
    first = text[0]
    if first == "[" or first == "{":
        return _flow(text, plain)
    if first == "'" or first == '"':
        m = (_SINGLE if first == "'" else _DOUBLE).match(text)
        if m is None or _END.fullmatch(text, m.end()) is None:
            raise _NotSimple
        return _plain(m[0], plain)
    cut = text.find(" #")
    if cut >= 0:
        text = text[:cut]
    text = text.rstrip(" ")
    if _PLAIN_BLOCK.fullmatch(text) is None:
        raise _NotSimple
    return _plain(text, plain)


_VALUE, _KEY, _COLON, _NEXT = range(4)  # what a flow collection expects next


def _flow(text: str, plain: dict[str, Any]) -> Any:
    """A flow collection that ends on its line."""
    cut = text.find(" #")
    if cut >= 0:
        text = text[:cut]  # a " #" inside quotes leaves a lone quote behind: not simple
    if type(plain) is _Recorder:
        return _flow_tokens(text, plain)
    # Flow collections have shapes too ("[{name: x}]"), which help when documents differ.
    parts = _VALUES.split(text)
    values = parts[2::3]
    parts[2::3] = [""] * len(values)
    shape = _PLACEHOLDER.join(parts)
    entry = _FLOW_SHAPES.get(shape, _NEW)
    if type(entry) is tuple:
        same = plain.setdefault
        return entry[1](
            [(plain[v] if v in plain else _plain(v, plain)) if v[0] in _TYPED_FIRST else same(v, v) for v in values]
        )
    if entry is None:
        if len(_FLOW_SHAPES) >= _MAX_SHAPES:
            _FLOW_SHAPES.clear()
        recorder = _Recorder()
        try:
            value = _flow_tokens(text, recorder)
            compiled: Any = False
            if recorder.values == values:
                compiled = (0, eval("lambda t: " + _code(value), {}))  # code made of the keys' reprs
        except (_NotSimple, SyntaxError, RecursionError, MemoryError):
            compiled = False
        _FLOW_SHAPES[shape] = compiled
    elif entry is _NEW:
        _FLOW_SHAPES[shape] = None
    return _flow_tokens(text, plain)


def _flow_tokens(text: str, plain: dict[str, Any]) -> Any:
    """`_flow`, token by token."""
    parts = _FLOW_TOKENS.split(text)
    if "".join(parts[::2]).strip(" "):
        raise _NotSimple  # something that is no token: a multi-line collection, a comment...
    stack: list[Any] = []
    container: Any = None
    key: str = ""
    state = _VALUE
    result: Any = None
    for token in parts[1::2]:
        c = token[0]
        if state == _NEXT:
            if c == ",":
                state = _KEY if type(container) is dict else _VALUE
                continue
            if not ((c == "]" and type(container) is list) or (c == "}" and type(container) is dict)):
                raise _NotSimple
            container = stack.pop()
            if container is None:
                state = -1  # the collection is complete: nothing may follow
            continue
        if state == _COLON:
            if c != ":":
                raise _NotSimple
            state = _VALUE
            continue
        if state == _KEY:
            if c == "}" and not container:  # {}
                container = stack.pop()
                state = _NEXT if container is not None else -1
                continue
            if c in "[]{},:'\"" or token in container:
                raise _NotSimple  # not a plain key, or a duplicate key
            key = token
            state = _COLON
            continue
        if state != _VALUE:
            raise _NotSimple
        if c == "[" or c == "{":
            value: Any = [] if c == "[" else {}
            state = _VALUE if c == "[" else _KEY
        elif c == "]" and type(container) is list and not container:  # []
            container = stack.pop()
            state = _NEXT if container is not None else -1
            continue
        elif c in "]},:":
            raise _NotSimple
        else:
            value = _plain(token, plain)
            state = _NEXT
        if container is None:
            if result is not None or state == _NEXT:
                raise _NotSimple  # a scalar or a second collection at the top
            result = value
        elif type(container) is list:
            container.append(value)
        else:
            container[key] = value
        if state != _NEXT:
            stack.append(container)
            container = value
    if state != -1:
        raise _NotSimple  # not closed on its line
    return result


def _plain(text: str, plain: dict[str, Any]) -> Any:
    """A scalar as written, plain (typed as PyYAML types it) or quoted (quotes included)."""
    if type(plain) is _Recorder:
        plain.values.append(text)
        return _Slot(len(plain.values) - 1)
    try:
        return plain[text]
    except KeyError:
        pass
    value: Any = text
    first = text[0]
    if first == "'":
        value = plain[text] = text[1:-1].replace("''", "'")
        return value
    if first == '"':
        value = plain[text] = text[1:-1]  # no escapes (the regexes take none)
        return value
    for tag, regexp in _RESOLVERS.get(first, ()):
        if regexp.match(text):
            if tag != _STR_TAG:
                construct = _SCALAR_CONSTRUCTORS.get(tag)
                if construct is None:
                    raise _NotSimple  # "=" (the value tag) and such: PyYAML's path reports them
                try:
                    value = construct(_CONSTRUCTOR, ScalarNode(tag, text))
                except Exception:  # noqa: BLE001 - an invalid value: PyYAML's path reports it
                    raise _NotSimple from None
            break
    plain[text] = value
    return value
