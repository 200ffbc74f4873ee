# diffusiond image: a build stage with the CUDA toolkit and every -dev package, and a slim
# runtime stage with the shared libraries only. The CUDA toolkit comes from NVIDIA's CUDA image
# (Ubuntu 22.04, whose glibc is older than Debian 12's, so its binaries run here); everything
# else from Debian's packages through the same script a developer machine and CI use.
#
#   docker build -t diffusiond .
#   docker run --gpus all -p 8000:8000 -v /models:/models diffusiond
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu22.04

FROM ${CUDA_IMAGE} AS cuda

FROM debian:bookworm AS build
COPY --from=cuda /usr/local/cuda /usr/local/cuda
ENV PATH=/usr/local/cuda/bin:$PATH
WORKDIR /src
COPY tools/install-deps.sh tools/install-deps.sh
RUN tools/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make clean && make -j"$(nproc)" all

FROM debian:bookworm-slim AS runtime
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libzmq5 libmsgpackc2 libevent-2.1-7 libjpeg62-turbo libpng16-16 libwebp7 libwebpmux3 \
        libavcodec59 libavformat59 libavutil57 libswscale6 libsystemd0 libopenblas0 libinih1 \
        libjansson4 libgomp1 libpcre2-8-0 libutf8proc2 libsodium23 \
        tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/diffusiond --shell /usr/sbin/nologin diffusiond
# The CUDA runtime libraries only (the driver comes from the host through the NVIDIA runtime).
COPY --from=cuda /usr/local/cuda/lib64/libcudart.so* /usr/local/cuda/lib64/
COPY --from=cuda /usr/local/cuda/lib64/libcublas*.so* /usr/local/cuda/lib64/
ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64
COPY --from=build /src/build/diffusiond /src/build/diffusiond-generate /usr/lib/diffusiond/
COPY --from=build /src/build/tests/diffusiond-teststage /usr/lib/diffusiond/tests/diffusiond-teststage
COPY conf/diffusiond.conf /etc/diffusiond/diffusiond.conf
RUN ln -s /usr/lib/diffusiond/diffusiond /usr/bin/diffusiond && \
    ln -s /usr/lib/diffusiond/diffusiond-generate /usr/bin/diffusiond-generate && \
    diffusiond -t -c /etc/diffusiond/diffusiond.conf
USER diffusiond
ENV RUNTIME_DIRECTORY=/tmp/diffusiond
EXPOSE 8000
# tini reaps and forwards SIGTERM so that `docker stop` drains like systemctl stop.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/diffusiond"]
CMD ["-c", "/etc/diffusiond/diffusiond.conf"]
