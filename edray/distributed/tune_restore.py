"""Make a killed sweep's Tune experiment restorable: no trial points at a deleted checkpoint.

Why. Tune keeps ``num_to_keep`` checkpoints per trial and deletes the older ones as soon
as it registers a new one, but it writes the experiment state (which names each trial's
latest checkpoint) a moment later, and uploads it in the background. A driver killed in
between leaves a state that names a checkpoint no longer on storage, and
``Tuner.restore`` then fails that trial for good ("Could not recover from checkpoint as
it does not exist on storage anymore"): seen here when a sweep was killed right after a
trial's second epoch.

What this does. Before restoring, each trial's checkpoint named by the newest state file
is looked up; where it is missing, the trial's next checkpoint on storage (the one whose
registration deleted it: Tune had already processed, and logged, that epoch's result) is
copied to the missing name, so the trial resumes after that epoch. The state is only
read, never rewritten, and parsed without unpickling (``pickletools`` reads the strings
of Tune's pickled checkpoint manager); a format this does not recognise is left to Tune
as before.
"""

from __future__ import annotations

import json
import pickletools
import re
from pathlib import PurePosixPath

import pyarrow.fs as pafs

__all__ = ["repair_missing_checkpoints"]

_CHECKPOINT = re.compile(r"checkpoint_(\d{6})$")


def _referenced(manager: object) -> set[str]:
    """Names ``<trial dir>/checkpoint_NNNNNN`` in one trial's pickled checkpoint manager."""
    if not isinstance(manager, dict) or not isinstance(manager.get("value"), str):
        return set()
    try:
        data = bytes.fromhex(manager["value"])
        strings = [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    except (ValueError, EOFError):  # not a pickle this can read
        return set()
    out = set()
    for s in strings:
        path = PurePosixPath(s)
        if _CHECKPOINT.search(path.name) and path.parent.name:
            out.add(f"{path.parent.name}/{path.name}")
    return out


def _state_files(fs: pafs.FileSystem, experiment: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(experiment, allow_not_found=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File and i.base_name.startswith("experiment_state-")
                   and i.base_name.endswith(".json")), key=lambda i: i.base_name)


def _checkpoints(fs: pafs.FileSystem, trial_dir: str) -> set[int]:
    """The indices of the trial's checkpoints that hold files, from one listing of its directory.
    On S3 an empty checkpoint directory (a marker, as an upload or a delete cut short leaves)
    reads as a directory, and restores as nothing: it does not count."""
    root = trial_dir.rstrip("/") + "/"
    held = set()
    for info in fs.get_file_info(pafs.FileSelector(trial_dir, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.path.startswith(root):
            match = _CHECKPOINT.search(info.path[len(root):].split("/")[0])
            if match:
                held.add(int(match.group(1)))
    return held


def repair_missing_checkpoints(fs: pafs.FileSystem, experiment: str) -> list[str]:
    """Copy the next checkpoint over each missing (or empty) one the experiment state names.

    Args:
        fs, experiment: the Tune experiment directory (``storage_path/name``) and its filesystem.

    Returns:
        ``<trial dir>/checkpoint_NNNNNN`` of each checkpoint put back.
    """
    states = _state_files(fs, experiment)
    if not states:
        return []
    with fs.open_input_stream(states[-1].path) as f:
        try:
            trial_data = json.loads(f.read()).get("trial_data", [])
        except (json.JSONDecodeError, AttributeError):
            return []
    repaired = []
    held: dict[str, set[int]] = {}  # trial dir -> its checkpoints that hold files
    for item in trial_data:
        try:
            if json.loads(item[0]).get("status") == "TERMINATED":
                continue  # a finished trial is never restored from its checkpoints: no storage calls
            manager = json.loads(item[1]).get("checkpoint_manager")
        except (IndexError, TypeError, json.JSONDecodeError, AttributeError):
            continue
        for ref in sorted(_referenced(manager)):
            trial, name = ref.split("/")
            trial_dir = f"{experiment.rstrip('/')}/{trial}"
            if trial_dir not in held:
                held[trial_dir] = _checkpoints(fs, trial_dir)
            match = _CHECKPOINT.search(name)
            assert match is not None  # _referenced keeps only names that match
            index = int(match.group(1))
            if index in held[trial_dir]:
                continue
            later = sorted(i for i in held[trial_dir] if i > index)
            if not later:
                continue  # nothing to resume from: Tune restarts or fails the trial as before
            fs.create_dir(f"{trial_dir}/{name}", recursive=True)
            pafs.copy_files(f"{trial_dir}/checkpoint_{later[0]:06d}", f"{trial_dir}/{name}",
                            source_filesystem=fs, destination_filesystem=fs)
            held[trial_dir].add(index)
            repaired.append(ref)
    return repaired
