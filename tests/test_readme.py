"""The README's Python snippets run (those that need no user files)."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    runnable = [b for b in blocks if "path/to" not in b and "loss_fn" not in b and "find_smollm2" not in b]
    assert len(runnable) >= 2
    namespace: dict = {}
    for block in runnable:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["effects"].shape[0] == namespace["cfg"].n_layers
    toy = namespace["toy"]  # the toy-model snippet: dense keeps 2 features, sparse all 5
    assert list(toy.n_represented(namespace["run"].model)) == [2, 5]
