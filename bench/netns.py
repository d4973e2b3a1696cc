"""Re-run the calling bench script inside a fresh network namespace holding only loopback,
as the peer kit's scripts do, so nothing a tool does can leave the machine."""
import os
import shutil
import sys


def isolate_network(script):
    """Re-execute ``script`` (the caller's ``__file__``) under ``unshare --net``, once."""
    if os.environ.get("PEERS_NETNS") == "1":
        return
    if shutil.which("unshare") is None:
        sys.exit("unshare (util-linux) is required to keep all traffic on loopback")
    os.environ["PEERS_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c",
                          'ip link set lo up 2>/dev/null || true; exec "$@"', "sh",
                          sys.executable, os.path.abspath(script), *sys.argv[1:]])
