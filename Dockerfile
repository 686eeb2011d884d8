# samgraph on Ray 2.60: the one image of every pod in configs/kuberay/rayservice.yaml (head, CPU and GPU
# workers), and a single-node server (`docker run --gpus all -p 8000:8000 IMAGE samgraph serve --config
# configs/serve.gpu.yaml`). Build from the repo root: docker build -t samgraph:0.1.0 .  (docs/kubernetes.md)
#
# Base: Ray's own image at the exact Ray version of the cluster (KubeRay needs the same Ray, and Python, on
# every pod). Its GPU variant carries CUDA; the same image serves the CPU pods, so that head and workers run
# identical code. It brings Ray, Python in /home/ray/anaconda3 (on PATH) and the non-root user `ray`
# (uid 1000, gid 100). Pin the digest too (rayproject/ray:2.60.0-py311-gpu@sha256:...) for bit-for-bit builds.
FROM rayproject/ray:2.60.0-py311-gpu

ARG RAY_VERSION=2.60.0
# The SAM 2.1 checkpoint baked into the image: the model_id of configs/serve.gpu.yaml.
ARG SAM2_MODEL=sam2.1_hiera_large

LABEL org.opencontainers.image.title="samgraph" \
      org.opencontainers.image.description="SAM 2 segmentation and few-shot detection served as a Ray Serve deployment graph" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/rayproject/ray:2.60.0-py311-gpu" \
      io.ray.version="${RAY_VERSION}" \
      ai.samgraph.sam2-model="${SAM2_MODEL}"

# The weights live outside $HOME, so that a volume mounted over /home/ray cannot hide them. The runtime
# finds them there (deployments/runtime/weights.py: cache_dir) and downloads nothing.
ENV SAMGRAPH_CACHE_DIR=/opt/samgraph/weights

USER 0:0
RUN mkdir -p /opt/samgraph/weights && chown -R 1000:100 /opt/samgraph
# Numeric, so that Kubernetes can check `runAsNonRoot: true` against it.
USER 1000:100
WORKDIR /opt/samgraph

# .dockerignore lets in only what `pip install .` needs, and the Serve configs.
COPY --chown=1000:100 . .
# As the README installs it, without -e and without the dev extra. Ray is held at the base image's version
# (pyproject allows any >= 2.40). sam2's optional CUDA extension is not built: samgraph does not use it.
RUN SAM2_BUILD_CUDA=0 pip install --no-cache-dir . "ray[serve,data]==${RAY_VERSION}" \
    && rm -rf build samgraph.egg-info

# SAM 2.1 (SHA-256 verified) and open_clip's ViT-B-32 laion2b_s34b_b79k (the Serve configs' args.clip) into
# SAMGRAPH_CACHE_DIR, so that replicas start without network.
RUN samgraph models pull "${SAM2_MODEL}" --clip

EXPOSE 8000 8080
