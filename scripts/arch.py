#!/usr/bin/env python3
"""Measures the shape of src/ (non-test code), as issue 18 asks.

Checks: no file over 1,000 lines, no function over 150 lines, no import cycle between
modules (a module is one file; `mod x;` declarations are not imports, every other
`crate::`/`super::`/`self::` path is), and the config modules import nothing else of the
crate. Prints every breach and exits 1 if there is one; `--report` prints the sizes too.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_FILE, MAX_FN = 1000, 150


def strip_tests(text, keep_lines=True):
    """Drops `#[cfg(test)]` items (a brace-matched block, or up to `;`). With keep_lines the
    dropped lines stay as empty lines, so that line numbers still match the file."""
    out, i, n = [], 0, len(text)
    while i < n:
        m = re.compile(r"#\[cfg\(test\)\]").search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i:m.start()])
        j = text.find("{", m.end())
        semi = text.find(";", m.end())
        if semi != -1 and (j == -1 or semi < j):
            i = semi + 1
            continue
        depth, k = 0, j
        while k < n:
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        if keep_lines:
            out.append("\n" * text.count("\n", m.start(), k + 1))
        i = k + 1
    return "".join(out)


def test_files():
    """Files that are test modules as a whole: declared `#[cfg(test)] (#[path = ...])? mod x;`."""
    out = set()
    for d, _, names in os.walk(ROOT):
        for f in names:
            if not f.endswith(".rs"):
                continue
            text = open(os.path.join(d, f), encoding="utf-8").read()
            here = d if f in ("mod.rs", "lib.rs", "main.rs") else os.path.join(d, f[:-3])
            pat = r"#\[cfg\(test\)\]\s*(?:#\[path\s*=\s*\"([^\"]+)\"\]\s*)?mod\s+(\w+)\s*;"
            for m in re.finditer(pat, text):
                if m.group(1):
                    out.add(os.path.normpath(os.path.join(d, m.group(1))))
                else:
                    out.add(os.path.normpath(os.path.join(here, m.group(2) + ".rs")))
                    out.add(os.path.normpath(os.path.join(here, m.group(2), "mod.rs")))
    return out


def blank_comments_strings(text):
    """Blanks comments, string and char literals in one pass, keeping the newlines."""
    out, i, n = [], 0, len(text)
    keep_nl = lambda s: "\n" * s.count("\n")
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j == -1 else j
        elif text.startswith("/*", i):
            depth, j = 0, i
            while j < n:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                    if depth == 0:
                        break
                else:
                    j += 1
            out.append(keep_nl(text[i:j]))
            i = j
        elif c in "rb" and re.match(r"(?:br|r)#*\"", text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r"(?:br|r)(#*)\"", text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            j = n if j == -1 else j + len(close)
            out.append('""' + keep_nl(text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + keep_nl(text[i:j + 1]))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^'\\\n])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_braces(code):
    """Rewrites `use a::{b, c::{d}}` groups into `a::b; a::c::d;` (repeatedly, innermost-out),
    so that every path in a braced import is seen."""
    pat = re.compile(r"((?:\b\w+::)+)\{([^{}]*)\}")
    for _ in range(10):
        new = pat.sub(lambda m: " ".join(m.group(1) + p.strip() + ";" for p in m.group(2).split(",") if p.strip()), code)
        if new == code:
            break
        code = new
    return code


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[0] == "bin":
        return "bin::" + "::".join(rel[1:])
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel) or "crate"


def main():
    files = {}
    tests = test_files()
    for d, _, names in os.walk(ROOT):
        for f in names:
            p = os.path.join(d, f)
            if f.endswith(".rs") and os.path.normpath(p) not in tests:
                files[module_of(p)] = p
    mods = set(files)
    bad, sizes, graph = [], [], {}
    for mod, path in sorted(files.items()):
        raw = open(path, encoding="utf-8").read()
        code = blank_comments_strings(strip_tests(raw))
        nlines = len(strip_tests(raw, keep_lines=False).splitlines())
        sizes.append((nlines, mod))
        if nlines > MAX_FILE:
            bad.append(f"{path}: {nlines} non-test lines (max {MAX_FILE})")
        # functions: find `fn name` then the brace-matched body
        for m in re.finditer(r"\bfn\s+(\w+)[^;{]*\{", code):
            k, depth = m.end() - 1, 0
            while k < len(code):
                c = code[k]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            length = code.count("\n", m.start(), k) + 1
            if length > MAX_FN:
                line = code.count("\n", 0, m.start()) + 1
                bad.append(f"{path}:{line}: fn {m.group(1)} is {length} lines (max {MAX_FN})")
        # imports
        deps = set()
        here = [] if mod == "crate" else mod.split("::")
        is_dir_mod = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        base_for_self = here if is_dir_mod else here[:-1] + ([here[-1]] if here else [])
        for m in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", expand_braces(code)):
            head, tail = m.group(1), m.group(2).split("::")[1:]
            if head == "crate":
                parts = tail
            elif head == "self":
                parts = (here if is_dir_mod else here) + tail
            else:
                parent = here[:-1] if is_dir_mod or True else here
                parts = parent + tail
            while parts and parts[0] == "super":
                parts = parts[1:]
            # longest prefix that is a module
            target = None
            for i in range(len(parts), 0, -1):
                cand = "::".join(parts[:i])
                if cand in mods:
                    target = cand
                    break
            if target and target != mod and not mod.startswith("bin::"):
                deps.add(target)
        # `use name::...` where name is a child module declared here (pub use child::X)
        for m in re.finditer(r"\bpub\s+use\s+(\w+)::", code):
            cand = "::".join(here + [m.group(1)]) if here else m.group(1)
            if cand in mods and cand != mod:
                deps.add(cand)
        graph[mod] = deps
        if mod == "config" or mod.startswith("config::"):
            for t in deps:
                if not (t == "config" or t.startswith("config::")):
                    bad.append(f"{path}: the config module imports crate::{t}")
    # cycles: strongly connected components (Tarjan)
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    for comp in comps:
        edges = [f"{a}->{b}" for a in comp for b in sorted(graph[a]) if b in comp]
        bad.append("import cycle: " + ", ".join(comp) + "  (" + " ".join(edges) + ")")
    if "--report" in sys.argv:
        for n, m in sorted(sizes, reverse=True):
            print(f"{n:6} {m}")
    for b in bad:
        print(b)
    print(f"arch: {len(files)} modules, {len(bad)} breaches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
