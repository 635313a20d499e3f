__version__ = "0.2.0"


def _standard_streams_open() -> None:
    """A command started with stdout or stderr closed (``>&-``, ``2>&-``; a daemon's missing
    stdin): the next file opened took descriptor 1 or 2 and prints went into it, and a None
    ``sys.stdout``/``sys.stderr`` failed the run. Each closed one is pointed at the null device."""
    import os
    import sys

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False, errors="backslashreplace"))


_standard_streams_open()


def _module_argument(argv: list) -> str | None:
    """The module of ``python [options] -m <module>`` parsed as CPython does: short options may be
    combined (``-um mod``, ``-Bmmod``); ``-W``/``-X`` take a value, ``-c`` or a script ends them."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--check-hash-based-pycs":
            i += 2
            continue
        if arg.startswith("--"):
            if arg == "--":
                return None
            i += 1
            continue
        if not arg.startswith("-") or arg == "-":
            return None  # a script or stdin
        for j, char in enumerate(arg[1:], 1):
            if char in "cmWX":
                value = arg[j + 1:] or (argv[i + 1] if i + 1 < len(argv) else "")
                if char == "m":
                    return value
                if char == "c":
                    return None
                i += 0 if arg[j + 1:] else 1  # -W/-X: the value is the rest or the next argument
                break
        i += 1
    return None


# the installed console scripts (pyproject.toml), run as the modules they start
_CONSOLE_SCRIPTS = {"pyimgano-hydra": "pyimgano_hydra", "pyimgano-hydra-infer": "pyimgano_hydra.infer",
                    "pyimgano-hydra-export": "pyimgano_hydra.export"}


def _entry_module() -> str:
    """The module this Python was started to run (``-m`` or one of our console scripts), or ''."""
    import os
    import sys

    return _module_argument(list(getattr(sys, "orig_argv", []))) or _CONSOLE_SCRIPTS.get(
        os.path.basename(sys.argv[0]) if sys.argv else "", "")


def _stop_while_starting(signum, frame):
    """Ctrl-C while an entry point imports (before ``main`` handles it): one line, exit 130, and
    a held-down Ctrl-C ignored from then on (it gave tracebacks from imports and finalizers)."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("interrupted: SIGINT; stopped while starting, nothing was written", file=sys.stderr)
    raise SystemExit(130)


def _ctrl_c_while_starting() -> None:
    import signal

    entry = _entry_module()
    if entry in (*_CONSOLE_SCRIPTS.values(), "pyimgano_hydra.__main__"):
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _stop_while_starting)


def _numba_without_working_dir_config() -> None:
    """numba reads ``./.numba_config.yaml`` when imported and again at each compile: its cache_dir
    pointed numba at a run dir's pickled cache index, ``chrome_trace`` overwrote any file it named,
    ``cache_locator_classes`` imported a module, 500 bytes of YAML anchors took GBs. numba is
    imported from an empty folder, then reads its config from a path that never exists."""
    import os
    import sys
    import tempfile

    if "NUMBA_CACHE_DIR" not in os.environ:  # child Pythons import numba themselves, from here
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(os.path.expanduser("~"), ".cache", "pyimgano_hydra", "numba")
    if "numba.core.config" not in sys.modules:
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as empty:
            os.chdir(empty)
            try:
                import numba.core.config  # noqa: F401
            except Exception:  # noqa: BLE001 - no numba (or a broken one): nothing reads the file
                return
            finally:
                os.chdir(cwd)
    sys.modules["numba.core.config"]._config_fname = os.path.join(os.devnull, ".numba_config.yaml")


