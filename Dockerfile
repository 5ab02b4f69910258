# feedline's image, for the head, the cpu-pool and (with the GPU base) the gpu group of k8s/.
#   docker build -t feedline:dev .                                          # CPU (head, pool)
#   docker build --build-arg BASE=rayproject/ray:2.60.0-py311-gpu -t feedline-gpu:dev .
# Based on the official Ray 2.60 Python 3.11 images (user `ray`, uid 1000, gid 100), so the Ray
# version in the cluster matches the `ray` pinned in pyproject.toml. The project lives in
# /home/ray/feedline: the RayJob runs `python /home/ray/feedline/jobs/train_resnet.py`.
ARG BASE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE}
ARG BASE

# CPU images take the CPU build of torch (the default wheel index would pull CUDA libraries a
# pool node never uses); GPU images the default CUDA build.
ARG TORCH_INDEX=
WORKDIR /home/ray/feedline
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 pipelines ./pipelines
COPY --chown=1000:100 cluster ./cluster
RUN if [ -z "$TORCH_INDEX" ] && [ "${BASE%-gpu}" = "$BASE" ]; then \
        TORCH_INDEX=https://download.pytorch.org/whl/cpu; fi; \
    pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url $TORCH_INDEX} . \
    && python -c "import ray, torch, torchvision, pipelines, cluster; assert ray.__version__ == '2.60.0', ray.__version__"
COPY --chown=1000:100 jobs ./jobs
COPY --chown=1000:100 dashboards ./dashboards

USER 1000
ENV PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/cache
# The numba kernels of the fast path, compiled into the image: pool actors load them (~0.3 s)
# instead of compiling them (~10 s per process). pipelines.numba_cache reads this variable.
ENV FEEDLINE_CACHE_DIR=/home/ray/.cache/feedline
RUN python -m pipelines.kernels --warm
