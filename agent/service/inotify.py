"""inotify(7) through libc: which managed files changed, without polling.

The service watches the *directories* holding managed files (editors and the agent itself
replace files by rename, which a watch on the file would lose) and maps the names it is
told about back to the resources that own them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
DIR_MASK = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
            | IN_DELETE_SELF | IN_MOVE_SELF | IN_MODIFY | IN_ONLYDIR)
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        self._wd_dir: dict[int, str] = {}
        self._dir_wd: dict[str, int] = {}

    def watch_dirs(self, dirs: set[str]) -> None:
        """Watch exactly these directories (missing ones are skipped, retried next time)."""
        for d in list(self._dir_wd):
            if d not in dirs:
                _libc.inotify_rm_watch(self.fd, self._dir_wd.pop(d))
        for d in dirs - set(self._dir_wd):
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(d), DIR_MASK)
            if wd >= 0:
                self._dir_wd[d] = wd
                self._wd_dir[wd] = d

    def read(self) -> list[str]:
        """Paths that changed since the last read (a directory itself when it went away)."""
        out: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, pos)
                name = data[pos + _HEADER.size: pos + _HEADER.size + length].rstrip(b"\0")
                pos += _HEADER.size + length
                d = self._wd_dir.get(wd)
                if d is None:
                    continue
                if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    self._wd_dir.pop(wd, None)
                    if self._dir_wd.get(d) == wd:
                        del self._dir_wd[d]
                    out.append(d)
                elif name:
                    out.append(os.path.join(d, os.fsdecode(name)))

    def close(self) -> None:
        os.close(self.fd)
