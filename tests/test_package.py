"""The package's structure, checked on its source: docs/design.md's layer map and rule 1."""

import ast
from pathlib import Path

import refdiff

ROOT = Path(refdiff.__file__).parent
# docs/design.md's layer map, bottom to top, with the modules the list leaves out placed where they sit:
# distributed, checkpoint and train_state under train; classifier_train, vae_train, gan_train, flow_train and
# clip_train beside it; captions_eval (scoring captioned-shape samples) beside digits_eval; generate, demo, compare and
# guidance_compare (classifier-free against CLIP guidance, scored) under cli.
LAYERS = ("backend", "speed", "workers", "parallel", "memory", "schedules", "diffusion", "likelihood", "layers", "models",
          "timesteps", "losses", "optim", "run_config", "samplers", "data", "distributed", "checkpoint", "train_state", "train",
          "classifier_train", "vae_train", "gan_train", "flow_train", "clip_train", "metrics", "digits_eval", "captions_eval",
          "plot", "generate", "inpaint", "demo", "compare", "guidance_compare", "cli", "__main__")


def _imports():
    """(file relative to refdiff/, line, imported module) for every import in refdiff, lazy ones included."""
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] + ([f"refdiff.{a.name}" for a in node.names] if node.module == "refdiff" else [])
            else:
                continue
            yield from ((path.relative_to(ROOT), node.lineno, name) for name in names)


def test_every_module_imports_only_layers_below_it():
    """A module of layer L imports from refdiff only modules of layers listed before L (or its own)."""
    upward, seen = [], set()
    for rel, line, name in _imports():
        layer = rel.parts[0].removesuffix(".py")
        if layer == "__init__":
            continue
        assert layer in LAYERS, f"{rel} is not placed in LAYERS"
        seen.add(layer)
        parts = name.split(".")
        if parts[0] == "refdiff" and len(parts) > 1 and parts[1] not in (layer, "__version__"):
            if LAYERS.index(parts[1]) > LAYERS.index(layer):
                upward.append(f"{rel}:{line} imports {name}")
    assert not upward, upward
    assert len(seen) > 15  # the scan saw the package


def test_only_the_backend_module_imports_cupy():
    """docs/design.md rule 1: no module of refdiff but refdiff/backend.py imports CuPy (or cupyx), at any depth
    (lazy imports inside functions count; importlib calls are the backend's own business)."""
    found = [f"{rel}:{line}" for rel, line, name in _imports() if name.split(".")[0] in ("cupy", "cupyx")]
    assert found and all(where.startswith("backend.py:") for where in found), found


def test_pytest_reports_failures_and_errors_not_every_skip():
    """setup.cfg's addopts asks pytest's short summary for failures and errors (-rfE) only: the ~200 skips
    of a machine without CuPy are counted in the last line, not listed one per line (-ra listed them)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT.parent / "setup.cfg")
    flags = [flag for flag in config["tool:pytest"]["addopts"].split() if flag.startswith("-r")]
    assert flags and all(set(flag[2:]) <= set("fE") for flag in flags), flags
