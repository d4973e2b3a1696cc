"""A real Docker Engine for the suite: started here when none answers, images built locally.

No image registry is reachable, so test images are made with `docker import` of a root
filesystem: Debian's busybox-static (sh, httpd, sleep, wget, ...) for containers, and a
debootstrapped Debian with systemd for test hosts (see testhost.py).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from typing import Any

DOCKERD_LOG = "/tmp/opsagent-test-dockerd.log"
BUSYBOX_IMAGE = "opsagent-test/busybox:1"
BUSYBOX = "/bin/busybox"


class HarnessError(RuntimeError):
    """A real component the suite needs did not come up (a failed set-up, not a skip)."""


def _client(timeout: int = 10) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


def ensure_docker(wait: float = 60.0) -> Any:
    """A Docker client whose daemon answers, starting dockerd when none does."""
    import docker.errors

    try:
        client = _client()
        client.ping()
        return client
    except docker.errors.DockerException:
        pass
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise HarnessError("no Docker daemon answers and dockerd is not installed "
                           "(scripts/test.sh installs Debian's docker.io as root)")
    if os.geteuid() != 0:
        raise HarnessError("no Docker daemon answers and starting dockerd needs root")
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen([dockerd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    deadline = time.monotonic() + wait
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = _client()
            client.ping()
            return client
        except docker.errors.DockerException as e:
            last = e
            time.sleep(0.3)
    with open(DOCKERD_LOG, errors="replace") as fh:
        tail = fh.read()[-2000:]
    raise HarnessError(f"dockerd did not answer within {wait:.0f}s ({last}); log:\n{tail}")


def busybox_rootfs_tar() -> bytes:
    """A root filesystem holding busybox and its applets, as a tar in memory."""
    if not os.path.exists(BUSYBOX):
        raise HarnessError(f"{BUSYBOX} is missing (install Debian's busybox-static)")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "www", "data", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"
                                          "nobody:x:65534:65534:nobody:/:/bin/false\n"),
                           ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
                           ("www/index.html", "hello from busybox httpd\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_busybox_image(client: Any, tag: str = BUSYBOX_IMAGE) -> str:
    """The busybox test image, imported once per machine."""
    import docker.errors

    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    repo, _, version = tag.partition(":")
    client.api.import_image_from_data(busybox_rootfs_tar(), repository=repo, tag=version,
                                      changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'])
    client.images.get(tag)
    return tag
