"""The front page cannot drift from the code: every Python example in README.md runs, in order, in one
namespace (each example's test function is called with the pytest plugin's fixture)."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


def test_every_python_example_in_the_readme_runs(tmp_path, monkeypatch):
    from parity.check.pytest_plugin import assert_parity

    monkeypatch.chdir(tmp_path)  # examples may write files (r50.safetensors)
    monkeypatch.syspath_prepend(str(README.parent))  # `from examples.convnet import ...`
    namespace: dict = {}
    for i, block in enumerate(BLOCKS):
        exec(compile(block, f"README.md python example {i + 1}", "exec"), namespace)
        for name, fn in list(namespace.items()):
            if name.startswith("test_") and callable(fn):
                fn(assert_parity)
                del namespace[name]
    assert (tmp_path / "r50.safetensors").stat().st_size > 0
    assert namespace["r"].passed
