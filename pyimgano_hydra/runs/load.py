"""Loading a finished run directory back: parsing its untrusted files, never running them."""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pyimgano_hydra.errors import UserError, console_line
from pyimgano_hydra.files import KeptFolder, held_run_folder
from pyimgano_hydra.runs import trust
from pyimgano_hydra.runs.layout import SCHEMA_VERSION, RunDir
from pyimgano_hydra.runs.status import COMPLETED, FAILED, current_state, describe


def _names(names: list[str], shown: int = 20) -> str:
    """Category names for one error line: control characters escaped, each cut to 80 characters
    (report.json is untrusted: a 2 MB or an escape-sequence name must not flood the console)."""
    quoted = [console_line(n)[:80] for n in names[:shown]]
    return ", ".join(quoted) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


@dataclass
class LoadedRun:
    run_dir: RunDir
    report: dict
    inspectors: dict[str, str | None]  # category -> inspector file relative to the run dir
    held: KeptFolder  # the run dir itself, open while this lives: every file is reached from it
    failed: list[str] = field(default_factory=list)  # categories a failed category=all run did not finish (never served)

    def category(self, name: str | None) -> str:
        """The category to use: ``name``, or the run's only one."""
        available = sorted(self.inspectors)
        if name is None:
            if len(available) == 1:
                return available[0]
            raise UserError(f"category: this run has {len(available)} categories ({_names(available)}); "
                            "pick one with category=<name>")
        if name in self.failed:
            raise UserError(f"category={console_line(name)[:80]}: failed in this run's training (see its "
                            f"report.json failed_categories); available: {_names(available)}")
        if name not in available:
            raise UserError(f"category={name} is not in this run; available: {_names(available)}")
        return name

    @contextmanager
    def category_folder(self, category: str) -> Iterator[Path]:
        """The category's folder, held open for the block and reached from the held run dir with no
        link on the way (a folder swapped for a link mid-read never leads into another run)."""
        folder = self.run_dir.category(category).root
        with held_run_folder(folder.relative_to(self.run_dir.root), self.held.path, folder) as held:
            yield held

    def inspector(self, category: str, trust_targets: bool = False, device: str | None = "auto",
                  folder: Path | None = None):
        """The category's stored :class:`~pyimgano_hydra.inspector.Inspector` (parsed, checked),
        its detector on ``device`` (None: the device it was fitted with); read from ``folder`` (the
        held :meth:`category_folder`) when given."""
        from pyimgano_hydra.inspector import Inspector

        relative = self.inspectors[category]
        if not relative:
            raise UserError(f"run_dir={self.run_dir.root}: category {category} has no stored inspector "
                            "(its detector cannot be saved, or recipe.save_checkpoint=false); re-run with a saveable model")
        key = f"{self.run_dir.report}: categories.{category}.inspector"
        path = trust.confined(self.run_dir.root, relative, key)
        stored = self.run_dir.category(category).inspector
        if path != stored:  # where training writes it, and nowhere else
            raise UserError(f"{key}: {console_line(str(relative))[:200]!r} is not "
                            f"{str(stored.relative_to(self.run_dir.root))!r}, where training stores it; refused")
        with ExitStack() as stack:
            held = folder or stack.enter_context(self.category_folder(category))
            inspector = Inspector.load(held / stored.name, trust_targets=trust_targets, device=device, shown_as=path)
            if inspector.category != category:
                raise UserError(f"{path}: holds category {inspector.category!r}, not {category!r}")
            self._check_threshold(inspector, category, path, held)
        return inspector

    def _check_threshold(self, inspector, category: str, path: Path, held: Path) -> None:
        """The inspector's image threshold is the one its category's report.json (read from the ``held``
        category folder) records: an inspector swapped in from another fit served its own threshold,
        and every verdict changed without a word."""
        report = self.run_dir.category(category).report
        recorded = trust.read_json_file(held / report.name, follow=False)
        value = trust.require(trust.require(recorded, "threshold", dict, str(report)), "value", (int, float),
                              f"{report}: threshold")
        value = trust.finite(value, f"{report}: threshold.value")
        if not math.isclose(value, inspector.threshold_, rel_tol=1e-9, abs_tol=1e-12):
            raise UserError(f"{path}: image threshold {inspector.threshold_:g} is not the {value:g} its "
                            f"category's report.json records; an inspector from another fit: use the run's own")


def load_run(path: str | Path) -> LoadedRun:
    """Read a completed run dir's report.json (or a category=all run's that failed in some categories: its
    completed ones are served); refuse unfinished runs and other schema versions."""
    run_dir = RunDir(Path(path))
    try:
        held = KeptFolder(run_dir.root)
    except OSError:
        raise UserError(f"run_dir={path}: no such directory; pass the folder that holds report.json") from None
    state = None
    if run_dir.status.exists() or run_dir.status.is_symlink():
        trust.confined(run_dir.root, run_dir.status.name, str(run_dir.status))
        record = trust.read_json_file(held.path / run_dir.status.name, follow=False)
        state = current_state(record)
        if not isinstance(state, str):
            raise UserError(f"{run_dir.status}: status: expected a string such as \"completed\"")
    refused = (f"run_dir={path}: the run is {(describe(record) if state else state) or 'missing status.json'}, "
               "not completed; only completed runs (or the completed categories of a category=all run that "
               "failed in another) can be used for inference")
    if state not in (COMPLETED, FAILED):
        raise UserError(refused)
    trust.confined(run_dir.root, run_dir.report.name, str(run_dir.report))
    if state == FAILED and not run_dir.report.exists():
        raise UserError(refused)
    report = trust.read_json_file(held.path / run_dir.report.name, follow=False)
    if not isinstance(report, dict):
        raise UserError(f"{run_dir.report}: expected a JSON object")
    failed = report.get("failed_categories") if state == FAILED else {}
    if not isinstance(failed, dict) or (state == FAILED and (not failed or report.get("status") != FAILED)):
        raise UserError(refused)  # failed as a whole: nothing in it is a finished category
    version = trust.schema_version(report.get("schema_version"), str(run_dir.report))
    if version > SCHEMA_VERSION:
        raise UserError(f"{run_dir.report}: schema_version {version} is newer than this pyimgano_hydra "
                        f"understands ({SCHEMA_VERSION}); upgrade pyimgano_hydra")
    if version < SCHEMA_VERSION:
        raise UserError(f"{run_dir.report}: schema_version {version} run dirs are no longer read "
                        f"(this version reads {SCHEMA_VERSION}); re-run the training to get a loadable run dir")
    categories = trust.require(report, "categories", dict, str(run_dir.report))
    try:  # training never writes such a pair; an export of one overwrote the other's
        run_dir.check_categories(list(categories))
    except UserError as exc:
        raise UserError(f"{run_dir.report}: {exc}; not a run training wrote") from None
    inspectors = {}
    for name in failed:
        if name in categories:
            raise UserError(f"{run_dir.report}: category {console_line(str(name))[:80]!r} is listed as both "
                            "completed and failed; not a run training wrote")
    for name, entry in categories.items():
        where = f"{run_dir.report}: categories.{name}"
        inspectors[name] = trust.require(entry, "inspector", (str, type(None)), where)
    return LoadedRun(run_dir, report, inspectors, held, sorted(map(str, failed)))
