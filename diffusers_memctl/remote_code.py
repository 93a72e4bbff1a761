"""Custom code that 1D run folders carry, so plain diffusers loads them with `trust_remote_code=True`.

diffusers loads a pipeline whose `model_index.json` names `["pipeline", "<Class>"]` from the folder's `pipeline.py`,
and a component whose entry names `["<module>", "<Class>"]` from `<component>/<module>.py` (both only with
`trust_remote_code=True`). A 1D run folder therefore holds

- `pipeline.py`: the source of `diffusers_memctl.pipelines.pipeline_ddpm_1d`, byte for byte;
- `unet/unet_1d_memctl.py`: the source of `diffusers_memctl.models.unet_1d_memctl`, byte for byte;

and `model_index.json` points at them. Both modules import only diffusers, torch and NumPy, so the copies are the
package's own source (one source of truth) and run where diffusers-memctl is not installed:

```python
from diffusers import DiffusionPipeline

pipeline = DiffusionPipeline.from_pretrained("runs/ecg-x", trust_remote_code=True)
signals = pipeline(batch_size=4).signals  # (4, 1, 140)
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .models import unet_1d_memctl
from .pipelines import pipeline_ddpm_1d
from .run_folder import write_json_atomic, write_text_atomic

__all__ = ["PIPELINE_FILE", "UNET_MODULE", "remote_code_files", "write_remote_code"]

#: File diffusers reads a custom pipeline class from (`diffusers.pipelines.pipeline_loading_utils`).
PIPELINE_FILE = "pipeline.py"
#: Module name of the 1D U-Net inside the run's `unet/` folder.
UNET_MODULE = "unet_1d_memctl"


def remote_code_files() -> dict[str, str]:
    """The custom-code files of a 1D run folder, by path relative to the folder, read from the package's source."""
    return {
        PIPELINE_FILE: Path(pipeline_ddpm_1d.__file__).read_text(encoding="utf-8"),
        f"unet/{UNET_MODULE}.py": Path(unet_1d_memctl.__file__).read_text(encoding="utf-8"),
    }


def write_remote_code(run_dir: str | os.PathLike) -> None:
    """Write the custom-code files into a saved 1D pipeline folder and point its `model_index.json` at them.

    Args:
        run_dir (`str` or `os.PathLike`): A folder written by `DDPM1DPipeline.save_pretrained`.
    """
    run_dir = Path(run_dir)
    for relative, source in remote_code_files().items():
        write_text_atomic(run_dir / relative, source)
    index_path = run_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [Path(PIPELINE_FILE).stem, pipeline_ddpm_1d.DDPM1DPipeline.__name__]
    index["unet"] = [UNET_MODULE, unet_1d_memctl.UNet1DMemCtlModel.__name__]
    write_json_atomic(index_path, index)
