"""A cluster profile: what the site offers and how it wants to be asked.

One pydantic model is the single source of truth for the YAML file (``examples/
clusters/*.yaml``), its validation and its error messages. A profile holds:

- partitions, each with its node shape (cores, memory, GPUs per node), node count and
  maximum wall time: what :mod:`.sizing` simulates on;
- ``defaults``: partition, account, QoS, constraint, and set-up commands (``module
  load ...``) and environment variables for the job's body;
- the site's dialect: memory as ``--mem`` / ``--mem-per-cpu`` / ``--mem-per-gpu``, GPUs
  as ``--gpus`` / ``--gpus-per-node`` / ``--gres=gpu:N``, whether ``--time`` is
  mandatory, the launcher (``srun``, with ``--mpi=pmi2`` by default, or ``mpiexec``);
- the sizing margin and the USR1 grace time.

Every value that will reach an ``#SBATCH`` directive is checked here, when the file is
read, with the same allow-lists the script writer applies again (:mod:`.safety`).
:func:`discover` builds a profile from ``scontrol show partition -o`` and ``sinfo``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpcflow.errors import Location
from hpcflow.model.resources import format_memory, format_slurm_time, parse_memory, parse_time
from hpcflow.scheduler.slurm._cmd import Runner, run_slurm
from hpcflow.scheduler.slurm.errors import ProfileError
from hpcflow.scheduler.slurm.safety import check_directive, check_env_name, split_command

_MAX_FILE = 1 << 20
PROFILE_ENV = "HPCFLOW_SLURM_PROFILE"
USER_PROFILE = Path("~/.config/hpcflow/slurm.yaml")


def _directive(name: str) -> AfterValidator:
    return AfterValidator(lambda value: check_directive(name, value))


PartitionName = Annotated[str, _directive("partition")]
Account = Annotated[str, _directive("account")]
Qos = Annotated[str, _directive("qos")]
Constraint = Annotated[str, _directive("constraint")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Partition(_Model):
    """One partition and the shape of its nodes (the smallest, where they differ)."""

    name: PartitionName
    nodes: int = Field(ge=1, description="Nodes in the partition (the most one job may get).")
    cores_per_node: int = Field(ge=1)
    memory_per_node: str = Field(description="Memory a job may use per node: '9000M', '256G'.")
    gpus_per_node: int = Field(0, ge=0)
    max_time: str | None = Field(None, description="MaxTime: 'HH:MM:SS', 'D-HH:MM:SS'; null: none.")
    whole_nodes: bool = Field(False, description=(
        "The site allocates (and charges) whole nodes here: `scontrol show partition` says "
        "OverSubscribe=EXCLUSIVE, or the site's docs say nodes are not shared. The sizing "
        "then takes every core of each node and counts cost in node-hours."))

    @field_validator("memory_per_node", mode="before")
    @classmethod
    def _memory_number(cls, value: Any) -> Any:
        """A bare number is megabytes, as in ``sbatch --mem``."""
        return f"{value}M" if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("max_time", mode="before")
    @classmethod
    def _time_number(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted ``10:00:00`` as the number 36000: that many seconds."""
        if isinstance(value, int) and not isinstance(value, bool):
            return format_slurm_time(value)
        return value

    @field_validator("memory_per_node")
    @classmethod
    def _memory(cls, value: str) -> str:
        if parse_memory(value) <= 0:
            raise ValueError("must be more than 0")
        return value

    @field_validator("max_time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in ("UNLIMITED", "INFINITE"):
            parse_time(value)
        return value

    @property
    def memory(self) -> int:
        """Bytes per node."""
        return parse_memory(self.memory_per_node)

    @property
    def max_seconds(self) -> float | None:
        if self.max_time is None or self.max_time.upper() in ("UNLIMITED", "INFINITE"):
            return None
        return parse_time(self.max_time)

    def shape(self) -> str:
        gpus = f", {self.gpus_per_node} GPUs" if self.gpus_per_node else ""
        return f"{self.cores_per_node} cores, {format_memory(self.memory)} memory{gpus}"


class Defaults(_Model):
    """What every job of this site gets unless an option says otherwise."""

    partition: PartitionName | None = None
    account: Account | None = None
    qos: Qos | None = None
    constraint: Constraint | None = None
    setup: list[str] = Field(default_factory=list, description=(
        "Commands run before the launch, e.g. 'module load python/3.11'. Each is split into "
        "words and each word quoted: no $(), ;, pipes. Source a file for shell logic."))
    env: dict[str, str] = Field(default_factory=dict, description="Exported (values quoted).")

    @field_validator("setup")
    @classmethod
    def _setup(cls, lines: list[str]) -> list[str]:
        for k, line in enumerate(lines):
            split_command(line, f"defaults.setup[{k}]")
        return lines

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            check_env_name(name, f"defaults.env.{name}")
        return env


class Profile(_Model):
    """A cluster profile (see the module docstring)."""

    name: str = Field("cluster", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    partitions: list[Partition] = Field(min_length=1)
    defaults: Defaults = Field(default_factory=Defaults)
    memory: Literal["mem", "mem-per-cpu", "mem-per-gpu"] = "mem"
    gpus: Literal["gpus", "gpus-per-node", "gres"] = "gpus-per-node"
    time_required: bool = Field(True, description="The site rejects jobs without --time.")
    launcher: Literal["srun", "mpiexec"] = "srun"
    srun_mpi: str | None = Field("pmi2", pattern=r"^[A-Za-z0-9_]+$",
                                 description="srun --mpi=...; null: the site's MpiDefault.")
    mpiexec: str = Field("mpiexec", min_length=1)
    python: str | None = Field(None, description="Interpreter in the job; null: the one "
                               "running hpcflow submit.")
    engine: Literal["mpi", "local", "dask", "ray"] = Field("mpi", description=(
        "Engine inside the job: mpi (srun or mpiexec), local (one node), or dask / ray (the "
        "script starts that cluster across the allocation first)."))
    cluster_start_timeout: int = Field(300, ge=10, le=3600, description=(
        "dask / ray: seconds for the scheduler or head and every worker to join; else the "
        "job stops before the run."))
    signal_grace: int = Field(120, ge=10, le=3600, description=(
        "The most seconds before the limit that USR1 is asked for; the sizing asks for less "
        "when the tasks are short (their longest estimate + the stop grace)."))
    margin_fraction: float = Field(0.10, ge=0, le=10, description=(
        "Safety margin on the predicted makespan in the requested time: this fraction of it, "
        "or margin_seconds, whichever is more."))
    margin_seconds: int = Field(30, ge=0, description=(
        "The smallest safety margin, in seconds (see margin_fraction)."))
    startup_seconds: int = Field(15, ge=0, le=3600, description=(
        "What the job spends before the first task starts (launch, imports, MPI start-up)."))
    tolerance: float = Field(0.05, ge=0, le=1, description=(
        "The sizing takes the cheapest candidate whose predicted makespan is within this "
        "fraction of the fastest candidate's."))
    test_only: bool = Field(True, description="Check requests with sbatch --test-only first.")

    def partition(self, name: str | None = None) -> Partition:
        """The partition called ``name``, else the default one, else the first."""
        wanted = name or self.defaults.partition
        if wanted is None:
            return self.partitions[0]
        for part in self.partitions:
            if part.name == wanted:
                return part
        known = ", ".join(p.name for p in self.partitions)
        raise ProfileError(f"no partition '{wanted}' in profile '{self.name}' (known: {known})",
                           field="partition")

    def to_yaml(self) -> str:
        head = (f"# hpcflow cluster profile '{self.name}' (docs/architecture.md, \"Slurm\").\n"
                "# memory: mem | mem-per-cpu | mem-per-gpu; gpus: gpus | gpus-per-node | gres;\n"
                "# launcher: srun (srun_mpi: pmi2 suits the mpich wheel) | mpiexec;\n"
                "# engine: mpi | local | dask | ray.\n")
        return head + yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """A profile from YAML; errors name the file, the line and the field."""
    file = Path(path)
    try:
        raw = file.read_bytes()[: _MAX_FILE + 1]
    except OSError as exc:
        raise ProfileError(f"cannot read the cluster profile: {exc.strerror}",
                           location=Location(str(file))) from None
    if len(raw) > _MAX_FILE:
        raise ProfileError("the cluster profile is over 1 MiB", location=Location(str(file)))
    text = raw.decode("utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ProfileError(f"not valid YAML: {getattr(exc, 'problem', exc)}",
                           location=Location(str(file), line + 1 if line is not None else None)) from None
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise _profile_error(exc, text, str(file)) from None


def _profile_error(exc: ValidationError, text: str, file: str) -> ProfileError:
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    message = str(first["msg"]).removeprefix("Value error, ")
    return ProfileError(message, field=field or None,
                        location=Location(file, _line_of(text, loc)))


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or its nearest existing parent)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        node = _child(node, part)
    return node.start_mark.line + 1 if node is not None else line


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        return next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None


def resolve_profile(path: str | None = None) -> tuple[Profile, str]:
    """The profile to use and where it came from: ``path``, ``$HPCFLOW_SLURM_PROFILE``,
    ``~/.config/hpcflow/slurm.yaml``, else discovered from the cluster."""
    for candidate, source in ((path, "--profile"), (os.environ.get(PROFILE_ENV), PROFILE_ENV)):
        if candidate:
            return load_profile(candidate), f"{candidate} ({source})"
    user = USER_PROFILE.expanduser()
    if user.is_file():
        return load_profile(user), str(user)
    return discover(), "discovered from the cluster (save it: hpcflow cluster discover -o FILE)"


def discover(run: Runner = run_slurm, name: str = "cluster") -> Profile:
    """A profile from what the cluster says: ``scontrol show partition -o`` (names, max
    time, node count, default, ``OverSubscribe=EXCLUSIVE``: whole nodes), ``sinfo`` (node
    shapes: the smallest where they differ) and ``scontrol show config`` (cons_tres or
    not: how to ask for GPUs; ``select/linear``: whole nodes everywhere)."""
    parts = _partition_records(run(["scontrol", "show", "partition", "-o"]).stdout)
    shapes = _node_shapes(run(["sinfo", "-h", "-o", "%R|%c|%m|%G"]).stdout)
    config = dict(_pairs(run(["scontrol", "show", "config"]).stdout.replace(" = ", "=")))
    partitions, default = [], None
    exclusive = config.get("SelectType", "").endswith("linear")  # whole nodes, always
    for rec in parts:
        shape = shapes.get(rec.get("PartitionName", ""))
        if shape is None or not _is_plain_name(rec["PartitionName"]):
            continue
        max_time = rec.get("MaxTime", "UNLIMITED")
        partitions.append(Partition(
            name=rec["PartitionName"], nodes=max(1, int(rec.get("TotalNodes", "1") or 1)),
            cores_per_node=shape[0], memory_per_node=f"{shape[1]}M", gpus_per_node=shape[2],
            max_time=None if max_time.upper() in ("UNLIMITED", "INFINITE") else max_time,
            whole_nodes=rec.get("OverSubscribe", "").upper().startswith("EXCLUSIVE")
            or exclusive))
        if rec.get("Default") == "YES":
            default = rec["PartitionName"]
    if not partitions:
        raise ProfileError("the cluster reported no partition hpcflow can use "
                           "(scontrol show partition / sinfo gave none with nodes)")
    gpus = "gres" if config.get("SelectType", "").endswith("cons_res") else "gpus-per-node"
    return Profile(name=name, partitions=partitions, defaults=Defaults(partition=default), gpus=gpus)


def _pairs(text: str) -> list[tuple[str, str]]:
    return [tuple(word.split("=", 1)) for line in text.splitlines()  # type: ignore[misc]
            for word in line.split() if "=" in word]


def _partition_records(text: str) -> list[dict[str, str]]:
    return [dict(_pairs(line)) for line in text.splitlines() if "PartitionName=" in line]


def _node_shapes(text: str) -> dict[str, tuple[int, int, int]]:
    """Per partition, the smallest (cores, memory MB, GPUs) over its node groups."""
    shapes: dict[str, tuple[int, int, int]] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        try:
            shape = (int(fields[1].rstrip("+")), int(fields[2].rstrip("+")), _gpu_count(fields[3]))
        except ValueError:
            continue
        old = shapes.get(fields[0])
        shapes[fields[0]] = shape if old is None else tuple(map(min, old, shape))  # type: ignore[assignment]
    return shapes


def _gpu_count(gres: str) -> int:
    """GPUs in a gres string: ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:2,mps:100``."""
    total = 0
    for part in gres.split(","):
        part = part.split("(")[0]
        if part.startswith("gpu:"):
            count = part.rsplit(":", 1)[-1]
            total += int(count) if count.isdigit() else 0
    return total


def _is_plain_name(name: str) -> bool:
    try:
        check_directive("partition", name)
    except ValueError:
        return False
    return True
