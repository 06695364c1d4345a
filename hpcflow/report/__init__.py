"""Report layer: what a run looks like to people — the live progress line, ``hpcflow
status``, the self-contained HTML report (timeline, utilization, task table, DAG) and
graph export (DOT, Mermaid, SVG). It only reads the run folder and journal."""
