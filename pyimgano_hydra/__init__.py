__version__ = "0.2.0"


def _no_imports_from_a_run_dir() -> None:
    """``python -m pyimgano_hydra.infer`` (or ``.export``) started inside an untrusted run dir:
    Python puts the working dir first on ``sys.path``, so a ``hydra_plugins/`` folder or a
    ``torch.py`` shipped in the run dir would be imported (run). Infer and export drop it (the
    installed ``pyimgano-hydra-infer`` never has it; a source checkout run from its root keeps it)."""
    import os
    import sys

    argv = list(getattr(sys, "orig_argv", []))
    flag = next((i for i, a in enumerate(argv[1:], 1) if a.startswith("-m") and not a.startswith("--")), None)
    module = None if flag is None else argv[flag][2:] or (argv[flag + 1] if flag + 1 < len(argv) else "")
    if not module or module.split(".")[:2] not in (["pyimgano_hydra", "infer"], ["pyimgano_hydra", "export"]):
        return
    cwd = os.getcwd()
    if os.path.dirname(os.path.dirname(os.path.abspath(__file__))) == cwd:
        return
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]


_no_imports_from_a_run_dir()
