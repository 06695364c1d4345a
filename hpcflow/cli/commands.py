"""The sub-commands: each loads what it needs, calls one layer, and prints for people."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hpcflow.cli import EXIT_FAILED, EXIT_OK, EXIT_WALLTIME, print_json
from hpcflow.cli.history import cmd_history as cmd_history
from hpcflow.cli.history import learned_plan
from hpcflow.cli.load import load_plan
from hpcflow.errors import EngineError, SpecError


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.workflow)
    print(f"{args.workflow}: ok: workflow '{plan.workflow}', {plan.n} task(s) in "
          f"{len(plan.groups)} group(s), {plan.n_edges} dependencies")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from hpcflow.plan.analyse import analyse
    from hpcflow.plan.summary import estimates_json, estimates_text, summary_json, summary_text

    declared = load_plan(args.workflow)
    plan, estimates = learned_plan(declared, args)
    analysis = analyse(plan)
    sized = None
    if args.slurm:
        request = learned_plan(declared, args, request=True)[0]
        sized = _slurm_sizing(request, analyse(request), args)
    if args.json:
        data = summary_json(plan, analysis)
        data["estimates"] = estimates_json(estimates)
        if sized:
            from hpcflow.scheduler.slurm.view import sizing_json

            data["slurm"] = {"profile": sized[1], **sizing_json(sized[0])}
        print_json(data)
    else:
        print(summary_text(plan, analysis) + estimates_text(estimates), end="")
        if sized:
            from hpcflow.scheduler.slurm.view import sizing_text

            print(f"\n\nprofile: {sized[1]}\n{sizing_text(sized[0])}", end="")
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    from hpcflow.report import graph

    plan = load_plan(args.workflow)
    render = {"dot": graph.to_dot, "mermaid": graph.to_mermaid, "svg": graph.to_svg}[args.format]
    try:
        text = render(plan, instances=args.instances)
    except (ValueError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"hpcflow graph: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from hpcflow.engine.core import RunOptions
    from hpcflow.engine.launched import choose_engine, launch_rank, mpi_launch
    from hpcflow.engine.runner import EngineConfig, run_workflow
    from hpcflow.engine.walltime import arm

    arm()  # a walltime signal during start-up or shut-down must not kill the run
    if args.workers is not None and args.workers < 1:
        raise EngineError(f"--workers must be at least 1, got {args.workers}")
    engine = choose_engine(args.engine)
    if engine == "mpi" and mpi_launch() is None and args.workers:
        from hpcflow.engine.mpi.launch import relaunch

        return relaunch(sys.argv, args.workers)
    if args.dry_run and not args.resume:
        raise SpecError("--dry-run needs --resume RUN", field="--dry-run")
    workflow = _workflow_argument(args)
    plan = load_plan(workflow)
    if args.dry_run:
        return _resume_dry_run(plan, args)
    config = EngineConfig(
        engine=engine, workers=args.workers,
        gpus=tuple(g for g in args.gpus.split(",") if g), run_dir=args.run_dir,
        runs_root=args.runs_root, spec=_spec_argument(workflow),
        options=RunOptions(keep_going=not args.stop_on_failure, fsync=args.fsync,
                           isolate=args.isolate),
        resume=_run_folder(args.resume) if args.resume else None, force=tuple(args.force),
        address=args.address,
        deadline=_parsed_deadline(args.deadline),
        progress=None if args.quiet else _progress_line,
        history=not args.no_history, history_path=args.history,
    )
    result = run_workflow(plan, config)
    code = {"succeeded": EXIT_OK, "walltime": EXIT_WALLTIME}.get(result.status, EXIT_FAILED)
    if launch_rank() != 0:
        return code
    _report(result, args.json)
    return code


def _progress_line(total: int) -> object:
    """The live progress line on stderr (plain periodic lines when it is not a terminal)."""
    from hpcflow.report.progress import Progress

    return Progress(total, sys.stderr)


def _parsed_deadline(value: str | None) -> float | None:
    from hpcflow.model.resources import parse_time

    try:
        return None if value is None else parse_time(value)
    except ValueError as exc:
        raise SpecError(str(exc), field="--deadline") from None


def _workflow_argument(args: argparse.Namespace) -> str:
    """The WF argument; with ``--resume`` it defaults to the spec recorded in run.json."""
    if args.workflow:
        return str(args.workflow)
    if not args.resume:
        raise SpecError("a workflow is required (or --resume RUN)", field="workflow")
    from hpcflow.store.rundir import RunDir

    spec = RunDir.open(_run_folder(args.resume)).read_info().get("spec")
    if not spec:
        raise SpecError(f"run {args.resume} recorded no spec: name the workflow", field="workflow")
    return str(spec)


def _resume_dry_run(plan: Any, args: argparse.Namespace) -> int:
    from hpcflow.engine.runner import resume_preview
    from hpcflow.store.resume import describe

    plan, decision = resume_preview(plan, _run_folder(args.resume), args.force)
    if args.json:
        print_json({"reused": len(decision.reuse),
                    "rerun": {plan.name(i): r for i, r in sorted(decision.reasons.items())}})
    else:
        sys.stdout.write(describe(plan, decision))
    return EXIT_OK


def _report(result: Any, as_json: bool) -> None:
    if as_json:
        print_json({"status": result.status, "run_dir": result.run_dir, "done": result.done,
                    "failed": [{"task": f.task, "error": f.error, "log": f.log}
                               for f in result.failures],
                    "skipped": result.skipped, "elapsed": result.elapsed,
                    "outputs": {k: repr(v) for k, v in result.outputs.items()}})
        return
    print(f"{result.status}: {result.done} task(s) done, {len(result.failures)} failed, "
          f"{result.skipped} not run, in {result.elapsed:.1f} s")
    print(f"run folder: {result.run_dir}")
    for name, value in result.outputs.items():
        text = repr(value)
        print(f"  output {name} = {text if len(text) <= 200 else text[:197] + '...'}")
    for failure in result.failures:
        print(f"  FAILED {failure.task}: {failure.error}", file=sys.stderr)
        if failure.log:
            print(f"         log: {failure.log}", file=sys.stderr)
    if result.status == "walltime":
        print(f"stopped for the allocation's end; continue with: hpcflow run --resume "
              f"{result.run_dir}", file=sys.stderr)
    if result.failures:
        print("Fix the cause (see the logs above), then continue the run: hpcflow run "
              f"--resume {result.run_dir} (finished tasks are reused; add --dry-run to see "
              "what runs again).", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    from hpcflow.report.status import batch_job_state, run_status, status_json, status_text

    status = run_status(_run_folder(args.run), job_state=batch_job_state)
    if args.json:
        print_json(status_json(status))
    else:
        sys.stdout.write(status_text(status))
    return EXIT_FAILED if status.status == "failed" else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from hpcflow.report.html import write_report

    path = write_report(_run_folder(args.run), args.output)
    print(f"report: {path}")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    from hpcflow.report.listing import list_runs, runs_json, runs_text

    runs = list_runs(args.runs_root)
    if args.json:
        print_json(runs_json(runs))
    else:
        sys.stdout.write(runs_text(runs))
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    from hpcflow.report.trace import iter_rows, write_rows, write_trace

    if args.output == "-":
        write_rows(iter_rows(_run_folder(args.run)), sys.stdout)
    else:
        print(f"trace: {write_trace(_run_folder(args.run), args.output)}")
    return EXIT_OK


def _run_folder(name: str) -> str:
    """``name`` as given, or the run of that name under the runs root (as ``run`` makes them)."""
    if Path(name).exists():
        return name
    for root in (os.environ.get("HPCFLOW_RUNS"), "hpcflow-runs"):
        if root and (Path(root) / name).is_dir():
            return str(Path(root) / name)
    return name


def _slurm_sizing(plan: Any, analysis: Any, args: argparse.Namespace) -> tuple[Any, str, Any]:
    """The sizing of ``plan`` under the options of ``plan --slurm`` / ``submit``, where the
    profile came from, and the profile."""
    from hpcflow.scheduler.slurm.profile import resolve_profile
    from hpcflow.scheduler.slurm.sizing import size

    profile, source = resolve_profile(args.profile)
    return size(plan, analysis, profile, _overrides(args)), source, profile


def _overrides(args: argparse.Namespace) -> Any:
    from hpcflow.model.resources import parse_memory, parse_time
    from hpcflow.scheduler.slurm.sizing import Overrides

    def parsed(name: str, parse: Any) -> Any:
        value = getattr(args, name)
        try:
            return None if value is None else parse(value)
        except ValueError as exc:
            raise SpecError(str(exc), field=f"--{name.replace('_', '-')}") from None

    for name in ("nodes", "ntasks", "ntasks_per_node", "cpus_per_task"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SpecError("must be at least 1", field=f"--{name.replace('_', '-')}")
    no_time = (args.time or "").strip().lower() == "none"
    return Overrides(
        partition=args.partition, nodes=args.nodes, ntasks=args.ntasks,
        ntasks_per_node=args.ntasks_per_node,
        cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node,
        memory=parsed("mem", parse_memory), time=None if no_time else parsed("time", parse_time),
        no_time=no_time, deadline=parsed("deadline", parse_time), engine=args.engine)


def _spec_argument(target: str) -> str:
    """The workflow argument with its file made absolute (the job may start elsewhere)."""
    path, sep, name = target.partition(":") if ".py:" in target else (target, "", "")
    return str(Path(path).resolve()) + sep + name


def cmd_submit(args: argparse.Namespace) -> int:
    from hpcflow.plan.analyse import analyse
    from hpcflow.scheduler.slurm import submit as slurm
    from hpcflow.scheduler.slurm.view import sizing_json, sizing_text

    workflow = _workflow_argument(args)
    plan = load_plan(workflow)
    learned, _ = learned_plan(plan, args, request=True)
    left = _left_to_run(learned, args) if args.resume else learned
    sizing, source, profile = _slurm_sizing(left, analyse(left), args)
    request = slurm.Request(spec=_spec_argument(workflow), account=args.account, qos=args.qos,
                            constraint=args.constraint, engine=args.engine, python=args.python,
                            test_only=not args.no_test_only)
    if not args.json:
        print(f"profile: {source}\n{sizing_text(sizing)}", end="", file=sys.stderr)
    if args.force and not args.resume:
        raise SpecError("--force needs --resume RUN (a new run runs every task anyway)",
                        field="--force")
    if args.dry_run:
        run_dir = (str(Path(_run_folder(args.resume)).resolve()) if args.resume else
                   slurm.planned_run_dir(plan.workflow, args.runs_root, args.run_dir))
        text, checked = slurm.dry_run(plan, sizing, profile, request, run_dir)
        sys.stdout.write(text)
        print(f"sbatch --test-only: {checked}" if checked else
              "not checked with sbatch --test-only (disabled, or no sbatch here)", file=sys.stderr)
        return EXIT_OK
    if args.resume:
        done = slurm.resubmit(plan, sizing, profile, request, _run_folder(args.resume),
                              force=args.force)
    else:
        done = slurm.submit(plan, sizing, profile, request, runs_root=args.runs_root,
                            run_dir=args.run_dir)
    if args.json:
        print_json({"job_id": done.job_id, "run_dir": done.run_dir, "script": done.script,
                    "checked": done.checked, "sizing": sizing_json(sizing)})
        return EXIT_OK
    if done.checked:
        print(f"sbatch --test-only: {done.checked}", file=sys.stderr)
    print(f"submitted batch job {done.job_id}\nrun folder: {done.run_dir}\n"
          f"follow it: hpcflow status {done.run_dir}   cancel: hpcflow cancel {done.run_dir}")
    return EXIT_OK


def _left_to_run(plan: Any, args: argparse.Namespace) -> Any:
    """For sizing a resubmission: the plan with the tasks a resume reuses taking no time,
    so the job asks for what is left (its script still runs the whole plan)."""
    import dataclasses

    import numpy as np

    from hpcflow.engine.runner import resume_preview

    _, decision = resume_preview(plan, _run_folder(args.resume), args.force)
    time = np.asarray(plan.time, dtype=np.float64).copy()
    time[list(decision.reuse)] = 0.0
    return dataclasses.replace(plan, time=time)


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpcflow.scheduler.slurm.follow import cancel_job
    from hpcflow.store.rundir import RunDir

    info = RunDir.open(_run_folder(args.run)).read_info()
    said = cancel_job(info)
    print(f"job {info.get('slurm_job_id')}: {said}")
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace) -> int:
    from hpcflow.scheduler.slurm.profile import discover

    if args.cluster_command == "wait":
        return _cluster_wait(args)
    if args.cluster_command == "stop":
        from hpcflow.scheduler.slurm import ready

        ready.stop_dask(args.scheduler_file, args.timeout)
        return EXIT_OK
    text = discover(name=args.name).to_yaml()
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: review it (set-up lines, account, memory and GPU style)")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cluster_wait(args: argparse.Namespace) -> int:
    """``hpcflow cluster wait dask|ray``: the address on stdout once the cluster is up."""
    from hpcflow.scheduler.slurm import ready

    watch = ready.parse_watch(args.watch)
    if args.engine == "dask":
        if not args.scheduler_file:
            raise SpecError("dask needs --scheduler-file", field="--scheduler-file")
        address = ready.wait_dask(args.scheduler_file, args.workers, args.timeout, watch)
    elif args.temp_dir:
        address = ready.ray_head(args.temp_dir, args.timeout, watch)
    elif args.address:
        address = ready.wait_ray(args.address, args.nodes, args.timeout, watch)
    else:
        raise SpecError("ray needs --temp-dir (the head's address) or --address", field="--address")
    print(address, flush=True)
    return EXIT_OK
