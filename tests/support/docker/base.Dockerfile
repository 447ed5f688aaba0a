# The test's base image, on `local/debian:bookworm`: a debootstrap minbase rootfs that already holds Debian's
# python3, python3-venv and redis-server (tests/docker_images.py), `docker import`ed; no registry is needed.
# Here, without apt (no package download inside a container): a venv on PATH (Debian's pip refuses
# system-wide installs), and the machine's CA bundle for pip (ca-certificates.crt is in this build context
# only, never in the shipped Dockerfile), named by PIP_CERT so the project's `pip install .` uses it.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN python3 -m venv /opt/venv
COPY ca-certificates.crt /etc/ssl/certs/build-ca-certificates.crt
ENV PATH=/opt/venv/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/build-ca-certificates.crt