def _no_imports_from_a_run_dir() -> None:
    """``python -m pyimgano_hydra.infer`` (or ``.export``) started inside an untrusted run dir:
    Python puts the working dir first on ``sys.path``, so a ``hydra_plugins/`` folder or a
    ``torch.py`` shipped in the run dir would be imported (run). Infer and export drop it (the
    installed ``pyimgano-hydra-infer`` never has it; a source checkout run from its root keeps it)."""
    import os
    import sys

    if os.path.lexists(".numba_config.yaml"):
        _numba_without_working_dir_config()
    parts = _entry_module().split(".")
    inside = _inside_a_run_dir(os.getcwd())
    if inside:
        # child Pythons (joblib's loky workers: python -m / -c) put the working dir first on sys.path:
        # a run dir's joblib/ ran in them, under the console scripts too
        os.environ["PYTHONSAFEPATH"] = "1"
        _matplotlib_without_working_dir()
    app = parts in (["pyimgano_hydra"], ["pyimgano_hydra", "__main__"])
    if not inside and not app and parts[:2] not in (["pyimgano_hydra", "infer"], ["pyimgano_hydra", "export"]):
        return  # any entry inside a run dir (the API from a notebook there: Hydra's plugin scan) drops it
    cwd = os.getcwd()
    # nor a PYTHONPATH entry inside a run dir (a relative PYTHONPATH=src read a run dir's src/torch.py)
    sys.path[:] = [p for p in sys.path if not (p and _inside_a_run_dir(os.path.abspath(p)))]
    if os.environ.get("PYTHONPATH"):  # child Pythons resolve it against their own working dir
        entries = [os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p]
        kept = [p for p in entries if not _inside_a_run_dir(p)]
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo_root == cwd or (app and not _inside_a_run_dir(cwd)):
        # the app keeps a project's own modules (custom detectors), as does a source checkout run
        # from its root; its child Pythons (loky's python -c, submitit's python -m, the decode
        # workers' forkserver) see the working dir only where this process does: started from a
        # received dataset folder, the console script's workers imported its joblib/
        # ``python -m`` puts the working dir first on purpose; the console script never has it, and
        # one reached through an empty PYTHONPATH entry (PYTHONPATH=/x:) is dropped too (after startup:
        # Python imported its sitecustomize.py before any of this; docs/WORKBENCH.md)
        module_run = bool(_module_argument(list(getattr(sys, "orig_argv", []))))
        keeps = repo_root == cwd or (module_run and bool(sys.path) and sys.path[0] in ("", cwd))
        if not keeps:
            sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
        os.environ["PYTHONSAFEPATH"] = "1"
        entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != cwd]
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *entries] if keeps else entries)
        return
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
    # nor its child Pythons: the decode workers' forkserver (python -c) ran a multiprocessing.py
    # of the image folder infer was started in
    os.environ["PYTHONSAFEPATH"] = "1"


def _matplotlib_without_working_dir() -> None:
    """matplotlib reads ``./matplotlibrc`` when imported (before $MATPLOTLIBRC): a run dir's
    ``text.usetex: True`` failed a training run at its plots. Imported once from the root instead."""
    import os
    import sys

    cwd, saved = os.getcwd(), list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]  # nor its matplotlib.py
    try:
        os.chdir(os.sep)
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    finally:
        os.chdir(cwd)
        sys.path[:] = saved


# One of these marks a run dir: a claim, a status.json (an unfinished run is one), a report.json or
# Hydra's record (a run shipped without the other three).
RUN_RECORD_FILES = (".claim.json", "status.json", "report.json", ".hydra")
# and one of these a sweep dir, also when copied without its dot files (``cp -r sweep/* dest``)
SWEEP_RECORD_FILES = ("multirun.yaml", "sweep.json")


def _inside_a_run_dir(path: str) -> bool:
    """``path`` or a folder above it holds a run's or a sweep's record (``python -m pyimgano_hydra
    --help`` from inside a received run dir imported its ``hydra_plugins/``)."""
    import os

    while True:
        if any(os.path.lexists(os.path.join(path, name)) for name in RUN_RECORD_FILES + SWEEP_RECORD_FILES):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


_no_imports_from_a_run_dir()  # first: ``import signal`` below read a run dir's signal.py (or enum.py)
_ctrl_c_while_starting()


def _guard_hydra_in_a_worker() -> None:
    """A launcher's worker (joblib, submitit) imports this package to unpickle the job's function,
    right before Hydra composes the job's config there: Hydra's config reads get the same checks as
    in the process that started the sweep (``hydra_guard``)."""
    import sys

    if "hydra.plugins.config_source" in sys.modules:
        from pyimgano_hydra.hydra_guard import guard_hydra

        guard_hydra(scan=False)


_guard_hydra_in_a_worker()


def _quiet_resource_tracker() -> None:
    """multiprocessing's resource tracker (a child process) warns of the semaphores of joblib
    workers that were killed: lines after the one error line, nothing a user can act on."""
    import os

    quiet = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS", "")
    if quiet not in current:
        os.environ["PYTHONWARNINGS"] = f"{current},{quiet}" if current else quiet


_quiet_resource_tracker()
