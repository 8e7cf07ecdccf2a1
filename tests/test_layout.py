"""The package layout holds: the model folder is closed and travels as remote code, and no module import cycle.

- `hf_dynasr/models/dynasr/` imports only torch, transformers, safetensors, the standard library and its own
  files, so `save_pretrained` (transformers' `custom_object_save`: the class's file plus its relative imports,
  recursively) copies everything a checkpoint needs for `trust_remote_code=True`;
- a saved supernet loads in a fresh process where `hf_dynasr` cannot be imported, whole and as a size, and
  gives the logits of the model that saved it;
- the modules of `hf_dynasr` import each other without a cycle.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from tiny_supernet import supernet, tiny_features  # noqa: F401  (supernet is a fixture)

PACKAGE = Path(__file__).resolve().parent.parent / "hf_dynasr"
MODEL_FOLDER = PACKAGE / "models" / "dynasr"
ALLOWED_THIRD_PARTY = {"torch", "transformers", "safetensors"}
TOL = 1e-4


def _imports(path: Path):
    """(node, is inside a function or class body) for every import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, id(node) not in top


def _model_folder_files() -> list[Path]:
    return sorted(MODEL_FOLDER.glob("*.py"))


# --- the closed model folder -------------------------------------------------------------------------
def test_model_folder_imports_only_torch_transformers_safetensors_stdlib_and_siblings():
    siblings = {p.stem for p in _model_folder_files()}
    bad = []
    for path in _model_folder_files():
        for node, nested in _imports(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if nested:
                bad.append(f"{where}: import inside a function or class (move it to the top of the file)")
            if isinstance(node, ast.ImportFrom) and node.level:
                # `from .x_dynasr import y` is what custom_object_save follows; `from . import x` or `from ..`
                # would not be copied next to the checkpoint
                if node.level != 1 or node.module is None or node.module.split(".")[0] not in siblings:
                    bad.append(f"{where}: relative import must be `from .<sibling> import ...`")
                continue
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                root = name.split(".")[0]
                if root not in ALLOWED_THIRD_PARTY and root not in sys.stdlib_module_names:
                    bad.append(f"{where}: imports {name} (allowed: {sorted(ALLOWED_THIRD_PARTY)}, the standard "
                               "library, relative siblings)")
    assert not bad, "the model folder must stay closed:\n" + "\n".join(bad)


def _relative_closure(start: list[str]) -> set[str]:
    """File names the relative imports of `start` (module stems in the model folder) reach, recursively."""
    seen, todo = set(), list(start)
    while todo:
        stem = todo.pop()
        if stem in seen:
            continue
        seen.add(stem)
        for node, _ in _imports(MODEL_FOLDER / f"{stem}.py"):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(node.module.split(".")[0])
    return {f"{stem}.py" for stem in seen}


def _run_without_hf_dynasr(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import hf_dynasr` fails, outside the repository."""
    guard = 'import sys\nsys.modules["hf_dynasr"] = None  # any import of hf_dynasr now raises ImportError\n'
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"), "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_saved_checkpoint_loads_as_remote_code_without_hf_dynasr(supernet, tmp_path):  # noqa: F811
    _, model = supernet
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    written = sorted(p.name for p in saved.iterdir())
    # the code that travels: the model and config files and every sibling they import (the whole closure)
    code_files = {name for name in written if name.endswith(".py")}
    assert code_files == _relative_closure(["modeling_dynasr", "configuration_dynasr"])
    assert {"config.json", "model.safetensors"} <= set(written)
    fresh = tmp_path / "fresh"  # only what save_pretrained wrote, nowhere near the repository
    fresh.mkdir()
    for name in written:
        shutil.copy2(saved / name, fresh / name)

    x, mask = tiny_features()
    torch.save({"x": x, "mask": mask}, tmp_path / "features.pt")
    code = f"""
        import json, torch
        from transformers import AutoModelForCTC
        try:
            import hf_dynasr  # noqa: F401
            raise SystemExit("hf_dynasr is importable in the child")
        except ImportError:
            pass
        feats = torch.load({str(tmp_path / "features.pt")!r})
        out, info = {{}}, {{}}
        for size in (None, "small", "mid"):
            kwargs = {{}} if size is None else {{"subnet": size}}
            model = AutoModelForCTC.from_pretrained({str(fresh)!r}, trust_remote_code=True, **kwargs).eval()
            with torch.no_grad():
                out[str(size)] = model(feats["x"], attention_mask=feats["mask"]).logits
            info[str(size)] = {{"module": type(model).__module__, "params": model.num_parameters(),
                               "active": model.config.active_subnet}}
        assert not any(m == "hf_dynasr" or m.startswith("hf_dynasr.") for m in sys.modules if sys.modules[m])
        torch.save(out, {str(tmp_path / "logits.pt")!r})
        print(json.dumps(info))
    """
    result = _run_without_hf_dynasr(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    logits = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        expected = {"None": model(x, attention_mask=mask).logits}
        for size in ("small", "mid"):
            expected[size] = model.extract_subnet(size).eval()(x, attention_mask=mask).logits
    for size, ref in expected.items():
        assert info[size]["module"].startswith("transformers_modules"), info[size]
        assert logits[size].shape == ref.shape
        assert (logits[size] - ref).abs().max() <= TOL, size
    assert info["None"]["params"] == model.num_parameters()
    for size in ("small", "mid"):
        assert info[size]["active"] == size
        assert info[size]["params"] == model.config.subnets[size]["num_parameters"]


# --- no import cycle -----------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the hf_dynasr modules it imports (at top level or inside functions)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node, _ in _imports(path):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule `pkg.sub` when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_hf_dynasr_modules_have_no_import_cycle():
    graph = _import_graph()
    assert "hf_dynasr.models.dynasr.modeling_dynasr" in graph
    assert "hf_dynasr.models.dynasr.subnets_dynasr" in graph["hf_dynasr.models.dynasr.modeling_dynasr"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)

