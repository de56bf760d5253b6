"""CPU seconds of a process and its descendants, read from Linux's ``/proc``.

The load generator samples a server's CPU around its measured phase (``LoadSpec.server_pid``,
``rnnstream bench --server-pid``) to report the server's CPU time per message.
"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> tuple[float, int]:
    """(CPU seconds, parent pid) of a process."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK"), int(fields[1])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (a server that runs workers)."""
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            seconds, ppid = _stat_fields(int(entry))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        cpu[int(entry)] = seconds
        parents.setdefault(ppid, []).append(int(entry))
    if pid not in cpu:
        raise ProcessLookupError(f"no process {pid}")
    total, todo = 0.0, [pid]
    for _ in range(len(cpu)):  # bounded walk
        if not todo:
            break
        current = todo.pop()
        total += cpu.get(current, 0.0)
        todo.extend(parents.get(current, []))
    return total
