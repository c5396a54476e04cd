"""On PYTHONPATH with $BAVIT_BLOCK_IMPORTS=torch,PIL,...: any import of those packages fails
loudly, in this process and every worker it starts (they inherit the environment). The tests
measure bundles this way to show the measuring side needs none of them."""
import os
import sys

_BLOCKED = tuple(filter(None, os.environ.get("BAVIT_BLOCK_IMPORTS", "").split(",")))


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named '{name}' (blocked: the measuring side must not import it)")
        return None


if _BLOCKED:
    sys.meta_path.insert(0, _Block())
