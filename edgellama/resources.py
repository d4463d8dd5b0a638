"""Files that ship with the package: runtime sources, boards, toolchains, the default model.

In a wheel, firmware/, boards/ and toolchains/ sit in edgellama/_share/; in a source
checkout (editable install) they are the repository's top-level folders. Both are
found from this file's location, never from the current directory.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = PACKAGE_DIR / "models" / "tinystories-850k.gguf"


def share_dir(name: str) -> Path:
    for candidate in (PACKAGE_DIR / "_share" / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgellama installation is missing its {name}/ folder")
