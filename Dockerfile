# The GPU worker image: sweep on the CUDA build of PyTorch that the base image ships.
#
#   docker build -t sweep .
#   docker run --rm --gpus all -e SWEEP_STORAGE sweep worker lr-freeze --gpus all
#
# The dependency layer comes before the source, so editing sweep/ does not reinstall dependencies.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/sweep

# 1. Dependencies, read from pyproject.toml (plus the PostgreSQL driver, boto3 for s3:// artifacts and
#    the trackers a study's [tracking] may name: workers log to them). The constraint file pins the base
#    image's torch/torchvision, so pip never swaps them for a multi-GB download from PyPI.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres'] + p['optional-dependencies']['s3'] \
+ p['optional-dependencies']['mlflow'] + p['optional-dependencies']['tensorboard']))" > /tmp/requirements.txt \
 && (pip list --format=freeze | grep -iE '^(torch|torchvision)==' > /tmp/constraints.txt || true) \
 && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt

# 2. The package itself (no dependency resolution: layer 1 has them). Not sweep_bench/: the benchmarks
#    are no part of a worker (`sweep bench` says so in the image), and pyproject installs without them.
#    studies/ installs as package data: the built-in specs (`sweep create lr-freeze` from any folder).
COPY README.md ./
COPY sweep/ sweep/
COPY studies/ studies/
RUN pip install --no-deps . && rm -rf build

# 3. Where workers run: the user's own specs in ./studies (a mount; the built-in ones need none), datasets
#    in ./data, cache/checkpoints/reports in ./storage. The mount points exist, owned by the user, so
#    fresh named volumes inherit that ownership.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin sweep
WORKDIR /work
RUN mkdir -p studies storage/cache storage/artifacts storage/reports data && chown -R sweep:sweep studies storage data
USER sweep
# Pretrained weights are downloaded once into the storage cache (a volume), not into the image.
ENV TORCH_HOME=/work/storage/cache/torch

ENTRYPOINT ["sweep"]
CMD ["--help"]
