"""The sweep example written with the Python API: the same workflow as workflow.yaml.

    hpcflow run examples/sweep/workflow.py        # through the CLI
    python examples/sweep/workflow.py             # or as a script (local engine)
    mpiexec -n 3 python examples/sweep/workflow.py --engine mpi
"""

from __future__ import annotations

import sys
from pathlib import Path

import hpcflow as hf

sys.path.insert(0, str(Path(__file__).parent))
import model

defaults = {"cores": 1, "memory": "200M", "time": "30s"}
make_grid = hf.task(model.make_grid, name="grid", **defaults)
simulate = hf.task(model.simulate, retries=1, **{**defaults, "time": "1m"})
mean_of = hf.task(model.mean_of, name="mean", **defaults)
spread_of = hf.task(model.spread_of, name="spread", **defaults)
to_csv = hf.task(model.to_csv, name="table", **defaults)
rank = hf.shell(
    "printf '%s' {csv} > {all}; tail -n +2 {all} | sort -t, -k3 -g | head -n 3 > {fastest}",
    outputs={"all": "runs.csv", "fastest": "fastest.csv"}, name="rank", **defaults,
)

# The reusable sub-workflow: its input is a parameter, filled where it is used.
values = hf.param("values")
field = hf.param("field")
stats = hf.workflow(
    "stats",
    outputs={"mean": mean_of(values=values, field=field),
             "spread": spread_of(values=values, field=field)},
    inputs={"values": hf.REQUIRED, "field": "settle_time"},
)

grid = make_grid(points=2000, t_end=10.0)
runs = simulate.sweep({"damping": [0.2, 0.4, 0.8, 1.6], "seed": range(3)}, grid=grid)
summary = hf.nested(stats, name="stats", values=runs)
table = to_csv(results=runs, mean_settle=summary["mean"])
ranked = rank(csv=table)

wf = hf.workflow("oscillator-sweep", outputs={
    "mean_settle_time": summary["mean"], "spread": summary["spread"], "fastest": ranked["fastest"],
})

if __name__ == "__main__":
    engine = sys.argv[sys.argv.index("--engine") + 1] if "--engine" in sys.argv else "local"
    result = hf.run(wf, engine=engine)
    print(result.status, result.outputs)
