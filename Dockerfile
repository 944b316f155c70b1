# phys-bids container image.
#
#   docker build -t phys-bids .                                   # CPU image (default)
#   docker build -t phys-bids:cuda --build-arg TORCH_VARIANT=cu126 .       # CUDA variant
#   docker run --rm -v /data:/data:ro -v /out:/out phys-bids /data /out participant
#
# Two stages: "build" makes a virtual environment with torch (pinned, CPU wheel by
# default so the image carries no CUDA), phys-bids and its weights, and bakes the
# registration templates; "runtime" copies only that environment onto a fresh base.
# BASE_IMAGE must provide python3 (3.11) with venv; docker/build-local.sh passes a
# base made here with debootstrap when no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# cpu, or a CUDA build such as cu126 (then TORCH_INDEX follows unless given)
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG EXTRAS=""
ARG FETCH_TEMPLATES=1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/phys-bids \
    PATH=/opt/phys-bids/bin:$PATH
# docker/local/ is empty in the repository; build-local.sh may put there wheels (the
# local torch wheel) and ca.crt, the certificate bundle of a TLS-intercepting proxy,
# used by pip in this stage only (it does not reach the runtime image).
COPY docker/local/ /tmp/local/
RUN python3 -m venv /opt/phys-bids \
 && if [ -f /tmp/local/ca.crt ]; then export PIP_CERT=/tmp/local/ca.crt; fi \
 && if [ -n "${TORCH_INDEX}" ]; then export PIP_EXTRA_INDEX_URL="${TORCH_INDEX}"; fi \
 && pip install --find-links /tmp/local torch==${TORCH_VERSION}
COPY pyproject.toml README.md LICENSE /src/
COPY phys_bids /src/phys_bids
RUN if [ -f /tmp/local/ca.crt ]; then export PIP_CERT=/tmp/local/ca.crt; fi \
 && pip install --find-links /tmp/local "/src${EXTRAS:+[$EXTRAS]}" \
 && python -c "import torch, sys; cuda = torch.version.cuda; \
print('torch', torch.__version__, 'cuda', cuda); \
sys.exit(1 if cuda and '${TORCH_VARIANT}' == 'cpu' else 0)" \
 && python -c "from phys_bids.models.registry import available_models, load_model; \
[load_model(m) for m in available_models(kind=None)]" \
 && if [ "${FETCH_TEMPLATES}" = 1 ]; then \
        python -m phys_bids.preproc.templates /opt/templateflow --fetch; \
    else python -m phys_bids.preproc.templates /opt/templateflow; fi \
 && rm -rf /tmp/local /src

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=unknown
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="phys-bids" \
      org.opencontainers.image.description="Physics-aware, acquisition-invariant brain MRI segmentation and quantification (BIDS-App)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/phys-bids/phys-bids" \
      org.opencontainers.image.documentation="https://github.com/phys-bids/phys-bids/blob/main/docs/installation.md"
COPY --from=build /opt/phys-bids /opt/phys-bids
COPY --from=build /opt/templateflow /opt/templateflow
# A non-root user whose home any --user UID can write (caches of matplotlib, deno).
# Threads are not fixed here: phys-bids sizes --nprocs/--omp-nthreads from the CPUs
# the container may use (affinity and the cgroup quota of docker run --cpus).
RUN useradd --create-home --home-dir /home/phys-bids --uid 1000 --shell /usr/sbin/nologin phys-bids \
 && chmod 1777 /home/phys-bids
ENV PATH=/opt/phys-bids/bin:$PATH \
    HOME=/home/phys-bids \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    DENO_DIR=/tmp/deno \
    PYTHONDONTWRITEBYTECODE=1 \
    PHYS_BIDS_WORK_DIR=/tmp/phys-bids-work \
    PHYS_BIDS_CONTAINER=docker \
    PHYS_BIDS_CONTAINER_TAG="phys-bids:${VERSION}"
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["phys-bids"]
CMD ["--help"]
