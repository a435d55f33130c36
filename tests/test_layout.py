"""The package's layout: every module imports on its own; no two modules import each other, even through imports
placed inside functions (a cycle there only waits for the wrong call order); the benchmark scripts train nothing
themselves."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmsr_peft"


def modules() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (top level or inside a function). A
    module's own parent packages are left out: Python imports them before the module in any case."""
    names = modules()
    graph = {name: set() for name in names}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                wanted = [f"{target}.{alias.name}" for alias in node.names] + [target]
            elif isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            else:
                continue
            found = next((candidate for candidate in wanted if candidate in names), None)
            if found and not name.startswith(f"{found}.") and found != name:
                graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "mmsr_peft.data.processing" in graph["mmsr_peft.cache"]  # the graph sees imports
    assert "mmsr_peft.cache" in graph["mmsr_peft.training"]  # ... those inside functions too
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules())
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


SCRIPTS = PACKAGE.parent / "scripts"
TRAINING_CALLS = ("backward", "zero_grad", "clip_grad_norm_", "optim")  # `.optim`: torch.optim's optimizers


def training_logic(source: str) -> list[str]:
    """Where `source` trains a model itself: backward passes, optimizer steps or optimizers of its own."""
    found = [
        node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute) and node.attr in TRAINING_CALLS
    ]
    return [f"line {node.lineno}: .{node.attr}" for node in sorted(found, key=lambda node: node.lineno)]


def test_benchmark_scripts_train_only_through_the_library():
    """The benchmarks run the library's commands or time its `Trainer` (`training_step`, `train`): results made
    by a training loop of their own could differ from what a user's run does."""
    found = {path.name: training_logic(path.read_text()) for path in sorted(SCRIPTS.glob("*.py"))}
    assert "benchmark.py" in found and "benchmark_throughput.py" in found
    assert {name: lines for name, lines in found.items() if lines} == {}
    loop = "optimizer = torch.optim.AdamW(params)\nloss.backward()\noptimizer.zero_grad()\n"
    assert training_logic(loop) == ["line 1: .optim", "line 2: .backward", "line 3: .zero_grad"]
