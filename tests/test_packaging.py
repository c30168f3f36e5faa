"""What a plain ``pip install -e .`` brings, and that the library imports without the applications' extras."""
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_dependencies_are_the_library_s_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert names == {"torch", "numpy", "safetensors", "PyYAML", "tqdm"}
    extras = project["optional-dependencies"]
    assert {"scikit-learn", "matplotlib"} <= set(extras["demo"]) and "Pillow" in extras["images"]
    test_extra = set(extras["test"])
    assert all(set(deps) <= test_extra for name, deps in extras.items() if name != "test")  # tests cover every extra


def test_library_imports_without_application_packages():
    code = ("import sys, lors, lors.apply, lors.engine, lors.tasks.classification, lors.tasks.distill, "
            "lors.models.vit, lors.cli.main; "
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'PIL', 'scipy', 'transformers', 'mlxtend') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lors_0_1_public_names_still_work_from_the_top_level():
    import lors

    old = ["AdaptiveLors", "GeneratorStack", "LinearStack", "LorsConfig", "LorsLinearStack", "LowRankLinear",
           "StackLayer", "adaptive_lors_params", "balance_shared_gradients", "convert", "count_parameters",
           "dense_stack_params", "distill", "format_table", "generator_stack_params", "lct", "lct_ranks", "load",
           "merge", "param_groups", "parameter_table", "print_trainable_parameters", "rank_for_epsilon", "report",
           "save", "static_lors_params"]
    assert [n for n in old if not callable(getattr(lors, n, None))] == []
    assert set(old) <= set(lors.__all__)
