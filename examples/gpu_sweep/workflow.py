"""The GPU sweep with the Python API: the same workflow as workflow.yaml.

    hpcflow run --gpus 0,1 examples/gpu_sweep/workflow.py      # through the CLI
    python examples/gpu_sweep/workflow.py                      # as a script
"""

from __future__ import annotations

import sys
from pathlib import Path

import hpcflow as hf

sys.path.insert(0, str(Path(__file__).parent))
import model

train = hf.task(model.train, cores=1, gpus=1, memory="200M", time="10s")
pick_best = hf.task(model.pick_best, name="best", cores=1, memory="200M", time="10s")

runs = train.sweep({"lr": [0.01, 0.03, 0.1, 0.3], "seed": range(2)})
wf = hf.workflow("gpu-sweep", outputs={"best": pick_best(runs), "devices": runs["device"]})

if __name__ == "__main__":
    result = hf.run(wf, gpus=("0", "1"))
    print(result.outputs["best"])
    print("devices:", result.outputs["devices"])
