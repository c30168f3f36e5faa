"""Every Python block in README.md runs as written (so the examples cannot rot)."""
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
    if "transformers" in block:
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # blocks write files such as ckpt/
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": f"readme_block_{index}"})
