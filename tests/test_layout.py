"""The layout's promises: importing the package changes nothing and pulls in no fairseq; the core is
torch-only; the method registry is the one place that knows the methods."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys, torch
before = list(torch.serialization.get_safe_globals())
import unifairseq, unifairseq.core.plan, unifairseq.core.presets, unifairseq.core.accounting, unifairseq.core.heads
import unifairseq.core.methods
print('fairseq' in sys.modules, before == list(torch.serialization.get_safe_globals()))
import unifairseq.fairseq
print(before == list(torch.serialization.get_safe_globals()))
unifairseq.fairseq.register()
print(before == list(torch.serialization.get_safe_globals()))
"""


def test_import_has_no_side_effects_and_the_core_needs_no_fairseq():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, check=True).stdout
    core, glue_import, registered = out.split("\n")[:3]
    assert core == "False True"  # no fairseq, torch's allow-list untouched
    assert glue_import == "True"  # importing the glue registers nothing either
    assert registered == "False"  # register() is where the allow-list grows


DATA_PROBE = """
import sys
import unifairseq.data
print(sorted(m for m in ("numpy", "torch", "fairseq") if m in sys.modules))
import unifairseq.data.bpe, unifairseq.data.check, unifairseq.data.prepare, unifairseq.pipeline, unifairseq.metrics.scoring
print(sorted(m for m in ("torch", "fairseq", "sentencepiece") if m in sys.modules))
"""


def test_data_and_scoring_import_neither_torch_nor_fairseq():
    out = subprocess.run([sys.executable, "-c", DATA_PROBE], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    package, modules = out.split("\n")[:2]
    assert package == "[]"  # unifairseq.data itself: the standard library
    assert modules == "[]"  # the scripts' steps load fairseq / sentencepiece only when they run


def test_every_preset_comes_from_a_method_module():
    from unifairseq.core.methods import METHODS
    from unifairseq.core.presets import PRESETS

    declared = {name for m in METHODS.values() for name in m.presets}
    assert set(PRESETS) == declared | {"mam"}  # MAM: the union of two presets, not a method
    assert {"ia3", "dora_attn"} <= declared


def test_no_source_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "unifairseq").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long



# Import cycles allowed for now: none. Each entry would be a set of modules that import one another around a
# loop, counting the imports inside functions too (a function-level import that only dodges the loop is no
# cut). The test fails on any cycle not listed and on a listed one that is gone, so this list only shrinks.
KNOWN_CYCLES = []


def package_imports(root: Path, in_functions: bool) -> dict:
    """{module: the package's modules it imports}, read with ast. Module level: every import statement
    outside a function body (inside a class, `if` or `try` it still runs at import); `in_functions` adds
    those inside functions. `from P import N` names the module P.N when there is one, else P. A module
    importing its own package or subpackage (and the reverse) is left out: that is how packages are
    built, not a loop between parts."""
    import ast

    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path

    def known(name):  # the longest prefix of a dotted name that is one of the package's modules
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    def visit(node, out, here, package):
        if not in_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return  # runs when called, not at import
        if isinstance(node, ast.Import):
            out.update(known(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".") if package else here.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                out.add(known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base))
        for child in ast.iter_child_nodes(node):
            visit(child, out, here, package)

    graph = {}
    for name, path in modules.items():
        found = set()
        visit(ast.parse(path.read_text(encoding="utf-8")), found, name, path.name == "__init__.py")
        graph[name] = {m for m in found if m and m != name and not m.startswith(name + ".")
                       and not name.startswith(m + ".")}
    return graph


def import_cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (a module reaches another and back)."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for m in graph[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    reaches = {m: reach(m) for m in graph}
    cycles = []
    for m in sorted(graph):
        comp = {m} | {o for o in reaches[m] if m in reaches[o]}
        if len(comp) > 1 and comp not in cycles:
            cycles.append(comp)
    return cycles


def test_import_graph_walk_finds_cycles_and_reads_both_kinds_of_import(tmp_path):
    assert import_cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}) == [{"p.a", "p.b", "p.c"}]
    assert import_cycles({"p.a": {"p.b"}, "p.b": set()}) == []
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from p import a  # a package importing its part: no loop\n")
    (pkg / "a.py").write_text("import p\nfrom . import b\n")
    (pkg / "b.py").write_text("from p.sub.c import X\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("X = 1\ntry:\n    from ..b import Y\nexcept ImportError:\n    pass\n"
                                      "def f():\n    from p import a\n")
    top = package_imports(pkg, in_functions=False)
    assert top == {"p": set(), "p.a": {"p.b"}, "p.b": {"p.sub.c"}, "p.sub": set(), "p.sub.c": {"p.b"}}, top
    assert import_cycles(top) == [{"p.b", "p.sub.c"}]
    every = package_imports(pkg, in_functions=True)
    assert every["p.sub.c"] == {"p.a", "p.b"} and import_cycles(every) == [{"p.a", "p.b", "p.sub.c"}]


def test_no_import_cycle_at_module_level():
    graph = package_imports(REPO / "unifairseq", in_functions=False)
    assert "unifairseq.fairseq.model_bank" in graph["unifairseq.fairseq.models.common"], "the walk missed an import"
    assert import_cycles(graph) == [], "modules importing one another at import time; move the shared part " \
                                       "into a leaf module"


def test_no_new_import_cycle_inside_the_package():
    cycles = import_cycles(package_imports(REPO / "unifairseq", in_functions=True))
    new = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert not new, f"new import cycle(s): {new}; move the shared part into a leaf module (an import inside a " \
                    "function does not cut a cycle)"
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"cut, so remove from KNOWN_CYCLES: {gone}"


# The checkpoint code, bottom up (issue 16): each module imports, of unifairseq.fairseq, only modules listed
# before it; the models, tasks and tools are above all of them and none of these imports those.
CHECKPOINT_LAYERS = ["plain_args", "safe_globals", "basefit", "checkpoint_io", "ckpt_args", "deltacheck", "deltaread", "resume",
                     "deltafolder", "checkpoint"]


def test_the_checkpoint_layers_import_only_downwards():
    graph = package_imports(REPO / "unifairseq", in_functions=True)
    glue = "unifairseq.fairseq."
    for i, name in enumerate(CHECKPOINT_LAYERS):
        imported = {m[len(glue):] for m in graph[glue + name] if m.startswith(glue)}
        above = imported - set(CHECKPOINT_LAYERS[:i])
        assert not above, f"fairseq/{name}.py imports {sorted(above)}, above it: move the shared part down"
    assert "unifairseq.fairseq.deltafolder" in graph["unifairseq.fairseq.checkpoint"], "the walk missed an import"
