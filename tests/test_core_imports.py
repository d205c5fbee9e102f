"""ask_the_expert.method and ask_the_expert.utils must import without torch, lightning or torchvision (the deployment
runtime has none of them)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import ask_the_expert.method
import ask_the_expert.utils

ROOT = Path(__file__).resolve().parents[1]


def test_core_imports_without_torch():
    modules = sorted(
        f"{package.__name__}.{m.name}"
        for package in (ask_the_expert.method, ask_the_expert.utils)
        for m in pkgutil.iter_modules(package.__path__)
    )
    assert {
        "ask_the_expert.method.router",
        "ask_the_expert.method.costs",
        "ask_the_expert.method.sweep",
        "ask_the_expert.method.subsets",
        "ask_the_expert.method.cifar100_classes",
    } <= set(modules)
    # A None entry in sys.modules makes any `import torch` raise ImportError.
    script = (
        "import sys, importlib\n"
        "for name in ('torch', 'lightning', 'pytorch_lightning', 'torchvision', 'timm'):\n"
        "    sys.modules[name] = None\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
