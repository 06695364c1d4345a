# hpcflow for containerized MPI testing: Python 3 venv with the project and its
# test + mpich extras, the tests and examples, and a one-node Slurm installed by
# slurm/install.sh (started at run time by start-and-run, never at build time).
#
#   docker build -t hpcflow-mpi .                       # or: podman build ...
#   docker run --rm hpcflow-mpi                          # the example under mpiexec -n 3
#   docker run --rm hpcflow-mpi start-and-run sbatch --wait --wrap 'srun -n 2 hostname'
#
# Generic on purpose: no registry, mirror, proxy or CA of any site is named here.
#   --build-arg BASE=...      another Debian-like base (a local mirror of debian:bookworm)
#   --secret id=pipcert,src=CA.pem --build-arg PIP_CERT=/run/secrets/pipcert
#                             a CA bundle pip needs behind a TLS-intercepting proxy;
#                             it is mounted for the pip steps only, never stored.
# RUN --mount needs BuildKit (docker's default builder) or podman/buildah.
# containers/README.md has the details; containers/build-and-test.sh the recipe.
ARG BASE=debian:bookworm
FROM ${BASE}

# ARG, not ENV: only the build is non-interactive.
ARG DEBIAN_FRONTEND=noninteractive
WORKDIR /opt/hpcflow

# Slurm through the project's own installer, before the source is copied, so
# that this (slowest, rarely changing) layer survives code changes. No
# accounting: slurmdbd + MariaDB would double the image. No munge key in the
# image: install.sh makes one, we delete it, start.sh makes a fresh one in
# each container. tini reaps the daemons' orphans when PID 1 is a test.
COPY slurm/install.sh slurm/common.sh slurm/
RUN bash slurm/install.sh --no-accounting \
 && apt-get install -y -q --no-install-recommends python3 python3-venv tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /etc/munge/munge.key

ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# Optional CA bundle for pip: a path that exists only during the build (a
# build secret or a read-only mount). Empty = pip's own trust store.
ARG PIP_CERT=
# Dependencies first, read from pyproject.toml alone: a change to the code
# then reuses this layer and only the project itself is reinstalled.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pipcert python3 -m venv /opt/venv \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; print('\n'.join(p['dependencies'] + x['test'] + x['mpich']))" >/tmp/deps.txt \
 && PIP_CERT="$PIP_CERT" pip install --no-cache-dir -r /tmp/deps.txt \
 && rm /tmp/deps.txt

COPY . .
RUN --mount=type=secret,id=pipcert PIP_CERT="$PIP_CERT" pip install --no-cache-dir '.[test,mpich]' \
 && rm -rf build ./*.egg-info \
 && ln -s /opt/hpcflow/containers/start-and-run /usr/local/bin/start-and-run

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["mpiexec", "-n", "3", "hpcflow", "run", "--engine", "mpi", "examples/sweep/workflow.yaml"]
