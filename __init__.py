"""ComfyUI entry point of the OmniGen2 node pack.

ComfyUI imports this folder as a package (custom_nodes/<folder>/__init__.py) and reads NODE_CLASS_MAPPINGS,
NODE_DISPLAY_NAME_MAPPINGS and WEB_DIRECTORY. The node package is imported relatively: ComfyUI owns the top-level
module name `nodes`, so ours must never be importable under it.
"""

import os
import sys

# The engine is imported as the absolute module `omni_core` (by the nodes, the tests and scripts alike), so one copy
# is shared however the pack was entered. ComfyUI does not put a custom node's folder on sys.path, so add it here;
# appended, not prepended, so ComfyUI's own top-level modules (`nodes`, `utils`, ...) always win a name clash.
_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

WEB_DIRECTORY = "./web"

# ComfyUI imports this file as a package. Tools that import it as a bare module (pytest, collecting a checkout whose
# folder name is no valid package name, imports the root __init__.py as `__init__`) have no package to resolve
# `.nodes` against; they get no nodes instead of an ImportError.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
