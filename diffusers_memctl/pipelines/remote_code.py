"""Signal run folders that load with diffusers alone: the pipeline and UNet modules as diffusers remote code.

diffusers loads a custom component from a repository when `model_index.json` names a module file that the repository
holds (`"unet": ["unet_1d_memctl", "UNet1DMemCtlModel"]` with `unet/unet_1d_memctl.py`), and a custom pipeline class
from a file named by `custom_pipeline` (`pipeline_ddpm_1d.py` at the root); the user opts in with
`trust_remote_code=True`:

    DiffusionPipeline.from_pretrained(run, custom_pipeline="pipeline_ddpm_1d", trust_remote_code=True)

`_class_name` stays the plain string `"DDPM1DPipeline"`: a list there would make diffusers run the folder's copy of
the pipeline even for `DDPM1DPipeline.from_pretrained(run)` inside this package. Both files are verbatim copies of this package's own modules (they import only torch and
diffusers), so there is one source of truth and nothing to drift.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..models import unet_1d_memctl
from ..run_folder import MODEL_INDEX_NAME, UNET_DIR, write_text_atomic
from . import pipeline_ddpm_1d

__all__ = ["REMOTE_PIPELINE_FILE", "REMOTE_UNET_FILE", "write_remote_code"]

#: Where a run folder holds the copies (relative to the folder).
REMOTE_PIPELINE_FILE = "pipeline_ddpm_1d.py"
REMOTE_UNET_FILE = f"{UNET_DIR}/unet_1d_memctl.py"


def write_remote_code(folder: str | Path) -> None:
    """Copy the pipeline and UNet modules into a saved signal pipeline and point `model_index.json` at them.

    Args:
        folder (`str` or `Path`): A folder written by `DDPM1DPipeline.save_pretrained`.
    """
    folder = Path(folder)
    shutil.copyfile(pipeline_ddpm_1d.__file__, folder / REMOTE_PIPELINE_FILE)
    shutil.copyfile(unet_1d_memctl.__file__, folder / REMOTE_UNET_FILE)
    index_file = folder / MODEL_INDEX_NAME
    index = json.loads(index_file.read_text())
    index[UNET_DIR] = [Path(REMOTE_UNET_FILE).stem, "UNet1DMemCtlModel"]
    write_text_atomic(index_file, json.dumps(index, indent=2, sort_keys=True) + "\n")
